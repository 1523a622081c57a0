"""vLLM's FX graph (or a piece of it), made exportable at one token count or at all of them.

In mode 2 (DYNAMO_TRACE_ONCE) vLLM hands its backend ``(gm, example_inputs)`` once per
process: every weight is a graph input (``gm`` holds no parameters), the token count enters as
one or more SymInt inputs (one per tensor whose first dim Dynamo marked dynamic: ``input_ids``
and ``positions`` get separate symbols), and the rest are oneDNN handle tensors (0-dim int64,
process-local values) and vLLM's ``LayerName`` objects, which ``layer_names`` turns into
strings written into the graph. ``ExportModule`` wraps ``gm`` so that it takes tensors only:
each SymInt is read back from the dim of the tensor that carries its symbol. That is what
``torch.export`` and the AOTInductor runtime need (it passes tensors, nothing else), and it
makes the static and the dynamic graph take the same arguments.

``VllmGraph`` describes the graph for the cache key (its code and placeholder specs, never
weight values or handle values: its computation, by ``structure``, so that the same piece of
two layers is one key) and makes inputs to compile with for any token count: blank tensors of
the traced specs, strides included (``blank``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch

from warmgraph.errors import WarmgraphError
from warmgraph.integrations.vllm.layer_names import is_layer_name
from warmgraph.integrations.vllm.layer_names import rewrite as rewrite_layer_names


@dataclass(frozen=True)
class Slot:
    """One input of vLLM's graph: a tensor, a SymInt read from ``source`` (tensor index, dim), or a constant."""

    kind: str  # "tensor" | "symint" | "constant"
    tensor_index: int = -1  # position among the tensor inputs (kind "tensor")
    dynamic_dims: tuple[int, ...] = ()  # dims of this tensor that are the token count
    source: tuple[int, int] = (-1, -1)  # kind "symint": (tensor index, dim) that carries the symbol
    value: Any = None  # kind "constant"


def strip_data_attr(gm: torch.fx.GraphModule) -> int:
    """Remove ``torch._C._autograd._get_data_attr`` nodes (``.data`` reads Dynamo records), which
    would leave a fake tensor among the exported constants; uses are pointed at the input."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch._C._autograd._get_data_attr:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    if removed:
        gm.graph.lint()
        gm.recompile()
    return removed


def _symbol(value: Any) -> str | None:
    """The symbol name of a SymInt (or a dim of a fake tensor) that is a plain symbol, else None."""
    if isinstance(value, torch.SymInt):
        expr = value.node.expr
        return str(expr) if getattr(expr, "is_Symbol", False) else None
    return None


class VllmGraph:
    """Slots, fingerprint factors and example inputs of one vLLM graph (``gm`` is edited in place)."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        strip_data_attr(gm)
        self.twinned_ops = rewrite_layer_names(gm, list(example_inputs))
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise WarmgraphError(f"vLLM's graph has {len(placeholders)} inputs but {len(example_inputs)} example "
                                 "inputs; this vLLM version is not supported by warmgraph's backend")
        metas = [p.meta.get("example_value", ex) for p, ex in zip(placeholders, example_inputs)]
        # Where each symbol lives: the first tensor dim that is exactly that symbol.
        where: dict[str, tuple[int, int]] = {}
        tensor_index = 0
        for meta in metas:
            if isinstance(meta, torch.Tensor):
                for dim, size in enumerate(meta.shape):
                    name = _symbol(size)
                    if name is not None:
                        where.setdefault(name, (tensor_index, dim))
                tensor_index += 1
        slots: list[Slot] = []
        tensor_index = 0
        for meta, example in zip(metas, example_inputs):
            if isinstance(meta, torch.Tensor):
                dims = tuple(d for d, s in enumerate(meta.shape) if _symbol(s) is not None)
                if any(isinstance(s, torch.SymInt) and _symbol(s) is None for s in meta.shape):
                    raise WarmgraphError(f"an input of vLLM's graph has a shape expression {tuple(meta.shape)}; "
                                         "warmgraph's backend supports plain token-count dims only")
                slots.append(Slot("tensor", tensor_index=tensor_index, dynamic_dims=dims))
                tensor_index += 1
            elif isinstance(meta, torch.SymInt) or isinstance(example, torch.SymInt):
                name = _symbol(meta)
                if name is None or name not in where:
                    raise WarmgraphError(f"vLLM's graph takes a size {meta} that no tensor input carries; "
                                         "warmgraph's backend cannot read it back from a tensor")
                slots.append(Slot("symint", source=where[name]))
            elif is_layer_name(example):  # no longer read by the graph (layer_names.rewrite)
                slots.append(Slot("constant", value=example.value))
            else:
                slots.append(Slot("constant", value=example))
        if not any(s.dynamic_dims for s in slots):
            raise WarmgraphError("vLLM's graph has no dynamic token dimension; warmgraph's backend needs one")
        self.slots = slots
        self.factors = _factors(gm, slots, [m for m in metas if isinstance(m, torch.Tensor)])

    @classmethod
    def restore(cls, gm: torch.fx.GraphModule, slots: list[Slot], factors: dict[str, Any],
                twinned_ops: list[str]) -> VllmGraph:
        """A graph rebuilt from a serialized one (its slots and factors as they were computed)."""
        graph = cls.__new__(cls)
        graph.gm, graph.slots, graph.factors, graph.twinned_ops = gm, slots, factors, twinned_ops
        return graph

    # -- calls -------------------------------------------------------------------------------

    def tokens(self, args: Sequence[Any]) -> int:
        """The token count of a call (the first SymInt argument, or the first dynamic dim)."""
        for slot, arg in zip(self.slots, args):
            if slot.kind == "symint":
                return int(arg)
        slot = next(s for s in self.slots if s.dynamic_dims)
        return int(self.tensors(args)[slot.tensor_index].shape[slot.dynamic_dims[0]])

    def tensors(self, args: Sequence[Any]) -> list[torch.Tensor]:
        return [a for s, a in zip(self.slots, args) if s.kind == "tensor"]

    def blank(self, tokens: int) -> list[torch.Tensor]:
        """Uninitialised tensor inputs for ``tokens`` tokens, with the shapes, strides, dtypes and
        devices of the traced ones: all compiling needs (nothing runs the graph on them, and
        ``torch.empty`` only reserves memory)."""
        out = []
        for spec in self.factors["inputs"]:
            shape = [tokens if s == "T" else s for s in spec["shape"]]
            stride = [_at(s, tokens) for s in spec["stride"]]
            device = torch.device(spec["device"])
            out.append(torch.empty_strided(shape, stride, dtype=getattr(torch, spec["dtype"].split(".")[-1]),
                                           device=device))
        return out

    def module(self, dynamic: bool, max_tokens: int, min_tokens: int = 1) -> ExportModule:
        return ExportModule(self, dynamic, max_tokens, min_tokens)


