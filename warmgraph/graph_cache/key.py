"""The cache key: every factor that makes a compiled graph valid, hashed into one name.

Factors: the cache format version, warmgraph and torch versions, the backend and its
options, the device (type, name, CPU instruction set), the graph fingerprint, the bucket,
and the environment variables that change generated code. All of them are written to the
entry's manifest, so ``warmgraph cache show`` can say why two entries differ.

The graph fingerprint covers what the graph computes, not the numbers it computes with:
the source of every module class in the tree (or the function's code), each module's
plain attributes (eps, head counts, the training flag), parameter and buffer names,
shapes and dtypes, and the input specs at this bucket. Weight values are left out, so a
fine-tune of the same architecture hits the same entries (the aot backend binds the live
weights at load).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
# Inductor and Dynamo settings that change generated code; cache locations do not.
_ENV_PREFIXES = ("TORCHINDUCTOR_", "TORCH_COMPILE_", "TORCHDYNAMO_")
_ENV_IGNORED = {"TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE", "TORCH_COMPILE_CACHE_KEY_TAG"}


@dataclass(frozen=True)
class CacheKey:
    """A key: its factors (JSON-able) and their hash, plus the fields ``cache ls`` shows."""

    factors: dict[str, Any]
    hash: str
    graph_name: str
    backend: str
    bucket: tuple[int, ...]
    device: str


def canonical_hash(obj: Any) -> str:
    """sha256 of a canonical JSON encoding: the same factors always give the same name."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _code_digest(code: types.CodeType) -> str:
    """The bytecode and constants of a function, nested functions included."""
    h = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        h.update(_code_digest(const).encode() if isinstance(const, types.CodeType) else repr(const).encode())
    h.update(repr(code.co_names).encode())
    return h.hexdigest()


def _source_digest(obj: Any) -> str:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        # No source on disk (a REPL or generated class): fall back to the bytecode.
        codes = [m.__code__ for m in vars(obj).values() if isinstance(m, types.FunctionType)]
        return hashlib.sha256("".join(_code_digest(c) for c in codes).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return None


def _attrs(module: Any) -> dict[str, Any]:
    """A module's plain public attributes (eps, sizes, the training flag): they shape the code."""
    return {k: p for k, v in sorted(vars(module).items()) if not k.startswith("_") and (p := _plain(v)) is not None}


def _tensor_spec(t: Any) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype), "device": t.device.type}


def fingerprint_graph(fn: Callable[..., Any], example_inputs: Sequence[Any]) -> dict[str, Any]:
    """What the graph computes at these input specs; never weight values."""
    import torch

    inputs = [_tensor_spec(a) if isinstance(a, torch.Tensor) else {"value": repr(a)} for a in example_inputs]
    if isinstance(fn, torch.nn.Module):
        classes = {type(m) for m in fn.modules()}
        modules = {
            name or "<root>": {"class": f"{type(m).__module__}.{type(m).__qualname__}", "attrs": _attrs(m)}
            for name, m in fn.named_modules()
        }
        tensors = {n: _tensor_spec(t) for n, t in [*fn.named_parameters(), *fn.named_buffers()]}
        code = {f"{c.__module__}.{c.__qualname__}": _source_digest(c) for c in sorted(classes, key=str)}
        name = type(fn).__qualname__
        return {"name": name, "code": code, "modules": modules, "tensors": tensors, "inputs": inputs}
    target = getattr(fn, "__wrapped__", fn)
    code_obj = getattr(target, "__code__", None)
    closure = {}
    for var, cell in zip(getattr(code_obj, "co_freevars", ()), getattr(target, "__closure__", None) or ()):
        value = cell.cell_contents
        closure[var] = _tensor_spec(value) if isinstance(value, torch.Tensor) else _plain(value)
    # Python scalars a function reads from its module are compiled in as constants.
    module_globals = getattr(target, "__globals__", {})
    globals_used = {
        n: p for n in getattr(code_obj, "co_names", ()) if (p := _plain(module_globals.get(n))) is not None
    }
    return {
        "name": getattr(target, "__qualname__", type(target).__name__),
        "code": _code_digest(code_obj) if code_obj is not None else repr(target),
        "closure": closure,
        "globals": globals_used,
        "inputs": inputs,
    }


def device_info(device_type: str) -> dict[str, Any]:
    """The device a graph was built for: generated code is specific to it."""
    import torch

    info: dict[str, Any] = {"type": device_type}
    if device_type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
    else:
        info["name"] = platform.machine()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def codegen_env(env: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if env is None else env
    return {k: v for k, v in sorted(source.items()) if k.startswith(_ENV_PREFIXES) and k not in _ENV_IGNORED}


def make_key(
    *,
    graph: dict[str, Any],
    bucket: Sequence[int],
    backend: dict[str, Any],
    device: dict[str, Any],
    env: dict[str, str] | None = None,
) -> CacheKey:
    """The key of one graph (one bucket of one function on one backend and device)."""
    import torch

    from warmgraph import __version__

    factors = {
        "format": FORMAT_VERSION,
        "warmgraph": __version__,
        "torch": torch.__version__,
        "backend": backend,
        "device": device,
        "graph": graph,
        "bucket": list(bucket),
        "env": codegen_env(env),
    }
    return CacheKey(factors, canonical_hash(factors), graph.get("name", "?"), str(backend.get("backend", "?")),
                    tuple(int(b) for b in bucket), str(device.get("type", "?")))
