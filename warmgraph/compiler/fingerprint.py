"""What a graph is: code, structure, input specs and what it reads; never the weights it binds.

A graph cache entry may serve a later process only if that process would compile the same
graph. So the fingerprint covers everything that ends up in the generated code:

  - an ``nn.Module``: the source of every class in the tree and in their base classes (torch's
    own excepted: the torch version is in the key), the functions and data those classes'
    methods read from their modules (``rms_norm``, a table, a config object), each module's
    attributes (eps, sizes, a dtype, a config dict, the training flag), and the names, shapes
    and dtypes of its parameters, buffers and tensor attributes. Not their values: backends
    bind a module's tensors by name at load (``aot`` keeps references, not copies), so a
    fine-tune of the same architecture reuses the entries.
  - any other callable: its code (nested functions included), default arguments, every
    decorator layer, and everything it reads that is not an argument: closure cells and
    module globals. A tensor or module reached that way has no owner to bind it from, so
    ``aot`` bakes it into the package; its *values* are therefore hashed (a global tensor read
    by a module's method too).
  - the input specs at this bucket (shape, dtype, device type, or the value of a constant).

When that would mean hashing more than ``MAX_HASHED_BYTES``, or the graph reads something
whose meaning cannot be described (an object without attributes, a native handle), the
result says the graph must not be persisted, and why: compiling it again is slow, loading
another function's graph would be wrong. ``device_factors`` describes the device. Nothing
here knows about the cache; ``graph_cache.key`` turns these dicts into a key.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import platform
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Hashing a closed-over tensor costs about 1 s per GB; beyond this a graph is not persisted.
MAX_HASHED_BYTES = 256 * 2**20
_MAX_DEPTH = 6  # how deep closures, containers and object attributes are followed
# nn.Module's own bookkeeping (hooks, registries of parameters, buffers and children).
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module())) - {"training"}
_LIBRARIES = ("torch", "builtins", "typing", "functools", "collections", "abc", "numpy", "math")


class Unfingerprintable(Exception):
    """Something a graph reads cannot be described; such graphs are compiled but not cached."""


@dataclass(frozen=True)
class Fingerprint:
    """A graph's identity as JSON-able factors, and whether it may be persisted (else why not)."""

    factors: dict[str, Any]
    persistable: bool = True
    reason: str | None = None


