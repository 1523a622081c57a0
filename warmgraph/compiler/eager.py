"""The eager backend: the function as it is. The reference every other backend is tested against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmgraph.compiler.base import CompiledGraph, torch_fingerprint


class EagerBackend:
    """Runs ``fn`` unchanged; nothing to compile and nothing to persist."""

    name = "eager"
    can_persist = False
    captures = False

    def compile(self, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        return fn

    def save(self, graph: CompiledGraph, directory: Path) -> list[str]:
        raise NotImplementedError("the eager backend compiles nothing, so there is nothing to save")

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        raise NotImplementedError("the eager backend compiles nothing, so there is nothing to load")

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, **torch_fingerprint()}
