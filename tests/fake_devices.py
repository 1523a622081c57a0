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
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

_CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")
# Ops that make the host wait for the device: a real capture fails on them.
_HOST_SYNC_OPS = (
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.masked_select.default,
)
_GARBAGE = 0xFF  # every byte of never-written pool memory: NaN for floats, -1 for ints
_ids = itertools.count(1)


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return None


def _written(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors ``func`` writes into, by its schema (in-place ``self``, ``out=``)."""
    schema = getattr(func, "_schema", None)
    written: list[torch.Tensor] = []
    for i, arg in enumerate(schema.arguments if schema is not None else ()):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
            written.extend(_tensors(value))
    return written


def _describe(t: torch.Tensor) -> str:
    return f"a tensor of shape {tuple(t.shape)} and dtype {t.dtype}"


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


def _places(runtime: _FakeRuntime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a torch-level call places its result on the fake's device explicitly (``device=``, ``.to(dev)``)."""
    for x in (kwargs.get("device"), *(args[1:] if func is torch.Tensor.to else ())):
        if isinstance(x, (str, torch.device)):
            with contextlib.suppress(RuntimeError):  # a string that is no device
                if torch.device(x).type == runtime.device_type:
                    return True
    return False


class _Placement(TorchFunctionMode):
    """Registers as device memory what is placed on the fake's device or computed from device memory."""

    def __init__(self, runtime: _FakeRuntime) -> None:
        super().__init__()
        self._rt = runtime

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        on_device = _places(self._rt, func, args, kwargs) or any(map(self._rt.is_device_tensor, inputs))
        out = func(*args, **kwargs)
        if on_device:
            for t in _tensors(out):
                self._rt._register(t)
        return out


class _HostWorkGuard(TorchFunctionMode):
    """During capture: refuses torch calls that touch no device memory and place nothing on the device.

    Such a call is host work, which a device capture does not record. Its aten ops cannot tell (a
    factory's ``device`` is always filled in at dispatch), so the check is made at the torch level.
    Calls that only touch 0-dim tensors (``torch.tensor(2.0)``) are allowed: CPU scalars are baked in.
    """

    def __init__(self, runtime: _FakeRuntime) -> None:
        super().__init__()
        self._rt = runtime

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        on_device = _places(self._rt, func, args, kwargs) or any(map(self._rt.is_device_tensor, inputs))
        out = func(*args, **kwargs)
        host = [t for t in (*inputs, *_tensors(out)) if t.dim() > 0]
        if not on_device and host:
            name = torch.overrides.resolve_name(func) or getattr(func, "__name__", repr(func))
            raise RuntimeError(self._rt._host_refusal(name, host[0], "works on"))
        return out


class _External:
    """A tensor that existed before capture, as a graph holds it: its storage plus the view over it.

    CUDA and NPU graphs hold addresses (``hold=False``: the storage is only weakly referenced);
    HPU graphs keep their input tensors (``hold=True``).
    """

    def __init__(self, t: torch.Tensor, storage: torch.UntypedStorage, hold: bool) -> None:
        self._ref = weakref.ref(storage)
        self._held = storage if hold else None
        self.view = (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        self.text = _describe(t)

    def alive(self) -> bool:
        return self._ref() is not None

    def tensor(self) -> torch.Tensor:
        offset, shape, stride, dtype = self.view
        return torch.empty(0, dtype=dtype).set_(self._ref(), offset, shape, stride)


class _Recorder(TorchDispatchMode):
    """Records each aten op of a capture for replay and fences the capture as the device would."""

    def __init__(self, runtime: _FakeRuntime, executes: bool, holds_inputs: bool) -> None:
        super().__init__()
        self.rt, self.executes, self.holds_inputs = runtime, executes, holds_inputs
        self.ops: list[tuple[Any, Any, Any, Any]] = []
        self.allocated: dict[int, torch.UntypedStorage] = {}  # storages born in this capture, held strongly
        self.snapshots: dict[int, tuple[torch.UntypedStorage, torch.UntypedStorage]] = {}
        self.externals: list[_External] = []
        self._guard = _HostWorkGuard(runtime)

    def start(self) -> None:
        self.__enter__()
        self._guard.__enter__()

    def stop(self) -> None:
        self._guard.__exit__(None, None, None)
        self.__exit__(None, None, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _HOST_SYNC_OPS:
            raise RuntimeError(
                f"fake {self.rt.name}: operation not permitted when stream is capturing ({func} waits for the device)"
            )
        written = {id(t) for t in _written(func, args, kwargs)}
        seen: set[int] = set()
        for t in _tensors((args, kwargs)):
            s = _storage(t)
            if s is None:
                continue
            seen.add(id(s))
            if id(s) in self.allocated:
                continue
            if s in self.rt._device:
                if id(t) in written and not self.executes and id(s) not in self.snapshots:
                    self.snapshots[id(s)] = (s, s.clone())  # restored at capture end: capture runs nothing
                continue
            if t.dim() == 0 and id(t) not in written:
                continue  # a CPU scalar: its value is baked into the graph (see _for_replay)
            raise RuntimeError(self.rt._host_refusal(str(func), t, "writes" if id(t) in written else "reads"))
        out = func(*args, **kwargs)
        for t in _tensors(out):
            s = _storage(t)
            if s is not None and id(s) not in seen and s not in self.rt._device:
                self.allocated[id(s)] = s
                self.rt._device.add(s)
        self.ops.append((func, self._for_replay(args), self._for_replay(kwargs), self._outputs(out)))
        return out

    def _for_replay(self, tree: Any) -> Any:
        def convert(x: Any) -> Any:
            s = _storage(x) if isinstance(x, torch.Tensor) else None
            if s is None or id(s) in self.allocated:
                return x
            if s in self.rt._device:
                ext = _External(x, s, self.holds_inputs)
                self.externals.append(ext)
                return ext
            return x.clone()  # a CPU scalar, as it was at capture

        return pytree.tree_map(convert, tree)

    def _outputs(self, out: Any) -> Any:
        # Only capture-allocated outputs need a write-back; views of and writes into older memory
        # land in that memory by themselves.
        def keep(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                s = _storage(x)
                return x if s is not None and id(s) in self.allocated else None
            return x

        return pytree.tree_map(keep, out)


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
    # None (older memory), numbers, sizes: nothing to write


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


class _FakeRuntime:
    """State a fake module's graphs share: the call log, streams, device memory, the capture underway."""

    name: str
    device_type = "cpu"  # the torch device type the fake's "device memory" really has
    has_pools = True
    needs_side_stream = True  # CUDA and ACL graphs refuse capture on the default stream

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.default = FakeStream(is_default=True)
        self.current = self.default
        self.capturing: FakeGraph | None = None
        self._default_capture_stream: FakeStream | None = None
        self._device: weakref.WeakSet[torch.UntypedStorage] = weakref.WeakSet()
        self._pools: dict[int, list[weakref.ref[FakeGraph]]] = {}  # pool id -> graphs in capture order

    # -- device memory ---------------------------------------------------------------------------

    def placement(self) -> TorchFunctionMode:
        """Context manager: tensors placed on ``device_type`` or computed from device memory become device memory."""
        return _Placement(self)

    def is_device_tensor(self, t: torch.Tensor) -> bool:
        """Whether ``t`` lives in this fake's device memory (as opposed to host memory)."""
        s = _storage(t)
        return s is not None and s in self._device

    def memory_allocated(self, device: Any = None) -> int:
        """Bytes held by live device storages (placed tensors and graph memory)."""
        return sum(s.nbytes() for s in list(self._device))

    def _register(self, t: torch.Tensor) -> None:
        s = _storage(t)
        if s is not None:
            self._device.add(s)

    def _host_refusal(self, op: str, t: torch.Tensor, verb: str) -> str:
        return (
            f"fake {self.name}: {op} {verb} host memory ({_describe(t)}) during "
            f"graph capture. A real capture records only device work, so this host op would be missing from the "
            f"graph (an empty or partial graph; PyTorch at most warns, and Gaudi reports ops 'not supported during "
            f"HPU Graph capturing'); this fake refuses it. Create the tensor on the device (inside "
            f"fake.placement(), with device={self.device_type!r} or .to({self.device_type!r})) before capturing."
        )

    def _dead_inputs(self, dead: list[str], checked: bool) -> str:
        if checked:  # the message torch 2.13's liveness tracker raises
            return f"CUDA graph replay detected {len(dead)} dead tensor(s): {'; '.join(dead)}"
        return (
            f"fake {self.name}: replay reads {len(dead)} input(s) freed since capture ({'; '.join(dead)}). Real "
            f"hardware would read the freed memory without an error (torch.cuda.graph(..., "
            f"check_input_liveness=True) raises this on CUDA); this fake refuses. Keep captured inputs alive."
        )

    # -- shared pools ----------------------------------------------------------------------------

    def _captured(self, graph: FakeGraph) -> None:
        if graph._pool is not None:
            self._pools.setdefault(graph._pool.id, []).append(weakref.ref(graph))

    def _forget(self, graph: FakeGraph) -> None:
        if graph._pool is not None:
            order = self._pools.get(graph._pool.id, [])
            order[:] = [r for r in order if r() is not graph]

    def _clobber_after(self, graph: FakeGraph) -> None:
        # Graphs captured later into this pool may have been given memory this graph freed during its
        # capture; its replay writes there. Model the worst case: all their capture memory is overwritten.
        if graph._pool is None:
            return
        order = [r() for r in self._pools.get(graph._pool.id, [])]
        if graph not in order:
            return
        for later in order[order.index(graph) + 1 :]:
            for storage in later._allocated if later is not None else ():
                storage.fill_(_GARBAGE)

    # -- streams and the rest of the module ------------------------------------------------------

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
            raise RuntimeError(f"fake {self.name}: synchronize is not permitted while a stream is capturing")
        self.calls.append(("synchronize",))

    def is_available(self) -> bool:
        return True

    def is_current_stream_capturing(self) -> bool:
        """True while a capture is underway on the current stream."""
        return self.capturing is not None and self.current is self.capturing.capture_stream

    def _capture_stream(self, stream: FakeStream | None) -> FakeStream:
        # torch.cuda.graph, torch.npu.graph and hpu.graph share one lazily created side stream.
        if stream is not None:
            return stream
        if self._default_capture_stream is None:
            self._default_capture_stream = FakeStream()
        return self._default_capture_stream


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
