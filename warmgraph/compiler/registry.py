"""Backends by name, imported only when chosen, and the device autodetection behind ``auto``.

``auto`` picks the best backend for the device: cuda -> ``cuda_graph`` over Inductor
(compile, then capture, as vLLM does), npu -> ``acl_graph``, hpu -> ``hpu_graph``,
cpu -> ``aot`` (AOTInductor, the backend that persists completely). A capture backend can
name its compiler after a colon: ``cuda_graph:aot`` captures AOTInductor graphs.

``require_device`` checks that a device asked for by name is really there, so that asking
for ``cuda`` on a machine without one is a one-line error, never CPU work in disguise.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from warmgraph.compiler.base import Backend
from warmgraph.errors import ConfigError

BACKENDS: dict[str, str] = {
    "eager": "the function as it is (the reference)",
    "inductor": "torch.compile per bucket, static shapes, fullgraph",
    "aot": "torch.export + AOTInductor package per bucket, weights bound at load",
    "cuda_graph": "CUDA graph capture (torch.cuda.CUDAGraph)",
    "acl_graph": "Ascend ACL graph capture (torch_npu NPUGraph)",
    "hpu_graph": "Gaudi HPU graph capture (habana_frameworks HPUGraph)",
}
DEVICES = ("cuda", "npu", "hpu", "cpu")
_AUTO = {"cuda": "cuda_graph", "npu": "acl_graph", "hpu": "hpu_graph", "cpu": "aot"}
_CAPTURE_DEVICE = {"cuda_graph": "cuda", "acl_graph": "npu", "hpu_graph": "hpu"}


def _npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch

    importlib.import_module("torch_npu")
    return bool(torch.npu.is_available())  # type: ignore[attr-defined]


def _hpu_available() -> bool:
    if importlib.util.find_spec("habana_frameworks") is None:
        return False
    hpu = importlib.import_module("habana_frameworks.torch.hpu")
    return bool(hpu.is_available())


def detect_device(device: str | None = None) -> str:
    """``device`` if given (not ``auto``), else ``$WARMGRAPH_DEVICE`` (unless ``auto``), else the first of
    cuda, npu, hpu found, else cpu."""
    from_env = device in (None, "auto")
    chosen = os.environ.get("WARMGRAPH_DEVICE") if from_env else device
    if chosen and chosen != "auto":
        if chosen not in DEVICES:
            where = f"WARMGRAPH_DEVICE={chosen}: device" if from_env else "device"
            raise ConfigError(f"{where} {chosen!r} is unknown; use auto or one of: {', '.join(DEVICES)}")
        return chosen
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if _npu_available():
        return "npu"
    if _hpu_available():
        return "hpu"
    return "cpu"


def require_device(name: str | None = None) -> str:
    """The device to run on: ``name`` (or ``auto``: ``$WARMGRAPH_DEVICE``, else detection), after
    checking it is available here; ConfigError naming the fix otherwise."""
    device = detect_device(None if name in (None, "auto") else name)
    if device == "cpu":
        return device
    import torch

    available = {"cuda": torch.cuda.is_available, "npu": _npu_available, "hpu": _hpu_available}[device]
    try:
        ok = bool(available())
    except Exception:  # a vendor package that is installed but broken: not usable either
        ok = False
    if not ok:
        where = "WARMGRAPH_DEVICE=" if name in (None, "auto") else "--device "
        detail = f"torch {torch.__version__}" + (", a CPU-only build" if device == "cuda" and not torch.version.cuda
                                                 else "")
        raise ConfigError(f"{where}{device}: no {device} device is available here ({detail}); use --device cpu, "
                          "or run on a machine with one")
    return device


def resolve_auto(device: str | None = None) -> str:
    """The backend name ``auto`` stands for on ``device`` (detected when None)."""
    return _AUTO[detect_device(device)]


def get_backend(name: str | Backend = "auto", device: str | None = None, **options: Any) -> Backend:
    """A backend instance by name; ``options`` go to its constructor.

    Capture backends take ``inner=`` (a backend name or instance to compile with before
    capturing), ``num_warmups=`` and ``debug=``.
    """
    if not isinstance(name, str):
        return name
    if ":" in name:  # "cuda_graph:aot": a capture backend and the compiler it captures
        name, inner = name.split(":", 1)
        if name not in _CAPTURE_DEVICE:
            raise ConfigError(f"backend {name}:{inner}: only capture backends ({', '.join(_CAPTURE_DEVICE)}) take a "
                              "compiler after a colon")
        options["inner"] = inner
    if name == "auto":
        dev = detect_device(device)
        name = _AUTO[dev]
        if name == "cuda_graph":
            options.setdefault("inner", "inductor")
    if name not in BACKENDS:
        raise ConfigError(f"backend {name!r} is unknown; use auto or one of: {', '.join(BACKENDS)}")
    if name == "eager":
        from warmgraph.compiler.eager import EagerBackend

        return EagerBackend(**options)
    if name == "inductor":
        from warmgraph.compiler.inductor import InductorBackend

        return InductorBackend(**options)
    if name == "aot":
        from warmgraph.compiler.aot import AOTBackend

        return AOTBackend(**options)
    from warmgraph.compiler.capture import CaptureBackend
    from warmgraph.compiler.devices import get_device_api

    inner = options.pop("inner", None)
    if isinstance(inner, str):
        if inner not in ("eager", "inductor", "aot"):
            raise ConfigError(f"{name} captures a compiler's graphs: use {name}:aot, {name}:inductor or "
                              f"{name}:eager, not {name}:{inner}")
        inner = get_backend(inner, device)
    api = options.pop("api", None) or get_device_api(_CAPTURE_DEVICE[name])
    return CaptureBackend(api, name, inner=inner, **options)
