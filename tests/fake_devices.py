"""CPU fakes of torch.cuda, torch.npu (torch_npu) and habana_frameworks.torch.hpu graph APIs.

What makes them faithful: a fake graph records every aten op run during capture (with a
``TorchDispatchMode``) and ``replay()`` re-runs those ops, in order, over the same tensor
objects, writing each result back into the tensor the op produced at capture. Like a real
device graph, replay therefore

  - reads whatever the captured input tensors hold now: a new tensor passed instead of
    copying into the static buffer is ignored, and the result is stale;
  - writes into the same output tensors every time, and never calls the Python function;
  - keeps capture-time intermediates alive (the recording holds them, as a private pool would).

Each fake also keeps an ordered ``calls`` list (``("synchronize",)``, ``("stream_enter", s)``,
``("graph_pool_handle", token)``, ``("capture_begin", pool, stream)``, ``("capture_end",)``,
``("replay", graph_id)``...) so tests can check warm-ups, pools and order. Signatures mirror
the vendor ones exactly and take no ``**kwargs``, so a wrong keyword in an adapter fails.

Known differences from real devices: capture here also runs the ops (a real capture only
records them, so static outputs are garbage until the first replay); only ops that pass
through the Python dispatcher are recorded, so code that runs its own kernels (Inductor's
CPU C++ kernels) is not re-executed on replay; and pools and streams are tokens only.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")
# Ops that make the host wait for the device: a real capture fails on them.
_HOST_SYNC_OPS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)
_ids = itertools.count(1)


class FakeStream:
    """A stream token; ``is_default`` marks the stream work runs on outside any ``stream(...)``."""

    def __init__(self, is_default: bool = False) -> None:
        self.id = next(_ids)
        self.is_default = is_default

    def synchronize(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FakeStream({self.id}{', default' if self.is_default else ''})"


class FakePoolHandle:
    """An opaque memory-pool token, unique per ``graph_pool_handle()`` call (or per private pool)."""

    def __init__(self) -> None:
        self.id = next(_ids)

    def __repr__(self) -> str:
        return f"FakePoolHandle({self.id})"


class _Recorder(TorchDispatchMode):
    """Runs every aten op normally and records (func, args, kwargs, out) for replay."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _HOST_SYNC_OPS:
            raise RuntimeError(
                f"fake device: operation not permitted when stream is capturing ({func} waits for the device)"
            )
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _write_back(recorded: Any, new: Any) -> None:
    """Copy a re-run op's result into the tensor(s) the op produced at capture."""
    if isinstance(recorded, torch.Tensor):
        if new is recorded:
            return  # in-place op: already written
        same_view = (
            new.data_ptr() == recorded.data_ptr() and new.shape == recorded.shape and new.stride() == recorded.stride()
        )
        if not same_view:  # a fresh view of the same memory needs no copy
            recorded.copy_(new)
    elif isinstance(recorded, (tuple, list)):
        for r, n in zip(recorded, new):
            _write_back(r, n)
    # None, numbers, sizes: nothing lives in device memory


class FakeGraph:
    """The graph object behind ``CUDAGraph``, ``NPUGraph`` and ``HPUGraph``."""

    def __init__(self, runtime: _FakeRuntime) -> None:
        self._rt = runtime
        self.id = next(_ids)
        self.ops: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]] | None = None
        self._pool: FakePoolHandle | None = None
        self._recorder: _Recorder | None = None
        self.capture_error_mode: str | None = None

    def _begin(self, pool: FakePoolHandle | None) -> None:
        rt = self._rt
        if rt.capturing is not None:
            raise RuntimeError("fake device: another graph capture is already underway")
        if self.ops is not None:
            raise RuntimeError("fake device: this graph was already captured; reset() it first")
        if rt.needs_side_stream and rt.current.is_default:
            raise RuntimeError("fake device: graphs cannot be captured on the default stream")
        rt.calls.append(("capture_begin", pool, rt.current))
        self._pool = pool if pool is not None else (FakePoolHandle() if rt.has_pools else None)
        rt.capturing = self
        self._recorder = _Recorder()
        self._recorder.__enter__()

    def capture_end(self) -> None:
        rt = self._rt
        if rt.capturing is not self or self._recorder is None:
            raise RuntimeError("fake device: capture_end without capture_begin")
        self._recorder.__exit__(None, None, None)
        self.ops, self._recorder, rt.capturing = self._recorder.ops, None, None
        rt.calls.append(("capture_end",))

    def _replay(self) -> None:
        if self.ops is None:
            raise RuntimeError("fake device: replay without a preceding successful capture")
        self._rt.calls.append(("replay", self.id))
        # Inference mode: the recorded outputs may be inference tensors, and replay records no autograd.
        with torch.inference_mode():
            for func, args, kwargs, out in self.ops:
                _write_back(out, func(*args, **kwargs))

    def reset(self) -> None:
        self.ops = None


class FakeCUDAGraph(FakeGraph):
    """``torch.cuda.CUDAGraph`` / ``torch.npu.NPUGraph``: pools and error modes."""

    def capture_begin(self, pool: FakePoolHandle | None = None, capture_error_mode: str = "global") -> None:
        if capture_error_mode not in _CAPTURE_ERROR_MODES:
            raise RuntimeError(f"fake device: unknown capture_error_mode {capture_error_mode!r}")
        self.capture_error_mode = capture_error_mode
        self._begin(pool)

    def replay(self) -> None:
        self._replay()

    def pool(self) -> FakePoolHandle | None:
        return self._pool


