"""The fake graph objects: ``CUDAGraph``, ``NPUGraph`` and ``HPUGraph`` over a shared ``FakeGraph``.

``FakeGraph`` captures by recording (``fake_capture._Recorder``) and replays by re-running the
recorded ops; ``_PooledGraph`` adds the pools and error modes of CUDA and NPU; the vendor
classes add their own ``capture_begin`` signatures and replay rules. The fake modules of
``fake_devices`` create them.
"""

from __future__ import annotations

from typing import Any

import torch
from fake_capture import _External, _Recorder, _write_back
from fake_runtime import _GARBAGE, FakePoolHandle, FakeStream, _FakeRuntime, _ids
from torch.utils import _pytree as pytree

_CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")


class FakeGraph:
    """What ``CUDAGraph``, ``NPUGraph`` and ``HPUGraph`` share: capture by recording, replay by re-running."""

    check_input_liveness = False

    def __init__(self, runtime: _FakeRuntime) -> None:
        self._rt = runtime
        self.id = next(_ids)
        self.ops: list[tuple[Any, Any, Any, Any]] | None = None
        self.capture_stream: FakeStream | None = None
        self._pool: FakePoolHandle | None = None
        self._recorder: _Recorder | None = None
        self._allocated: list[torch.UntypedStorage] = []
        self._externals: list[_External] = []

    def _begin(self, pool: FakePoolHandle | None, executes: bool, holds_inputs: bool) -> None:
        rt = self._rt
        if rt.capturing is not None:
            raise RuntimeError(f"fake {rt.name}: another graph capture is already underway")
        if self.ops is not None:
            raise RuntimeError(f"fake {rt.name}: this graph instance already owns a captured graph; reset() it first")
        if rt.needs_side_stream and rt.current.is_default:
            raise RuntimeError(f"fake {rt.name}: graphs must be captured on a non-default stream")
        rt.calls.append(("capture_begin", pool, rt.current))
        self._pool = pool if pool is not None else (FakePoolHandle() if rt.has_pools else None)
        self.capture_stream, rt.capturing = rt.current, self
        self._recorder = _Recorder(rt, executes, holds_inputs)
        self._recorder.start()

    def capture_end(self) -> None:
        rt, rec = self._rt, self._recorder
        if rt.capturing is not self or rec is None:
            raise RuntimeError(
                f"fake {rt.name}: capture_end without capture_begin (the HPU bridge ignores this; the fake refuses)"
            )
        if rt.current is not self.capture_stream:
            raise RuntimeError(f"fake {rt.name}: capture must end on the same stream it began on")
        rec.stop()
        self._recorder, rt.capturing = None, None
        if not rec.executes:  # nothing ran on the device: undo the shape-finding run
            for storage, saved in rec.snapshots.values():
                storage.copy_(saved)
            for storage in rec.allocated.values():
                storage.fill_(_GARBAGE)
        self.ops, self._allocated, self._externals = rec.ops, list(rec.allocated.values()), rec.externals
        rt.calls.append(("capture_end",))
        rt._captured(self)

    def _replay(self) -> None:
        rt = self._rt
        if self.ops is None:
            raise RuntimeError(f"fake {rt.name}: replay without a preceding successful capture")
        dead = [e.text for e in self._externals if not e.alive()]
        if dead:
            raise RuntimeError(rt._dead_inputs(dead, self.check_input_liveness))
        rt.calls.append(("replay", self.id))

        def resolve(x: Any) -> Any:
            return x.tensor() if isinstance(x, _External) else x

        # Inference mode: the recorded outputs may be inference tensors, and replay records no autograd.
        with torch.inference_mode():
            for func, args, kwargs, out in self.ops:
                _write_back(out, func(*pytree.tree_map(resolve, args), **pytree.tree_map(resolve, kwargs)))
        rt._clobber_after(self)

    def reset(self) -> None:
        self._rt._forget(self)
        self.ops, self._allocated, self._externals = None, [], []


class _PooledGraph(FakeGraph):
    """``torch.cuda.CUDAGraph`` and ``torch.npu.NPUGraph``: memory pools, error modes, no work at capture."""

    capture_error_mode: str | None = None

    def _begin_pooled(self, pool: FakePoolHandle | None, capture_error_mode: str) -> None:
        if capture_error_mode not in _CAPTURE_ERROR_MODES:
            raise RuntimeError(
                f"Unknown capture error mode. Expected `global`, `thread_local`, or `relaxed`, got {capture_error_mode}"
            )
        self.capture_error_mode = capture_error_mode
        self._begin(pool, executes=False, holds_inputs=False)

    def pool(self) -> FakePoolHandle | None:
        return self._pool


class FakeCUDAGraph(_PooledGraph):
    """``torch.cuda.CUDAGraph(keep_graph=False)``: with ``keep_graph`` the first replay instantiates."""

    enable_annotations = False

    def __init__(self, runtime: _FakeRuntime, keep_graph: bool = False) -> None:
        super().__init__(runtime)
        self.keep_graph = keep_graph
        self.instantiated = False

    def capture_begin(
        self, pool: FakePoolHandle | None = None, capture_error_mode: str = "global", check_input_liveness: bool = False
    ) -> None:
        self.check_input_liveness = check_input_liveness
        self._begin_pooled(pool, capture_error_mode)

    def capture_end(self) -> None:
        super().capture_end()
        self.instantiated = not self.keep_graph  # torch instantiates inside capture_end unless keep_graph

    def instantiate(self) -> None:
        if self.ops is None:
            raise RuntimeError("capture_end() must have been called before calling instantiate")
        if self.instantiated and not self.keep_graph:
            raise RuntimeError("instantiate() is intended to be called by the user only when keep_graph=true")
        self.instantiated = True
        self._rt.calls.append(("instantiate", self.id))

    def replay(self) -> None:
        if self.ops is not None and not self.instantiated:
            self.instantiate()
        self._replay()

    def reset(self) -> None:
        super().reset()
        self.instantiated = False


class FakeNPUGraph(_PooledGraph):
    """``torch.npu.NPUGraph()`` as torch_npu defines it."""

    auto_dispatch_capture = False

    def capture_begin(self, pool: FakePoolHandle | None = None, capture_error_mode: str = "global") -> None:
        self._begin_pooled(pool, capture_error_mode)

    def replay(self) -> None:
        self._replay()


class FakeHPUGraph(FakeGraph):
    """``habana_frameworks.torch.hpu.HPUGraph()``: no pool; the capture runs the work unless ``dry_run``."""

    dry_run = False

    def capture_begin(self, dry_run: bool = False) -> None:
        self.dry_run = dry_run
        self._begin(None, executes=not dry_run, holds_inputs=True)

    def replay(self, asynchronous: bool = False) -> None:
        self._replay()
