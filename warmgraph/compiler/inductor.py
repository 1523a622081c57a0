"""The inductor backend: ``torch.compile`` per bucket, static shapes, fullgraph.

Each bucket gets its own ``torch.compile`` wrapper, compiled by one call at its exact
shape. After that the graph is sealed: a later call that would make Dynamo compile again
(a guard failed: another dtype, grad mode, a changed Python constant) is counted in
``recompiles`` and logged, never silent, and then allowed to run.

Dynamo keeps compiled code per Python code object, so every bucket of one function shares
one cache with ``recompile_limit`` entries (8 by default). With more buckets than that the
extra ones would quietly run eagerly; the limits are raised as buckets are compiled, as
vllm-gaudi raises ``cache_size_limit`` to the number of its buckets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmgraph.compiler.base import CompiledGraph, torch_fingerprint

log = logging.getLogger("warmgraph")


class InductorGraph:
    """One bucket's ``torch.compile`` wrapper; counts recompiles once sealed."""

    def __init__(self, compiled: Callable[..., Any], label: str) -> None:
        self.compiled = compiled
        self.label = label
        self.recompiles = 0
        self.sealed = False

    def __call__(self, *args: Any) -> Any:
        if not self.sealed:
            return self.compiled(*args)
        import torch

        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                return self.compiled(*args)
        except RuntimeError as exc:
            if "recompile" not in str(exc):
                raise
        self.recompiles += 1
        log.warning(
            "warmgraph: bucket %s recompiled after warmup (a guard failed); "
            "check dtypes, grad mode and inference tensors",
            self.label,
        )
        return self.compiled(*args)


class InductorBackend:
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` per bucket."""

    name = "inductor"
    can_persist = False  # torch's own cache artifacts skip Inductor but not Dynamo tracing
    captures = False

    def __init__(self, mode: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.options = dict(options or {})
        self._compiled = 0

    def compile(self, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        import torch

        self._compiled += 1
        dyn = torch._dynamo.config
        dyn.recompile_limit = max(dyn.recompile_limit, self._compiled + 8)
        dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 8 * (self._compiled + 8))
        kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False}
        if self.mode is not None:
            kwargs["mode"] = self.mode
        if self.options:
            kwargs["options"] = self.options
        graph = InductorGraph(torch.compile(fn, **kwargs), label=_shapes(example_inputs))
        with torch.no_grad():
            graph(*example_inputs)  # compiles now, at warmup, not at the first real call
        graph.sealed = True
        return graph

    def save(self, graph: CompiledGraph, directory: Path) -> list[str]:
        raise NotImplementedError("the inductor backend does not persist graphs; use backend 'aot'")

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        raise NotImplementedError("the inductor backend does not persist graphs; use backend 'aot'")

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "mode": self.mode, "options": self.options, **torch_fingerprint()}


def _shapes(example_inputs: Sequence[Any]) -> str:
    return ",".join(str(tuple(t.shape)) for t in example_inputs if hasattr(t, "shape"))