class FakeNPUGraph(FakeCUDAGraph):
    auto_dispatch_capture = False


class FakeHPUGraph(FakeGraph):
    """``habana_frameworks.torch.hpu.HPUGraph``: no pool; captures on the current stream."""

    def capture_begin(self, dry_run: bool = False) -> None:
        self.dry_run = dry_run
        self._begin(None)

    def replay(self, asynchronous: bool = False) -> None:
        self._replay()


class _FakeRuntime:
    """State shared by a fake module's graphs: the call log, current stream, capture in progress."""

    has_pools = True
    needs_side_stream = True  # CUDA and ACL graphs refuse capture on the default stream

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.default = FakeStream(is_default=True)
        self.current = self.default
        self.capturing: FakeGraph | None = None
        self._default_capture_stream: FakeStream | None = None

    def count(self, name: str) -> int:
        """How many calls named ``name`` were logged."""
        return sum(1 for c in self.calls if c[0] == name)

    def Stream(self) -> FakeStream:
        return FakeStream()

    def current_stream(self) -> FakeStream:
        return self.current

    def default_stream(self) -> FakeStream:
        return self.default

    @contextlib.contextmanager
    def stream(self, stream: FakeStream | None) -> Iterator[None]:
        if stream is None:  # torch.cuda.stream(None) is a no-op
            yield
            return
        previous, self.current = self.current, stream
        self.calls.append(("stream_enter", stream))
        try:
            yield
        finally:
            self.current = previous
            self.calls.append(("stream_exit", stream))

    def synchronize(self) -> None:
        if self.capturing is not None:
            raise RuntimeError("fake device: synchronize is not permitted while a stream is capturing")
        self.calls.append(("synchronize",))

    def is_available(self) -> bool:
        return True


class _FakePooledRuntime(_FakeRuntime):
    """torch.cuda and torch.npu: memory pools and a ``graph(...)`` context manager."""

    def graph_pool_handle(self) -> FakePoolHandle:
        token = FakePoolHandle()
        self.calls.append(("graph_pool_handle", token))
        return token

    @contextlib.contextmanager
    def _graph_context(self, graph: FakeCUDAGraph, pool: Any, stream: Any, capture_error_mode: str) -> Iterator[None]:
        # What torch.cuda.graph / torch.npu.graph do: synchronize, enter the capture stream
        # (a shared side stream when none is given), capture_begin(*pool), capture_end on exit.
        self.synchronize()
        if stream is None:
            if self._default_capture_stream is None:
                self._default_capture_stream = FakeStream()
            stream = self._default_capture_stream
        with self.stream(stream):
            graph.capture_begin(*(() if pool is None else (pool,)), capture_error_mode=capture_error_mode)
            try:
                yield
            finally:
                graph.capture_end()


class FakeCudaModule(_FakePooledRuntime):
    """Stands in for ``torch.cuda``."""

    def CUDAGraph(self) -> FakeCUDAGraph:
        return FakeCUDAGraph(self)

    def graph(
        self,
        cuda_graph: FakeCUDAGraph,
        pool: FakePoolHandle | None = None,
        stream: FakeStream | None = None,
        capture_error_mode: str = "global",
    ) -> contextlib.AbstractContextManager[None]:
        return self._graph_context(cuda_graph, pool, stream, capture_error_mode)


class FakeNpuModule(_FakePooledRuntime):
    """Stands in for ``torch.npu`` as torch_npu registers it (``torch_npu/npu/graphs.py``)."""

    def NPUGraph(self) -> FakeNPUGraph:
        return FakeNPUGraph(self)

    def graph(
        self,
        npu_graph: FakeNPUGraph,
        pool: FakePoolHandle | None = None,
        stream: FakeStream | None = None,
        auto_dispatch_capture: bool = False,
        capture_error_mode: str = "global",
    ) -> contextlib.AbstractContextManager[None]:
        npu_graph.auto_dispatch_capture = auto_dispatch_capture
        return self._graph_context(npu_graph, pool, stream, capture_error_mode)


class FakeHpuModule(_FakeRuntime):
    """Stands in for ``habana_frameworks.torch.hpu``: HPUGraph, streams, wrap_in_hpu_graph.

    No ``graph_pool_handle`` and no pool arguments anywhere, as on the real module.
    """

    has_pools = False
    needs_side_stream = False  # the bridge's own wrap_in_hpu_graph captures on the default stream

    def HPUGraph(self) -> FakeHPUGraph:
        return FakeHPUGraph(self)

    def wrap_in_hpu_graph(
        self,
        module: torch.nn.Module,
        asynchronous: bool = False,
        disable_tensor_cache: bool = False,
        dry_run: bool = False,
        max_graphs: int | None = None,
    ) -> torch.nn.Module:
        options = {
            "asynchronous": asynchronous,
            "disable_tensor_cache": disable_tensor_cache,
            "dry_run": dry_run,
            "max_graphs": max_graphs,
        }
        self.calls.append(("wrap_in_hpu_graph", module, options))
        return module