def _factors(gm: torch.fx.GraphModule, slots: list[Slot], metas: list[torch.Tensor]) -> dict[str, Any]:
    """The graph's code and input layout: equal in every process that traces the same model."""
    specs = []
    for slot, meta in zip([s for s in slots if s.kind == "tensor"], metas):
        shape = ["T" if d in slot.dynamic_dims else int(s) for d, s in enumerate(meta.shape)]
        specs.append({"shape": shape, "stride": [_in_tokens(s) for s in meta.stride()], "dtype": str(meta.dtype),
                      "device": meta.device.type})
    constants = [repr(s.value) for s in slots if s.kind == "constant"]
    code = hashlib.sha256(structure(gm).encode()).hexdigest()
    return {"name": "vllm-model", "code": code, "inputs": specs, "constants": constants,
            "layout": [s.kind for s in slots]}


def _in_tokens(value: Any) -> int | str:
    """A size or stride as an int, or as an expression in T, the token count (every symbol in
    vLLM's graph is the token count: ``VllmGraph`` refuses any other)."""
    if not isinstance(value, torch.SymInt):
        return int(value)
    expr = value.node.expr
    return str(expr.subs({symbol: sympy.Symbol("T") for symbol in expr.free_symbols}))


def _at(value: int | str, tokens: int) -> int:
    return value if isinstance(value, int) else int(sympy.sympify(value).subs("T", tokens))


def structure(gm: torch.fx.GraphModule) -> str:
    """The graph's computation with every name left out: node kinds, targets, constants, and
    which earlier node each argument is. Two graphs that compute the same thing from inputs of
    the same specs get one text, whatever Dynamo named their nodes: vLLM's pieces for layers
    1..n-1 of a model do, so they share one cache key and are compiled once."""
    index: dict[torch.fx.Node, int] = {}
    lines = []

    def ref(arg: Any) -> Any:
        return f"%{index[arg]}" if isinstance(arg, torch.fx.Node) else arg

    for i, node in enumerate(gm.graph.nodes):
        index[node] = i
        target = node.target if isinstance(node.target, str) else torch.fx.node._get_qualified_name(node.target)
        if node.op == "placeholder":
            target = "input"
        elif node.op == "get_attr":  # a constant held by the graph: its value is part of the computation
            value = getattr(gm, node.target)
            if isinstance(value, torch.Tensor):
                data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                target = f"{tuple(value.shape)} {value.dtype} {hashlib.sha256(data).hexdigest()}"
        args = torch.fx.node.map_aggregate(node.args, ref)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, ref)
        lines.append(f"{node.op} {target} {args!r} {kwargs!r}")
    return "\n".join(lines)


class ExportModule(torch.nn.Module):
    """``gm`` taking tensors only; ``export_dynamic_shapes`` marks the token dims when ``dynamic``."""

    def __init__(self, graph: VllmGraph, dynamic: bool, max_tokens: int, min_tokens: int = 1) -> None:
        super().__init__()
        self.gm = graph.gm
        self._slots = graph.slots
        self.export_dynamic_shapes = None
        if dynamic:
            # One Dim for every token-count dim: they are the same number in every call vLLM makes.
            # From 1: vLLM's graph does not branch on a one-token batch, so export keeps it symbolic.
            tokens = torch.export.Dim("tokens", min=min_tokens, max=max(max_tokens, min_tokens + 1))
            # forward takes *tensors: export sees one argument, the tuple of them
            self.export_dynamic_shapes = (tuple(
                {d: tokens for d in s.dynamic_dims} or None for s in graph.slots if s.kind == "tensor"),)

    def forward(self, *tensors: torch.Tensor) -> Any:
        args: list[Any] = []
        for slot in self._slots:
            if slot.kind == "tensor":
                args.append(tensors[slot.tensor_index])
            elif slot.kind == "symint":
                index, dim = slot.source
                args.append(tensors[index].shape[dim])
            else:
                args.append(slot.value)
        return self.gm(*args)
