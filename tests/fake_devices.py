"""CPU fakes of the graph APIs of torch.cuda, torch.npu (torch_npu) and habana_frameworks.torch.hpu.

Rule: a fake behaves as the hardware does, and where the hardware silently misbehaves the fake
raises instead and says so. It never accepts what the hardware refuses.

Signatures followed exactly (no ``**kwargs``, so a keyword the vendor lacks fails here too):
  - torch 2.13, ``torch/cuda/graphs.py``: ``CUDAGraph(keep_graph=False)`` with ``capture_begin(pool=None,
    capture_error_mode="global", check_input_liveness=False)``, ``capture_end()``, ``instantiate()``,
    ``replay()``, ``reset()``, ``pool()``; ``graph(cuda_graph, pool=None, stream=None, capture_error_mode=
    "global", enable_annotations=False, check_input_liveness=False)``; ``graph_pool_handle()``;
    ``is_current_stream_capturing()``; ``memory_allocated(device=None)``.
  - torch_npu, ``torch_npu/npu/graphs.py`` (docs/upstream/vllm-ascend.md §7): ``NPUGraph()`` with
    ``capture_begin(pool=None, capture_error_mode="global")``, ``capture_end()``, ``replay()``, ``reset()``,
    ``pool()``; ``graph(npu_graph, pool=None, stream=None, auto_dispatch_capture=False, capture_error_mode=
    "global")``; ``graph_pool_handle()``; ``is_current_stream_capturing()``.
  - habana_frameworks 1.19.0 (github.com/HabanaAI/gaudi-pytorch-bridge,
    ``python_packages/habana_frameworks/torch/hpu/graphs.py``): ``HPUGraph()`` with
    ``capture_begin(dry_run=False)``, ``capture_end()``, ``replay(asynchronous=False)``, ``reset()``;
    ``graph(hpu_graph, stream=None, dry_run=False)``; ``wrap_in_hpu_graph(module, asynchronous=False,
    disable_tensor_cache=False, dry_run=False, max_graphs=None)``; ``is_current_stream_capturing()``, which
    returns ``current_stream().is_capture``. Only ``graph.__enter__`` sets that flag (``__exit__`` clears
    it); ``HPUGraph.capture_begin`` and ``wrap_in_hpu_graph`` never do.

Device memory. The fake's memory is CPU memory (``device_type == "cpu"``), so each fake keeps a
registry of the storages that count as device memory (``is_device_tensor``). Inside
``with fake.placement():`` a tensor becomes device memory when it is placed on the device explicitly
(a ``device=`` argument of type ``device_type``, ``Tensor.to(device)``, hence ``Module.to(device)``) or
computed from device memory; capture outputs are device (pool) memory as well. Everything else is host
memory. ``memory_allocated()`` is the byte count of the live device storages.

Capture. A ``TorchDispatchMode`` records every aten op run during capture; ``replay()`` re-runs them
in order and writes each result into the tensor the op produced at capture, so a replay reads what the
captured buffers hold now and returns the same output tensors, without running Python. Per device:
  - CUDA and NPU stream capture records work without running it. The fake runs each op only for its
    output shapes: storages that existed before are restored at capture end, and storages allocated
    during capture are filled with 0xFF bytes (NaN, -1), so inputs and state are untouched and static
    outputs hold garbage until the first replay.
  - HPU capture in lazy mode launches the recorded work too, unless ``dry_run`` (HPUGraph.cpp sets the
    context's dry-run flag; ``backend/kernel/hpu_habana_launch_op_pt.cpp`` launches the recipe only
    ``if (!dry_run_)``; ``wrap_in_hpu_graph`` returns the capture call's outputs as results). So an HPU
    capture updates state and returns valid outputs; with ``dry_run=True`` it behaves like CUDA's.
  - Host memory in a capture raises: a host op is not recorded (CUDA ends with an empty or partial graph
    and at most a warning; Gaudi's docs say CPU ops "are not supported during HPU Graph capturing").
    A 0-dim host tensor is allowed, as CUDA kernels take CPU scalars, and its capture-time value is baked
    into the graph. Host-synchronising ops (``.item()``, ``nonzero``) raise as on hardware.
  - CUDA and NPU graphs hold raw addresses: inputs that existed before capture are held by weak
    reference and a replay after one was freed raises (hardware would read freed memory silently;
    torch 2.13's ``check_input_liveness=True`` is the documented way to get this error there). HPU graphs
    keep their input tensors (``HPUGraph::capture_end`` saves them), so they are held strongly.
  - Graphs captured into one pool must replay in capture order: memory an earlier graph freed during
    its capture may back a later graph's outputs. Replaying a graph therefore fills the capture-allocated
    storages of every graph captured after it into the same pool with garbage. HPU graphs have no pools.

Each fake keeps an ordered ``calls`` log (``("synchronize",)``, ``("stream_enter", s)``, ``("stream_exit",
s)``, ``("graph_pool_handle", token)``, ``("capture_begin", pool, stream)``, ``("capture_end",)``,
``("instantiate", graph_id)``, ``("replay", graph_id)``, ``("wrap_in_hpu_graph", module, options)``).

Known differences: only ops that pass through the Python dispatcher are recorded and fenced, so code
running its own kernels (Inductor's CPU C++ kernels) is neither re-run on replay nor kept from running
at capture; a pool never reuses memory except as the replay-order clobbering above; streams are tokens
and work is synchronous; inside ``placement()`` ``.to("cpu")`` means "to the fake device".

Layout: ``fake_runtime.py`` holds the device-memory registry, placement, streams, pools and call
log every fake module shares; ``fake_capture.py`` the capture recorder, the host-work guard and
the replay write-back; ``fake_graphs.py`` the graph objects; this module the vendor modules.
Every public name of those modules is importable from here (``from fake_devices import ...``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from fake_graphs import FakeCUDAGraph, FakeGraph, FakeHPUGraph, FakeNPUGraph, _PooledGraph
from fake_runtime import FakePoolHandle, FakeStream, _FakeRuntime, _tensors
from torch.utils import _pytree as pytree

__all__ = [
    "FakeCUDAGraph",
    "FakeCudaModule",
    "FakeGraph",
    "FakeHPUGraph",
    "FakeHpuModule",
    "FakeNPUGraph",
    "FakeNpuModule",
    "FakePoolHandle",
    "FakeStream",
]


class _FakePooledRuntime(_FakeRuntime):
    """torch.cuda and torch.npu: memory pools and a ``graph(...)`` context manager."""

    def graph_pool_handle(self) -> FakePoolHandle:
        token = FakePoolHandle()
        self.calls.append(("graph_pool_handle", token))
        return token

    @contextlib.contextmanager
    def _graph_context(self, graph: _PooledGraph, pool: Any, stream: Any, begin: Callable[..., None]) -> Iterator[None]:
        # What torch.cuda.graph / torch.npu.graph do: synchronize, enter the capture stream,
        # capture_begin(*pool, ...), and capture_end on exit even when the body raised.
        self.synchronize()
        with self.stream(self._capture_stream(stream)):
            begin(*(() if pool is None else (pool,)))
            try:
                yield
            finally:
                graph.capture_end()


class FakeCudaModule(_FakePooledRuntime):
    """Stands in for ``torch.cuda`` (torch 2.13)."""

    name = "cuda"

    def CUDAGraph(self, keep_graph: bool = False) -> FakeCUDAGraph:
        return FakeCUDAGraph(self, keep_graph)

    def graph(
        self,
        cuda_graph: FakeCUDAGraph,
        pool: FakePoolHandle | None = None,
        stream: FakeStream | None = None,
        capture_error_mode: str = "global",
        enable_annotations: bool = False,
        check_input_liveness: bool = False,
    ) -> contextlib.AbstractContextManager[None]:
        # Annotations only label kernels for profilers; the graph's work is the same.
        cuda_graph.enable_annotations = enable_annotations

        def begin(*pool_arg: FakePoolHandle) -> None:
            cuda_graph.capture_begin(
                *pool_arg, capture_error_mode=capture_error_mode, check_input_liveness=check_input_liveness
            )

        return self._graph_context(cuda_graph, pool, stream, begin)


class FakeNpuModule(_FakePooledRuntime):
    """Stands in for ``torch.npu`` as torch_npu registers it (``torch_npu/npu/graphs.py``)."""

    name = "npu"

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

        def begin(*pool_arg: FakePoolHandle) -> None:
            npu_graph.capture_begin(*pool_arg, capture_error_mode=capture_error_mode)

        return self._graph_context(npu_graph, pool, stream, begin)


class FakeHpuModule(_FakeRuntime):
    """Stands in for ``habana_frameworks.torch.hpu`` in lazy mode (the only mode that exports HPU graphs).

    No ``graph_pool_handle`` and no pool arguments anywhere, as on the real module.
    """

    name = "hpu"
    has_pools = False
    needs_side_stream = False  # the bridge's own wrap_in_hpu_graph captures on the default stream

    def HPUGraph(self) -> FakeHPUGraph:
        return FakeHPUGraph(self)

    def is_current_stream_capturing(self) -> bool:
        """``current_stream().is_capture``, the flag only ``graph(...)`` sets, as in the bridge."""
        return bool(getattr(self.current, "is_capture", False))

    @contextlib.contextmanager
    def graph(self, hpu_graph: FakeHPUGraph, stream: FakeStream | None = None, dry_run: bool = False) -> Iterator[None]:
        # The bridge's graph.__enter__: synchronize, enter the stream, set is_capture, capture_begin;
        # __exit__: capture_end, clear is_capture, leave the stream.
        self.synchronize()
        capture_stream = self._capture_stream(stream)
        with self.stream(capture_stream):
            capture_stream.is_capture = True  # type: ignore[attr-defined]
            hpu_graph.capture_begin(dry_run)
            try:
                yield
            finally:
                hpu_graph.capture_end()
                capture_stream.is_capture = False  # type: ignore[attr-defined]

    def wrap_in_hpu_graph(
        self,
        module: torch.nn.Module,
        asynchronous: bool = False,
        disable_tensor_cache: bool = False,
        dry_run: bool = False,
        max_graphs: int | None = None,
    ) -> torch.nn.Module:
        """Replace ``module.forward`` by capture on the first call per input shapes, replay after.

        As the bridge's ``wrapped_hpugraph_forward``: capture with ``capture_begin``/``capture_end`` on
        the default stream (no ``is_capture`` flag), ``disable_tensor_cache`` implies ``dry_run``, a dry
        run is replayed right after capture, later calls copy their tensors into the captured inputs
        and replay, ``bypass_hpu_graphs=True`` runs the module eagerly, and ``max_graphs`` caps the cache.
        """
        options = {
            "asynchronous": asynchronous,
            "disable_tensor_cache": disable_tensor_cache,
            "dry_run": dry_run,
            "max_graphs": max_graphs,
        }
        self.calls.append(("wrap_in_hpu_graph", module, options))
        cache: dict[Any, tuple[Any, Any, FakeHPUGraph]] = {}
        original = module.forward

        def key(x: Any) -> Any:
            return (tuple(x.shape), x.stride()) if isinstance(x, torch.Tensor) else x

        def forward(*args: Any, **kwargs: Any) -> Any:
            warmup_mode = kwargs.pop("warmup_mode", False)
            if kwargs.pop("bypass_hpu_graphs", False):
                return original(*args, **kwargs)
            inputs = (args, kwargs)
            h = repr(pytree.tree_map(key, inputs))
            if h not in cache:
                if max_graphs is not None and len(cache) == max_graphs:
                    return original(*args, **kwargs)
                with self.stream(self.default):
                    graph = self.HPUGraph()
                    graph.capture_begin(dry_run=dry_run or disable_tensor_cache)
                    try:
                        outputs = original(*args, **kwargs)
                    finally:
                        # The bridge leaves the capture open when forward raises; the fake closes it
                        # so that one failing test cannot leave its recorder running for the next.
                        graph.capture_end()
                    if graph.dry_run:
                        graph.replay(asynchronous)
                cache[h] = (inputs, outputs, graph)
                return outputs
            captured, outputs, graph = cache[h]
            if not warmup_mode:
                for dst, src in zip(_tensors(captured), _tensors(inputs)):
                    dst.copy_(src)
                graph.replay(asynchronous)
            return outputs

        module.forward = forward  # type: ignore[method-assign]
        module.clear_cache = cache.clear  # type: ignore[assignment]
        return module
