"""The state a fake device module keeps: device memory, placement, streams, pools and the call log.

``_FakeRuntime`` is the base of every fake module of ``fake_devices``: the registry of the CPU
storages that count as device memory and the ``placement()`` mode that fills it, the streams,
the capture underway, the capture order of each shared pool, and the ``calls`` log. Also the
stream and pool tokens and the small tensor helpers the other fake modules share.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

if TYPE_CHECKING:  # fake_graphs imports this module; the graphs are only annotations here
    from fake_graphs import FakeGraph

_GARBAGE = 0xFF  # every byte of never-written pool memory: NaN for floats, -1 for ints
_ids = itertools.count(1)


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return None


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


class _DeviceCallMode(TorchFunctionMode):
    """A torch-level mode that runs each call and knows whether it touched the fake's device."""

    def __init__(self, runtime: _FakeRuntime) -> None:
        super().__init__()
        self._rt = runtime

    def _run(self, func: Any, args: tuple[Any, ...], kwargs: Any) -> tuple[Any, list[torch.Tensor], bool]:
        """(the call's result, its tensor inputs, whether it placed on or read device memory)."""
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        on_device = _places(self._rt, func, args, kwargs) or any(map(self._rt.is_device_tensor, inputs))
        return func(*args, **kwargs), inputs, on_device


class _Placement(_DeviceCallMode):
    """Registers as device memory what is placed on the fake's device or computed from device memory."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out, _, on_device = self._run(func, args, kwargs)
        if on_device:
            for t in _tensors(out):
                self._rt._register(t)
        return out


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
