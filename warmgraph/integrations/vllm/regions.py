"""vLLM's whole-model graph cut at its attention ops into pieces, identical pieces compiled once.

A model's layers are the same computation with different weights, but vLLM's whole graph holds
every layer once, and compiling it as one piece costs about a layer's compile per layer (30x
for SmolLM2). Cut where vLLM cuts its own piecewise graphs (the attention ops, which run as they
are, between the pieces), the pieces between two attentions are one computation: the same
structure (``graph.structure``) and input specs, so one cache key and one compile, whatever
layer they came from. A 30-layer model has three distinct pieces: before the first attention,
between two, after the last.

The cut is vLLM's own ``split_graph`` (a submodule per piece and per attention op, in the
original order). Each piece is a ``VllmGraph``; ``install`` puts a runner in place of each piece
submodule that runs the graph its owner chose for the current call (a size's, the dynamic one,
or the piece itself eagerly). The attention submodules stay vLLM's: they take vLLM's
``LayerName`` arguments straight from the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from warmgraph.errors import WarmgraphError
from warmgraph.integrations.vllm.graph import VllmGraph, strip_data_attr
from warmgraph.integrations.vllm.profile_run import OutputSpec, output_spec
from warmgraph.integrations.vllm.stream import Linear

EAGER = None  # the choice that runs every piece as vLLM traced it
DYNAMIC = 0  # the choice that runs every piece's dynamic-shape graph; a size n runs n's graph


@dataclass
class Region:
    """One distinct piece computation: its graph, the submodules computing it, its built graphs."""

    graph: VllmGraph
    names: list[str]
    graphs: dict[int, Callable[..., Any]] = field(default_factory=dict)  # per planned size
    dynamic: Callable[..., Any] | None = None
    # The streamed form (``stream``), set by the function when the piece streams: its graph, its
    # products, the sizes whose built graph takes it, and by piece submodule name the recovered
    # weights and the handle inputs they came from.
    streamed: VllmGraph | None = None
    linears: list[Linear] = field(default_factory=list)
    streamed_sizes: set[int] = field(default_factory=set)
    weights: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    handles: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def splitting_ops() -> list[str]:
    """Where vLLM cuts its own piecewise graphs ("namespace::name"): its attention-like ops, and
    the KV-cache updates, whose layer-name argument would otherwise make every layer's piece a
    different graph (vLLM's ``set_splitting_ops_for_v1`` adds them for the same reason)."""
    from vllm.config import CompilationConfig

    return [*CompilationConfig._attention_ops, "vllm::unified_kv_cache_update", "vllm::unified_mla_kv_cache_update"]


def _piece_examples(split_gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> dict[str, list[Any]]:
    """Each piece's example inputs: the call's own object where the piece takes a graph input as
    it is (a ``LayerName`` is only fake in the metadata), else the traced value in the metadata."""
    top = {n: ex for n, ex in zip([n for n in split_gm.graph.nodes if n.op == "placeholder"], example_inputs)}
    examples = {}
    for node in split_gm.graph.nodes:
        if node.op == "call_module":
            piece = split_gm._modules[node.target]
            inner = [p.meta.get("example_value") for p in piece.graph.nodes if p.op == "placeholder"]
            examples[node.target] = [top.get(a, meta) for a, meta in zip(node.args, inner)]
    return examples


def token_source(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> tuple[int, int]:
    """Where a call of ``gm`` carries its token count: (argument index, dim), dim -1 for a SymInt argument."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    metas = [p.meta.get("example_value", ex) for p, ex in zip(placeholders, example_inputs)]
    for i, (meta, example) in enumerate(zip(metas, example_inputs)):
        if isinstance(meta, torch.SymInt) or isinstance(example, torch.SymInt):
            return i, -1
    for i, meta in enumerate(metas):
        if isinstance(meta, torch.Tensor):
            for dim, size in enumerate(meta.shape):
                if isinstance(size, torch.SymInt):
                    return i, dim
    raise WarmgraphError("vLLM's graph has no dynamic token dimension; warmgraph's backend needs one")


class Regions:
    """vLLM's graph as pieces: ``split_gm`` runs them in order; ``regions`` are the distinct ones."""

    def __init__(self, split_gm: torch.fx.GraphModule, regions: list[Region], source: tuple[int, int],
                 outputs: OutputSpec | None = None) -> None:
        self.split_gm = split_gm
        self.regions = regions
        self.source = source
        self.outputs = outputs  # the whole graph's outputs (``profile_run``), when they can be described
        self.choice: int | None = EAGER
        self.stale_weights = 0  # streamed calls whose handles were not those the weights came from

    @classmethod
    def split(cls, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], cut: bool = True) -> Regions:
        """Cut ``gm`` (a graph vLLM handed its mode-2 backend, metadata intact) at vLLM's attention
        ops; with ``cut`` False it stays one piece (the whole graph)."""
        from vllm.compilation.backends import split_graph

        strip_data_attr(gm)
        source = token_source(gm, example_inputs)
        outputs = output_spec(gm, example_inputs, source)
        split_gm, items = split_graph(gm, splitting_ops() if cut else [])
        examples = _piece_examples(split_gm, example_inputs)
        regions: dict[str, Region] = {}  # by the piece's structure and specs
        for item in items:
            if item.is_splitting_graph:
                continue
            graph = VllmGraph(item.graph, examples[item.submod_name])
            identity = repr(sorted(graph.factors.items()))
            if identity in regions:
                regions[identity].names.append(item.submod_name)
            else:
                regions[identity] = Region(graph, [item.submod_name])
        return cls(split_gm, list(regions.values()), source, outputs)

    def tokens(self, args: Sequence[Any]) -> int:
        """The token count of a call of the whole graph."""
        index, dim = self.source
        return int(args[index]) if dim < 0 else int(args[index].shape[dim])

    def install(self) -> None:
        """Put a runner in place of every piece submodule (an instance attribute shadows the
        submodule for ``split_gm``'s generated code, which reads ``self.<name>``)."""
        for region in self.regions:
            for name in region.names:
                self.split_gm.__dict__[name] = self._runner(region, self.split_gm._modules[name], name)

    def piece_inputs(self, args: Sequence[Any], name: str) -> list[Any]:
        """The inputs piece ``name`` receives when the whole graph is called with ``args``, where
        they are the call's own (None for values the pieces compute)."""
        top = {n: a for n, a in zip([n for n in self.split_gm.graph.nodes if n.op == "placeholder"], args)}
        node = next(n for n in self.split_gm.graph.nodes if n.op == "call_module" and n.target == name)
        return [top.get(a) if isinstance(a, torch.fx.Node) else a for a in node.args]

    def _runner(self, region: Region, piece: torch.fx.GraphModule, name: str) -> Callable[..., Any]:
        graph = region.graph

        def run(*args: Any) -> Any:
            choice = self.choice
            if choice is EAGER:
                return piece(*args)
            if choice == DYNAMIC:
                return region.dynamic(*graph.tensors(args))
            if choice in region.streamed_sizes:
                handles = region.handles[name]
                if all(args[lin.handle_input] is h for lin, h in zip(region.linears, handles)):
                    return region.graphs[choice](*graph.tensors(args), *region.weights[name])
                # vLLM made new handles (it reloaded its weights): the copies are stale
                self.stale_weights += 1
                return region.dynamic(*graph.tensors(args))
            return region.graphs[choice](*graph.tensors(args))

        return run

    def __call__(self, *args: Any) -> Any:
        return self.split_gm(*args)
