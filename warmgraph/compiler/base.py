"""The Backend protocol: compile, save, load, fingerprint.

A backend turns ``fn`` (an ``nn.Module`` or a callable of tensors) and one bucket's example
inputs into a ``CompiledGraph``: a callable taking exactly those input shapes. The runner
owns bucketing, padding and counters; a backend only compiles one fixed shape at a time.

Contract:
  - ``compile(fn, example_inputs)`` returns a graph valid for inputs of exactly these
    shapes, dtypes and devices. Capture backends treat ``example_inputs`` as the static
    buffers the graph reads: the caller must copy later inputs into those same tensors.
  - ``save(graph, directory)`` writes the files that ``load`` needs into an existing,
    empty directory and returns their names; a backend with ``can_persist = False``
    raises ``NotImplementedError``.
  - ``load(directory, fn, example_inputs)`` rebuilds the graph from those files, binding
    ``fn``'s live parameters and buffers (never copies of them).
  - ``fingerprint()`` lists everything about the backend that changes the generated code
    (name, options, torch version); the graph cache puts it in the key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

CompiledGraph = Callable[..., Any]


@runtime_checkable
class Backend(Protocol):
    """What every compiler backend provides."""

    name: str
    can_persist: bool  # save/load work: the graph survives a restart
    captures: bool  # graph capture over static buffers: inputs must be copied into example_inputs

    def compile(self, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph: ...

    def save(self, graph: CompiledGraph, directory: Path) -> list[str]: ...

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph: ...

    def fingerprint(self) -> dict[str, Any]: ...


def torch_fingerprint() -> dict[str, Any]:
    """The parts of the torch installation that change generated code."""
    import torch

    return {"torch": torch.__version__, "debug": bool(torch.version.debug)}


# Inductor settings every compiling backend starts from (a caller's options override them).
# ``cpp.dynamic_threads``: Inductor's C++ (CPU) kernels otherwise bake the compiling process's
# thread count into the code. A graph compiled by a one-thread warmup worker then never uses a
# second core (its kernels have no parallel region at all), and one compiled with two threads
# starts two in a process told to use one, which is what makes OpenMP spin on a shared
# machine. With it, each kernel asks OpenMP for the count at run time, so one cached graph
# follows ``--threads`` wherever it is loaded. Only C++ code generation reads it.
INDUCTOR_DEFAULTS: dict[str, Any] = {"cpp.dynamic_threads": True}
