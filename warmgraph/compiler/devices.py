"""Device graph APIs: CUDA graphs, Ascend ACL graphs (torch_npu) and Gaudi HPU graphs behind one interface.

One role: adapt a vendor's graph API to ``DeviceGraphAPI`` so that ``capture.py`` can run a
single capture recipe on every device. Each adapter takes the vendor module as an argument
(tests pass the CPU fakes from ``tests/fake_devices.py``, with ``device_type=fake.device_type``
because the fakes' memory is CPU memory); ``from_installed()`` imports the real one. torch_npu
and habana_frameworks are imported only there, so importing this module never needs them.

Contract of ``DeviceGraphAPI``:
  - ``new_graph()`` returns an empty graph object; ``capture(graph, pool, stream)`` is a
    context manager that begins capture on ``stream`` on entry and ends it on exit, also
    when the body raises (the capture is closed, then the error propagates).
  - ``graph_pool_handle()`` returns a memory-pool token that several captures may share, or
    None where the device has no pools (``supports_pool`` is False); ``capture`` then
    ignores ``pool``.
  - ``replay(graph)`` re-launches the captured work on the same memory; it reads whatever
    the static input buffers hold at that moment.
  - ``warmup_stream(stream)`` runs its body on ``stream`` after all earlier device work has
    finished, so warm-up iterations see the inputs the default stream wrote.
  - ``device_type`` is the torch device type of the memory the graph reads (``tensor.device.type``).
  - ``memory_allocated()`` is the vendor's count of bytes held by tensors, or None where the
    module has none.

What capture does differs: CUDA and ACL stream capture records work without running it, so
inputs and state are untouched and outputs hold garbage until the first replay; an HPU capture
(lazy mode) also runs the work once, unless ``HpuGraphAPI(dry_run=True)``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch

from warmgraph.errors import ConfigError, WarmgraphError


@runtime_checkable
class DeviceGraphAPI(Protocol):
    """What the capture backend needs from a device's graph API."""

    name: str  # "cuda" | "npu" | "hpu"
    device_type: str  # torch device type of the memory a graph reads ("cuda", "npu", "hpu"; "cpu" for fakes)
    supports_pool: bool  # False for HPU graphs: they take no memory pool

    def new_graph(self) -> Any: ...

    def graph_pool_handle(self) -> Any | None: ...

    def new_stream(self) -> Any: ...

    def capture(self, graph: Any, pool: Any | None, stream: Any) -> AbstractContextManager[None]: ...

    def replay(self, graph: Any) -> None: ...

    def synchronize(self) -> None: ...

    def warmup_stream(self, stream: Any) -> AbstractContextManager[None]: ...

    def memory_allocated(self) -> int | None: ...


class _VendorGraphAPI:
    """The verbs every vendor module spells the same way: streams, replay, synchronize, memory."""

    _mod: Any
    device_type: str

    def new_stream(self) -> Any:
        return self._mod.Stream()

    def replay(self, graph: Any) -> None:
        graph.replay()

    def synchronize(self) -> None:
        self._mod.synchronize()

    @contextlib.contextmanager
    def warmup_stream(self, stream: Any) -> Iterator[None]:
        # A full synchronize rather than stream.wait_stream(current_stream()): warm-up runs
        # once per bucket, and this works the same on every device.
        self._mod.synchronize()
        with self._mod.stream(stream):
            yield

    def memory_allocated(self) -> int | None:
        # torch.cuda, torch.npu and habana_frameworks.torch.hpu all have memory_allocated(device=None).
        counter = getattr(self._mod, "memory_allocated", None)
        return int(counter()) if counter is not None else None


