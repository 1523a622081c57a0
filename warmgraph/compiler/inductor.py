"""The inductor backend: ``torch.compile`` per bucket, static shapes, fullgraph.

Each bucket gets its own entry point: a small function whose code object is distinct per
bucket, so Dynamo keeps one compiled-code cache per bucket. No bucket can push another out,
and nothing has to raise Dynamo's process-wide ``recompile_limit`` (which vLLM and other
libraries in the same process rely on): this backend changes no global setting.

Inductor is reached through a backend function of our own that counts its calls. Dynamo
calls it once per (re)compile, so a recompile after warmup (a guard failed: another dtype,
grad mode, a changed Python constant) is a number we own, ``recompiles``, not a message to
search for. It is logged once per graph and then allowed to run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmgraph.compiler.base import INDUCTOR_DEFAULTS, CompiledGraph, torch_fingerprint

log = logging.getLogger("warmgraph")


class InductorGraph:
    """One bucket's compiled entry point; ``recompiles`` counts compiles after the first.

    After Dynamo's per-function recompile limit (8) the bucket runs ``fn`` eagerly, logged
    once: Dynamo would otherwise raise on every later call of a fullgraph function.
    """

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        self.fn = fn
        self.label = label
        self.compiles = 0  # Inductor invocations by Dynamo for this bucket
        self.recompiles = 0
        self.eager = False  # gave up compiling after the recompile limit
        self.compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        assert self.compiled is not None
        if self.eager:
            return self.fn(*args)
        before = self.compiles
        try:
            out = self.compiled(*args)
        except Exception as exc:
            from torch._dynamo.exc import FailOnRecompileLimitHit

            if not isinstance(exc, FailOnRecompileLimitHit):
                raise
            self.eager = True
            log.warning("warmgraph: bucket %s hit Dynamo's recompile limit after %d recompiles; running it eagerly "
                        "from now on (a Python value the function reads keeps changing)", self.label, self.recompiles)
            return self.fn(*args)
        if self.compiles != before and before > 0:
            self.recompiles += self.compiles - before
            if self.recompiles == self.compiles - before:  # the first time only
                log.warning("warmgraph: bucket %s recompiled after warmup (a guard failed); check dtypes, grad mode "
                            "and Python values the function reads", self.label)
        return out


def _entry_point(fn: Callable[..., Any], index: int) -> Callable[..., Any]:
    """``fn`` behind a function whose code object is new, so Dynamo caches it on its own."""

    def entry(*args: Any) -> Any:
        return fn(*args)

    entry.__code__ = entry.__code__.replace(co_name=f"warmgraph_bucket_{index}")
    return entry


class InductorBackend:
    """``torch.compile(..., fullgraph=True, dynamic=False)`` per bucket, through a counting backend;
    ``options`` go to Inductor over ``INDUCTOR_DEFAULTS``."""

    name = "inductor"
    can_persist = False  # torch's own cache artifacts skip Inductor but not Dynamo tracing
    captures = False

    def __init__(self, mode: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.options = {**INDUCTOR_DEFAULTS, **(options or {})}
        self._count = 0

    def _config_patches(self) -> dict[str, Any]:
        import torch

        patches = dict(torch._inductor.list_mode_options(self.mode, dynamic=False)) if self.mode else {}
        return {**patches, **self.options}

    def compile(self, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        import torch
        from torch._inductor.compile_fx import compile_fx

        self._count += 1
        graph = InductorGraph(fn, label=_shapes(example_inputs))
        patches = self._config_patches() or None

        def backend(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
            graph.compiles += 1
            return compile_fx(gm, inputs, config_patches=patches)

        graph.compiled = torch.compile(_entry_point(fn, self._count), backend=backend, fullgraph=True, dynamic=False)
        with torch.no_grad():
            graph(*example_inputs)  # compiles now, at warmup, not at the first real call
        return graph

    def save(self, graph: CompiledGraph, directory: Path) -> list[str]:
        raise NotImplementedError("the inductor backend does not persist graphs; use backend 'aot'")

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        raise NotImplementedError("the inductor backend does not persist graphs; use backend 'aot'")

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "mode": self.mode, "options": self.options, **torch_fingerprint()}


def _shapes(example_inputs: Sequence[Any]) -> str:
    return ",".join(str(tuple(t.shape)) for t in example_inputs if hasattr(t, "shape"))
