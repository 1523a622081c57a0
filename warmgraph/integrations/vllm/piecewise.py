"""Mode 3 (VLLM_COMPILE, piecewise): warmgraph as vLLM's ``CompilerInterface``.

In mode 3 vLLM splits its graph at the attention ops and compiles every piece for every compile
range (and every size in ``compile_sizes``) through the compiler its platform names
(``get_compile_backend()``). ``WARMGRAPH_VLLM=piecewise`` makes the plugin name this one. Each
piece is built like the mode-2 graph (``VllmGraph``: LayerName ops twinned, SymInts read from
tensor dims) into an AOTInductor graph through ``GraphBuilder`` and warmgraph's graph cache: a
range ``(a, b)`` gives a dynamic graph for ``a..b`` tokens, a size ``(n, n)`` a static one. The
handle vLLM stores is ``("warmgraph", key hash)``; ``load`` rebuilds the key from the piece and
loads it. vLLM's own caches keep only handles; with ``VLLM_USE_MEGA_AOT_ARTIFACT=1`` (its
default with torch >= 2.12) vLLM instead bundles Inductor artifacts, which this compiler has
none of, so the plugin sets it to 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import torch
from vllm.compilation.compiler_interface import CompilerInterface

from warmgraph._version import __version__
from warmgraph.compiler.aot import AOTBackend
from warmgraph.compiler.fingerprint import Fingerprint
from warmgraph.graph_cache.store import GraphCache
from warmgraph.integrations.vllm import CPU_INDUCTOR_CONFIGS, INDUCTOR_CONFIGS
from warmgraph.integrations.vllm.function import _emit, vllm_factors
from warmgraph.integrations.vllm.graph import VllmGraph
from warmgraph.runtime.builder import GraphBuilder
from warmgraph.runtime.counters import Counters

log = logging.getLogger("vllm.warmgraph")
HANDLE_TAG = "warmgraph"
COUNTERS = Counters()  # every piece of this process (tests read them)
COUNTERS["dynamic_calls"] = 0  # piece calls served by a range's graph; "replays" counts a size's


class WarmgraphCompiler(CompilerInterface):
    """vLLM's ``CompilerInterface`` over warmgraph's builder and graph cache."""

    name = "warmgraph"

    def __init__(self) -> None:
        self.cache: GraphCache | None = GraphCache()
        self.built = 0  # pieces built or loaded by this compiler, reported as they finish

    def compute_hash(self, vllm_config: Any) -> str:
        text = json.dumps({"warmgraph": __version__, "inductor": CPU_INDUCTOR_CONFIGS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def initialize_cache(self, cache_dir: str, disable_cache: bool = False, prefix: str = "") -> None:
        # vLLM's cache directory holds only handles; the graphs live in warmgraph's cache
        self.cache = None if disable_cache else GraphCache()

    def compile(self, graph: torch.fx.GraphModule, example_inputs: list[Any], compiler_config: dict[str, Any],
                compile_range: Any, key: str | None = None) -> tuple[Callable[..., Any], tuple[str, str]]:
        return self._build(graph, example_inputs, compile_range)

    def load(self, handle: Any, graph: torch.fx.GraphModule, example_inputs: list[Any], graph_index: int,
             compile_range: Any) -> Callable[..., Any]:
        if not (isinstance(handle, (tuple, list)) and len(handle) == 2 and handle[0] == HANDLE_TAG):
            raise ValueError(f"{handle!r} is not a warmgraph handle")
        fn, (_, key) = self._build(graph, example_inputs, compile_range)
        if key != handle[1]:  # the piece is not the one compiled then: what was built is right for now
            COUNTERS["recompiles"] += 1
        return fn

    def _build(self, graph: torch.fx.GraphModule, example_inputs: list[Any],
               compile_range: Any) -> tuple[Callable[..., Any], tuple[str, str]]:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        start, end = int(compile_range.start), int(compile_range.end)
        vg = VllmGraph(graph, example_inputs)  # from vLLM's fake inputs: they carry the token symbols
        dynamic = start != end
        # vLLM compiles pieces inside Dynamo's trace: without leaving its TracingContext, export
        # would reuse that trace's (frozen) ShapeEnv and drop the token-dim equalities it derives
        with unset_fake_temporarily(), torch._guards.tracing(None):
            example = vg.blank(end)  # blank tensors of the traced specs: all compiling needs
            on_cpu = all(t.device.type == "cpu" for t in example)
            factors = {**vg.factors, **vllm_factors(), "dynamic": dynamic, "piecewise": True}
            backend = AOTBackend(CPU_INDUCTOR_CONFIGS if on_cpu else INDUCTOR_CONFIGS)
            builder = GraphBuilder(vg.module(dynamic, end, start), backend, self.cache, COUNTERS,
                                   fingerprint=Fingerprint(factors))
            bucket = (start, end) if dynamic else (start,)
            with torch.no_grad():
                result = builder.build(bucket, example)
            key = builder.key(bucket, example)
        compiled = result.graph
        self.built += 1
        _emit({"event": "piece", "done": self.built, "bucket": list(bucket), "source": result.source,
               "seconds": round(result.seconds, 3), "bytes": result.graph_bytes, "counters": dict(COUNTERS)})
        counter = "dynamic_calls" if dynamic else "replays"
        log.debug("warmgraph: piece for %s tokens from %s (key %s)", compile_range, result.source,
                  key.hash[:12] if key is not None else "-")

        def run(*args: Any) -> Any:
            COUNTERS[counter] += 1
            return compiled(*vg.tensors(args))

        return run, (HANDLE_TAG, key.hash if key is not None else "")