class _PooledGraphAPI(_VendorGraphAPI):
    """Shared adapter for the torch.cuda-shaped APIs (CUDA, and torch_npu's copy of it).

    Subclasses set ``name`` and ``_graph_class`` (the attribute of the vendor module that
    constructs a graph).
    """

    name: str
    supports_pool = True
    _graph_class: str

    def __init__(self, module: Any, capture_error_mode: str | None, device_type: str) -> None:
        self._mod = module
        # None leaves the vendor default ("global"); passed only when set, because older
        # torch_npu releases do not accept every keyword the newest one does.
        self.capture_error_mode = capture_error_mode
        self.device_type = device_type
        self._extra: dict[str, Any] = {}  # vendor keywords a subclass passes to graph(...)

    def new_graph(self) -> Any:
        return getattr(self._mod, self._graph_class)()

    def graph_pool_handle(self) -> Any:
        return self._mod.graph_pool_handle()

    def capture(self, graph: Any, pool: Any | None, stream: Any) -> AbstractContextManager[None]:
        kwargs: dict[str, Any] = {"pool": pool, "stream": stream}
        if self.capture_error_mode is not None:
            kwargs["capture_error_mode"] = self.capture_error_mode
        # The vendor context manager synchronizes, enters the stream, calls capture_begin
        # with the pool, and calls capture_end on exit even when the body raised.
        return self._mod.graph(graph, **kwargs, **self._extra)


class CudaGraphAPI(_PooledGraphAPI):
    """CUDA graphs through ``torch.cuda`` (``CUDAGraph``, ``graph``, ``graph_pool_handle``).

    ``check_input_liveness=True`` asks torch (2.13 and later) to raise at replay when a tensor
    the graph reads was freed since capture, instead of silently reading freed memory; it is
    passed only when set, since older torch lacks the keyword.
    """

    name = "cuda"
    _graph_class = "CUDAGraph"

    def __init__(
        self,
        cuda: Any = torch.cuda,
        capture_error_mode: str | None = None,
        *,
        device_type: str = "cuda",
        check_input_liveness: bool = False,
    ) -> None:
        super().__init__(cuda, capture_error_mode, device_type)
        if check_input_liveness:
            self._extra["check_input_liveness"] = True

    @classmethod
    def from_installed(cls) -> CudaGraphAPI:
        """The real ``torch.cuda``; WarmgraphError when torch sees no CUDA device."""
        if not torch.cuda.is_available():
            built = torch.version.cuda or "none (a CPU-only build)"
            raise WarmgraphError(
                f"CUDA graphs need a CUDA device, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA version {built}); install a CUDA build of torch "
                f"on a machine with an NVIDIA GPU, or choose a non-capture backend such as inductor"
            )
        return cls(torch.cuda)


class NpuGraphAPI(_PooledGraphAPI):
    """Ascend ACL graphs through ``torch.npu`` (registered by torch_npu): ``NPUGraph``, ``graph``.

    ``torch.npu.graph(npu_graph, pool=None, stream=None, auto_dispatch_capture=False,
    capture_error_mode="global")`` is called with ``pool`` and ``stream`` only: the
    defaults of the rest are what vllm-ascend uses, and older torch_npu lacks
    ``auto_dispatch_capture``.
    """

    name = "npu"
    _graph_class = "NPUGraph"

    def __init__(self, npu: Any, capture_error_mode: str | None = None, *, device_type: str = "npu") -> None:
        super().__init__(npu, capture_error_mode, device_type)

    @classmethod
    def from_installed(cls) -> NpuGraphAPI:
        """``torch.npu`` after ``import torch_npu``; WarmgraphError when it is missing or sees no NPU."""
        try:
            importlib.import_module("torch_npu")
        except ImportError as exc:
            raise WarmgraphError(
                f"ACL graphs need the Ascend PyTorch adapter 'torch_npu', which could not be imported "
                f"({exc}); install the torch_npu wheel matching torch {torch.__version__} and your CANN "
                f"toolkit (pip install torch-npu), or choose another backend"
            ) from exc
        npu = getattr(torch, "npu", None)
        if npu is None or not npu.is_available():
            raise WarmgraphError(
                "torch_npu is installed but torch.npu.is_available() is False; check the Ascend driver "
                "and that CANN's set_env.sh was sourced, or choose another backend"
            )
        return cls(npu)


