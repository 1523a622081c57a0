"""What a graph is: code, structure, input specs and what it closes over; never the weights it binds.

A graph cache entry may serve a later process only if that process would compile the same
graph. So the fingerprint covers everything that ends up in the generated code:

  - an ``nn.Module``: the source of every module class in the tree, each module's plain
    attributes (eps, sizes, the training flag), and the names, shapes and dtypes of its
    parameters, buffers and plain tensor attributes. Not their values: backends bind a
    module's tensors by name at load (``aot`` keeps references, not copies), so a fine-tune
    of the same architecture reuses the entries.
  - any other callable: its code (nested functions included) and everything it reads that
    is not an argument: closure cells and module globals. A tensor or module reached that
    way has no owner to bind it from, so ``aot`` bakes it into the package; its *values*
    are therefore hashed. When that would mean hashing more than ``MAX_HASHED_BYTES``, or
    the callable reads an object whose meaning cannot be fingerprinted, the result says the
    graph must not be persisted, and why.
  - the input specs at this bucket (shape, dtype, device type, or the value of a non-tensor).

``device_factors`` describes the device a graph is compiled for. Nothing here knows about
the cache; ``graph_cache.key`` turns these dicts into a key.
"""

from __future__ import annotations

import hashlib
import inspect
import platform
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Hashing a closed-over tensor costs about 1 s per GB; beyond this a graph is not persisted.
MAX_HASHED_BYTES = 256 * 2**20
_MAX_DEPTH = 4  # how deep closures of closures (and object attributes) are followed


@dataclass(frozen=True)
class Fingerprint:
    """A graph's identity as JSON-able factors, and whether it may be persisted (else why not)."""

    factors: dict[str, Any]
    persistable: bool = True
    reason: str | None = None


class _Unfingerprintable(Exception):
    """Raised inside the walk when something the graph reads cannot be described."""


