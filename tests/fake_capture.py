"""What a fake capture does while it runs, and how a replay writes results back.

``_Recorder`` (a ``TorchDispatchMode``) records each aten op of a capture for replay and fences
the capture as the device would: host-synchronising ops, host memory and (for stream capture)
restoring what the shape-finding run wrote; ``_HostWorkGuard`` refuses host work at the torch
level; ``_External`` is a pre-capture tensor as a graph holds it; ``_write_back`` copies a
replayed op's result into the tensor the op produced at capture. Used by ``fake_graphs``.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from fake_runtime import _describe, _DeviceCallMode, _FakeRuntime, _storage, _tensors
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that make the host wait for the device: a real capture fails on them.
_HOST_SYNC_OPS = (
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.masked_select.default,
)


def _written(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors ``func`` writes into, by its schema (in-place ``self``, ``out=``)."""
    schema = getattr(func, "_schema", None)
    written: list[torch.Tensor] = []
    for i, arg in enumerate(schema.arguments if schema is not None else ()):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
            written.extend(_tensors(value))
    return written


class _HostWorkGuard(_DeviceCallMode):
    """During capture: refuses torch calls that touch no device memory and place nothing on the device.

    Such a call is host work, which a device capture does not record. Its aten ops cannot tell (a
    factory's ``device`` is always filled in at dispatch), so the check is made at the torch level.
    Calls that only touch 0-dim tensors (``torch.tensor(2.0)``) are allowed: CPU scalars are baked in.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out, inputs, on_device = self._run(func, args, kwargs)
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