class HpuGraphAPI(_VendorGraphAPI):
    """Gaudi HPU graphs through ``habana_frameworks.torch.hpu`` (``HPUGraph``, ``graph``; no memory pools).

    ``capture`` is the bridge's ``hpu.graph(graph, stream=stream)`` context manager, because it
    alone sets the ``is_capture`` flag of the capture stream that ``hpu.is_current_stream_capturing()``
    reads; ``HPUGraph.capture_begin`` does not (gaudi-pytorch-bridge 1.19.0,
    ``python_packages/habana_frameworks/torch/hpu/graphs.py``). ``graph(hpu_graph, stream=None)`` has
    kept that signature since the first bridge that had it; later ones added ``dry_run``.

    In lazy mode an HPU capture also runs the captured work once (the bridge launches the recipe
    unless ``dry_run``), so in-place state changes at capture and outputs are valid at once.
    ``dry_run=True`` captures without launching, as CUDA does; it is passed only when set.
    """

    name = "hpu"
    supports_pool = False

    def __init__(self, hpu: Any, *, device_type: str = "hpu", dry_run: bool = False) -> None:
        self._mod = hpu
        self.device_type = device_type
        self.dry_run = dry_run

    @classmethod
    def from_installed(cls) -> HpuGraphAPI:
        """``habana_frameworks.torch.hpu``; WarmgraphError when the Gaudi bridge is missing or sees no HPU."""
        try:
            hpu = importlib.import_module("habana_frameworks.torch.hpu")
        except ImportError as exc:
            raise WarmgraphError(
                f"HPU graphs need the Intel Gaudi PyTorch bridge 'habana_frameworks', which could not be "
                f"imported ({exc}); install the Intel Gaudi software stack (habana-torch-plugin) or use "
                f"a Gaudi container, or choose another backend"
            ) from exc
        if hasattr(hpu, "is_available") and not hpu.is_available():
            raise WarmgraphError(
                "habana_frameworks is installed but habana_frameworks.torch.hpu.is_available() is False; "
                "check the Gaudi driver (hl-smi), or choose another backend"
            )
        if not hasattr(hpu, "HPUGraph") or not hasattr(hpu, "graph"):
            # The bridge exports its graph API only in lazy mode (hpu/__init__.py: "if is_lazy():
            # from .graphs import *").
            raise WarmgraphError(
                "habana_frameworks.torch.hpu has no HPUGraph/graph: the Gaudi bridge offers HPU graphs only in "
                "lazy mode; set PT_HPU_LAZY_MODE=1, or in torch.compile mode choose a compile backend instead"
            )
        return cls(hpu)

    def new_graph(self) -> Any:
        return self._mod.HPUGraph()

    def graph_pool_handle(self) -> None:
        return None

    def capture(self, graph: Any, pool: Any | None, stream: Any) -> AbstractContextManager[None]:
        # ``pool`` is accepted for the common interface and ignored: HPUGraph has no pools.
        # hpu.graph synchronizes, enters the stream, sets its is_capture flag and calls
        # capture_begin; on exit, also after an error, capture_end, clears the flag, leaves.
        if self.dry_run:
            return self._mod.graph(graph, stream=stream, dry_run=True)
        return self._mod.graph(graph, stream=stream)

    def wrap_module(
        self,
        module: torch.nn.Module,
        *,
        asynchronous: bool = False,
        disable_tensor_cache: bool = True,
        dry_run: bool = False,
        max_graphs: int | None = None,
    ) -> torch.nn.Module:
        """Let the bridge graph a whole module: ``hpu.wrap_in_hpu_graph`` (captures per input shape itself).

        The alternative to ``CaptureBackend`` when the bridge should own capture and replay.
        ``disable_tensor_cache`` defaults to True, as vllm-gaudi passes it: the bridge then
        frees the graph's cached intermediates after each replay instead of holding them.
        ``dry_run`` and ``max_graphs`` are passed only when set, since older bridges lack them.
        """
        kwargs: dict[str, Any] = {"asynchronous": asynchronous, "disable_tensor_cache": disable_tensor_cache}
        if dry_run:
            kwargs["dry_run"] = True
        if max_graphs is not None:
            kwargs["max_graphs"] = max_graphs
        return self._mod.wrap_in_hpu_graph(module, **kwargs)


_FACTORIES = {
    "cuda": CudaGraphAPI.from_installed,
    "npu": NpuGraphAPI.from_installed,
    "hpu": HpuGraphAPI.from_installed,
}


def get_device_api(name: str) -> DeviceGraphAPI:
    """The real graph API of device ``name`` ("cuda" | "npu" | "hpu"), its vendor package imported now."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"device graph API {name!r} is unknown; use one of: {', '.join(_FACTORIES)}")
    return factory()