def input_specs(example_inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Shape, dtype and device type of each tensor argument; the value of any other argument."""
    return [_tensor_spec(a) if isinstance(a, torch.Tensor) else {"value": repr(a)} for a in example_inputs]


def fingerprint(fn: Callable[..., Any], example_inputs: Sequence[Any] = ()) -> Fingerprint:
    """The fingerprint of ``fn`` called with ``example_inputs`` (see the module docstring)."""
    inputs = input_specs(example_inputs)
    if isinstance(fn, torch.nn.Module):
        return Fingerprint({**_module_factors(fn, values=False), "inputs": inputs})
    walker = _Walker()
    try:
        factors = walker.function(fn, 0)
    except _Unfingerprintable as exc:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        return Fingerprint({"name": name, "inputs": inputs}, False,
                           f"{name} reads {exc}, which warmgraph cannot fingerprint; such graphs are compiled but "
                           "not cached (pass an nn.Module, or pass that value as an argument)")
    if walker.hashed_bytes > MAX_HASHED_BYTES:
        name = factors["name"]
        mb = walker.hashed_bytes / 2**20
        return Fingerprint({"name": name, "inputs": inputs}, False,
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


# -- modules --------------------------------------------------------------------------------


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


def _module_factors(module: torch.nn.Module, values: bool) -> dict[str, Any]:
    """Classes' source, plain attributes and tensor specs (with value hashes when ``values``)."""
    classes = sorted({type(m) for m in module.modules()}, key=str)
    modules = {}
    tensors: dict[str, Any] = {}
    for name, m in module.named_modules():
        attrs, plain_tensors = {}, {}
        for key, v in sorted(vars(m).items()):
            if key.startswith("_"):
                continue
            if isinstance(v, torch.Tensor):  # a plain tensor attribute: export lifts it as a constant
                plain_tensors[key] = v
            elif (p := _plain(v)) is not None:
                attrs[key] = p
        modules[name or "<root>"] = {"class": f"{type(m).__module__}.{type(m).__qualname__}", "attrs": attrs}
        for key, t in plain_tensors.items():
            tensors[f"{name}.{key}" if name else key] = t
    tensors.update(dict(module.named_parameters()))
    tensors.update(dict(module.named_buffers()))
    specs = {}
    for name, t in sorted(tensors.items()):
        spec = _tensor_spec(t)
        if values:
            spec["sha256"] = _tensor_value(t)
        specs[name] = spec
    return {
        "name": type(module).__qualname__,
        "code": {f"{c.__module__}.{c.__qualname__}": _source_digest(c) for c in classes},
        "modules": modules,
        "tensors": specs,
    }


# -- callables ------------------------------------------------------------------------------


class _Walker:
    """Fingerprints a callable and what it reads, hashing tensor values on the way."""

    def __init__(self) -> None:
        self.hashed_bytes = 0

    def function(self, fn: Callable[..., Any], depth: int) -> dict[str, Any]:
        target = getattr(fn, "__wrapped__", fn)
        if isinstance(target, types.MethodType):  # a bound method reads its instance
            return {"method": self.function(target.__func__, depth + 1), "self": self.value(target.__self__, depth)}
        code = getattr(target, "__code__", None)
        if code is None:
            if callable(target) and not isinstance(target, type) and hasattr(target, "__call__"):  # noqa: B004
                call = type(target).__call__
                if isinstance(call, types.FunctionType):  # an object with __call__: its method and its state
                    return {"name": type(target).__qualname__, "call": self.function(call, depth + 1),
                            "self": self.value(target, depth)}
            raise _Unfingerprintable(f"the callable {target!r} (no Python code)")
        closure = {}
        for var, cell in zip(code.co_freevars, getattr(target, "__closure__", None) or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name bound later): nothing read yet
                continue
            closure[var] = self.value(contents, depth + 1)
        module_globals = getattr(target, "__globals__", {})
        globals_read = {}
        for n in code.co_names:
            if n in module_globals and (v := self._global(module_globals[n], depth)) is not None:
                globals_read[n] = v
        return {
            "name": getattr(target, "__qualname__", type(target).__name__),
            "code": _code_digest(code),
            "closure": closure,
            "globals": globals_read,
        }

    def _global(self, value: Any, depth: int) -> Any:
        """A global the code reads, when it is data or our own code: scalars, tensors, modules,
        functions, and containers of them. Library modules, classes and other objects (a logger,
        a lock) are part of the installation or not part of the graph, so they are left out."""
        if isinstance(value, types.FunctionType):
            return None if value.__module__.split(".")[0] in ("torch", "builtins") else self.function(value, depth + 1)
        if isinstance(value, (torch.Tensor, torch.nn.Module, tuple, list, dict)) or _plain(value) is not None:
            try:
                return self.value(value, depth + 1)
            except _Unfingerprintable:
                return None
        return None

    def value(self, value: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Unfingerprintable(f"a value nested more than {_MAX_DEPTH} levels deep ({type(value).__name__})")
        if (p := _plain(value)) is not None or value is None:
            return p
        if isinstance(value, torch.Tensor):
            self.hashed_bytes += value.numel() * value.element_size()
            if self.hashed_bytes > MAX_HASHED_BYTES:
                return _tensor_spec(value)  # the caller reports the total; hashing more is wasted time
            return {**_tensor_spec(value), "sha256": _tensor_value(value)}
        if isinstance(value, torch.nn.Module):
            size = sum(t.numel() * t.element_size() for t in [*value.parameters(), *value.buffers()])
            self.hashed_bytes += size
            return _module_factors(value, values=self.hashed_bytes <= MAX_HASHED_BYTES)
        if isinstance(value, (torch.dtype, torch.device)):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [self.value(v, depth + 1) for v in value]
        if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
            return {str(k): self.value(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
        if isinstance(value, (types.FunctionType, types.MethodType)) or hasattr(value, "__code__"):
            return self.function(value, depth + 1)
        if hasattr(value, "__dict__") and not isinstance(value, type):
            # A plain object (a config): its attributes are what the code can read.
            attrs = {k: self.value(v, depth + 1) for k, v in sorted(vars(value).items()) if not k.startswith("__")}
            return {"object": f"{type(value).__module__}.{type(value).__qualname__}", "attrs": attrs}
        raise _Unfingerprintable(f"a {type(value).__name__} object")