def input_specs(example_inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Shape, dtype and device type of each tensor argument; the value of any other argument.

    Raises ``Unfingerprintable`` for a constant that cannot be described (its repr would hold
    an address, so no two processes would agree on it).
    """
    out = []
    for a in example_inputs:
        out.append(_tensor_spec(a) if isinstance(a, torch.Tensor) else {"value": _Walker().value(a, 0)})
    return out


def fingerprint(fn: Callable[..., Any], example_inputs: Sequence[Any] = ()) -> Fingerprint:
    """The fingerprint of ``fn`` called with ``example_inputs`` (see the module docstring)."""
    name = type(fn).__qualname__ if isinstance(fn, torch.nn.Module) else getattr(fn, "__qualname__", repr(fn))
    walker = _Walker()
    try:
        inputs = input_specs(example_inputs)
        is_module = isinstance(fn, torch.nn.Module)
        factors = walker.module(fn, 0, values=False) if is_module else walker.function(fn, 0)
    except Unfingerprintable as exc:
        return Fingerprint({"name": name}, False,
                           f"{name} reads {exc}, which warmgraph cannot fingerprint; such graphs are compiled but "
                           "not cached (pass that value as an argument, or give it plain attributes)")
    if walker.hashed_bytes > MAX_HASHED_BYTES:
        mb = walker.hashed_bytes / 2**20
        return Fingerprint({"name": name}, False,
                           f"{name} closes over {mb:.0f} MB of tensors that would be baked into its cached graphs; "
                           "such graphs are compiled but not cached (wrap the computation in an nn.Module so its "
                           "weights are bound at load instead)")
    return Fingerprint({**factors, "inputs": inputs})


def device_factors(device_type: str) -> dict[str, Any]:
    """The device a graph is built for: generated code is specific to it."""
    info: dict[str, Any] = {"type": device_type}
    if device_type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
    else:
        info["name"] = platform.machine()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


# -- pieces ---------------------------------------------------------------------------------


def _tensor_spec(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype), "device": t.device.type}


def _tensor_value(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def _plain(value: Any) -> Any:
    """``value`` if it is a plain scalar or a flat tuple/list of them, else None."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return None


def _library(obj: Any) -> bool:
    """Part of the installation (torch, the standard library): the key's versions cover it."""
    return (getattr(obj, "__module__", None) or "builtins").split(".")[0] in _LIBRARIES


def _source_digest(obj: Any) -> str:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        # No source on disk (a REPL or generated class): fall back to the bytecode.
        codes = [m.__code__ for m in vars(obj).values() if isinstance(m, types.FunctionType)]
        return hashlib.sha256("".join(_code_digest(c) for c in codes).encode()).hexdigest()


def _code_digest(code: types.CodeType) -> str:
    """The bytecode, constants and names of a code object, nested code objects included."""
    h = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        h.update(_code_digest(const).encode() if isinstance(const, types.CodeType) else repr(const).encode())
    h.update(repr(code.co_names).encode())
    return h.hexdigest()


def _names(code: types.CodeType) -> Iterator[str]:
    """Every global name a code object reads, nested functions and lambdas included."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _methods(cls: type) -> Iterator[types.FunctionType]:
    for member in vars(cls).values():
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        if isinstance(member, types.FunctionType):
            yield member


class _Walker:
    """Describes what a graph reads, hashing the tensor values that would be baked into it."""

    def __init__(self) -> None:
        self.hashed_bytes = 0
        self._active: set[int] = set()  # code objects being described (recursion stops here)

    # -- modules -----------------------------------------------------------------------------

    def module(self, module: torch.nn.Module, depth: int, values: bool) -> dict[str, Any]:
        """Classes (with bases) and what their methods read, attributes, tensor specs (and values)."""
        classes = sorted({c for m in module.modules() for c in type(m).__mro__ if not _library(c)}, key=str)
        code = {f"{c.__module__}.{c.__qualname__}": _source_digest(c) for c in classes}
        reads: dict[str, Any] = {}
        for c in classes:
            for method in _methods(c):
                reads.update(self._globals(method, depth))
        modules, tensors = {}, {}
        for name, m in module.named_modules():
            attrs = {}
            for key, v in sorted(vars(m).items()):
                if key in _MODULE_INTERNALS:
                    continue
                if isinstance(v, torch.Tensor):  # a plain tensor attribute: export lifts it as a constant
                    tensors[f"{name}.{key}" if name else key] = v
                else:
                    attrs[key] = self.value(v, depth + 1, values)
            modules[name or "<root>"] = {"class": f"{type(m).__module__}.{type(m).__qualname__}", "attrs": attrs}
        tensors.update(dict(module.named_parameters()))
        tensors.update(dict(module.named_buffers()))
        specs = {}
        for name, t in sorted(tensors.items()):
            specs[name] = self._tensor(t, values)
        return {"name": type(module).__qualname__, "code": code, "reads": reads, "modules": modules,
                "tensors": specs}

    def _tensor(self, t: torch.Tensor, values: bool) -> dict[str, Any]:
        spec = _tensor_spec(t)
        if values:
            self.hashed_bytes += t.numel() * t.element_size()
            if self.hashed_bytes <= MAX_HASHED_BYTES:  # past it the caller refuses; hashing more is wasted
                spec["sha256"] = _tensor_value(t)
        return spec

    # -- functions ---------------------------------------------------------------------------

    def function(self, fn: Callable[..., Any], depth: int) -> dict[str, Any]:
        if depth > _MAX_DEPTH:
            raise Unfingerprintable(f"functions nested more than {_MAX_DEPTH} levels deep ({fn!r})")
        if isinstance(fn, types.MethodType):  # a bound method reads its instance
            return {"method": self.function(fn.__func__, depth + 1), "self": self.value(fn.__self__, depth + 1)}
        if isinstance(fn, torch.nn.Module):
            return self.module(fn, depth + 1, values=True)  # wrapped in a callable: its weights are baked
        code = getattr(fn, "__code__", None)
        if code is None:
            call = vars(type(fn)).get("__call__")
            if isinstance(call, types.FunctionType):  # an object with __call__: its method and its state
                return {"name": type(fn).__qualname__, "call": self.function(call, depth + 1),
                        "self": self.value(fn, depth + 1)}
            raise Unfingerprintable(f"the callable {fn!r} (no Python code)")
        name = getattr(fn, "__qualname__", type(fn).__name__)
        if id(code) in self._active:
            return {"recursive": name}
        self._active.add(id(code))
        try:
            closure = {}
            for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
                try:
                    contents = cell.cell_contents
                except ValueError:  # an empty cell (a name bound later): nothing read yet
                    continue
                closure[var] = self.value(contents, depth + 1)
            out = {
                "name": name,
                "code": _code_digest(code),
                "defaults": self.value(list(getattr(fn, "__defaults__", None) or ()), depth + 1),
                "kwdefaults": self.value(dict(getattr(fn, "__kwdefaults__", None) or {}), depth + 1),
                "closure": closure,
                "globals": self._globals(fn, depth),
            }
            wrapped = getattr(fn, "__wrapped__", None)  # a decorator: the wrapper and what it wraps
            if wrapped is not None:
                out["wraps"] = self.function(wrapped, depth + 1)
            return out
        finally:
            self._active.discard(id(code))

    def _globals(self, fn: types.FunctionType, depth: int) -> dict[str, Any]:
        """The module globals ``fn`` (and functions nested in it) reads that are data or our code.

        Library modules, classes and functions are part of the installation; other objects a
        function merely names (a logger, a lock) are described when they can be, else skipped.
        """
        module_globals = getattr(fn, "__globals__", {})
        out: dict[str, Any] = {}
        for n in sorted(set(_names(fn.__code__))):
            if n not in module_globals:
                continue
            v = module_globals[n]
            if isinstance(v, types.ModuleType) or (callable(v) and _library(v)):
                continue  # torch, F, builtins, library classes and functions
            if isinstance(v, type):
                out[n] = _source_digest(v)  # a class of ours the code instantiates or calls
                continue
            data = isinstance(v, (torch.Tensor, torch.nn.Module, tuple, list, dict, types.FunctionType))
            try:
                out[n] = self.value(v, depth + 1)
            except Unfingerprintable:
                if data or _plain(v) is not None:
                    raise
                # an object the code merely names (a logger, a lock): not part of the graph
        return out

    # -- values ------------------------------------------------------------------------------

    def value(self, value: Any, depth: int, values: bool = True) -> Any:
        """A JSON-able description of ``value``; tensors by value when ``values`` (they are baked)."""
        if depth > _MAX_DEPTH:
            raise Unfingerprintable(f"a value nested more than {_MAX_DEPTH} levels deep ({type(value).__name__})")
        if (p := _plain(value)) is not None or value is None:
            return p
        if isinstance(value, torch.Tensor):
            return self._tensor(value, values)
        if isinstance(value, torch.nn.Module):
            return self.module(value, depth + 1, values)
        if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
            return str(value)
        if isinstance(value, (tuple, list, set, frozenset)):
            items = [self.value(v, depth + 1, values) for v in value]
            return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
        if isinstance(value, dict):
            items = sorted(value.items(), key=lambda kv: repr(kv[0]))
            return {repr(k): self.value(v, depth + 1, values) for k, v in items}
        if isinstance(value, (types.FunctionType, types.MethodType)):
            return self.function(value, depth + 1)
        if isinstance(value, functools.partial):
            return {"partial": self.function(value.func, depth + 1), "args": self.value(value.args, depth + 1),
                    "keywords": self.value(value.keywords, depth + 1)}
        if isinstance(value, (types.ModuleType, type)) or (callable(value) and _library(value)):
            qualname = getattr(value, "__qualname__", getattr(value, "__name__", ""))
            return f"{getattr(value, '__module__', '')}.{qualname}"
        if hasattr(value, "__dict__") and not isinstance(value, type):
            # A plain object (a config): its attributes are what the code can read.
            attrs = {k: self.value(v, depth + 1, values) for k, v in sorted(vars(value).items())
                     if not k.startswith("__")}
            return {"object": f"{type(value).__module__}.{type(value).__qualname__}", "attrs": attrs}
        raise Unfingerprintable(f"a {type(value).__name__} object")
