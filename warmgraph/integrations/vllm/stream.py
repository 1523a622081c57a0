"""One-token calls with their weights streamed, instead of through vLLM's oneDNN GEMM.

On a CPU, vLLM runs every unquantized linear layer through its own op, ``_C.onednn_mm``, with
the weight prepacked into a oneDNN handle, and it frees the layer's own weight. For one row
that GEMM reads the weights slower than the memory allows: over SmolLM2-135M's 120 layer
matrices (fp32, two threads, the 2-core AVX2 machine, medians of 15 calls) oneDNN took 22.3 ms
and the same products written as a multiply and a sum over ``in`` 14.4 ms: Inductor generates
that as one vectorised loop that reads each weight once. In vLLM's graph, a decode step at
batch 1 went from 26.9 to 30.8 tok/s (1.15x; 6 interleaved rounds in one engine, each
1.13-1.16x; tokens unchanged).

Only one-token calls take this form. With more rows the loop reads each weight row once for
all rows only if it runs over (out, rows), and then the next product reads its input
transposed: Inductor vectorised over the rows instead of ``in``, and a dynamic-shape graph for
1-16 tokens ran decode at 0.23x (batch 1) and 0.35x (batch 8) of oneDNN's speed, a static
8-token graph at 0.35x. So with streaming on (``WARMGRAPH_VLLM_STREAM``, the default on a
CPU) size 1 is planned, and its graph is each piece's streamed form (``streamed``): each
``_C.onednn_mm`` called as vLLM's wrapper calls it (a fresh (rows, out) output only it
writes, a 2-D input, the handle an input of the piece) becomes ``streamed_mm`` over a weight
input appended to the piece's inputs; any other call stays as it is.

The weights come from ``weights``: recovered from vLLM's handles exactly, once, then kept in
warmgraph's graph cache. A layer's weights are tied to the handle objects they came from: a
call with other handles (vLLM reloaded its weights) runs the dynamic graph instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from warmgraph.integrations.vllm.graph import Slot, VllmGraph, structure


def streamed_mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for an ``x`` of shape (rows, in), as a multiply and a sum over
    ``in`` accumulated in float32 (as oneDNN accumulates), cast back to ``x``'s dtype, row-major
    as the tensor vLLM's op writes (its consumers, vLLM's attention among them, check strides)."""
    out = (x.float().unsqueeze(1) * weight.float().unsqueeze(0)).sum(-1)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@dataclass(frozen=True)
class Linear:
    """One ``onednn_mm`` of a piece: its handle's input position and the weight's shape and dtype."""

    handle_input: int  # position among the piece's inputs (placeholders)
    out_features: int
    in_features: int
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.out_features * self.in_features * self.dtype.itemsize


def _is_onednn_mm(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return False
    packet = getattr(node.target, "overloadpacket", node.target)  # Dynamo records the packet, export the overload
    return getattr(packet, "_qualified_op_name", None) == "_C::onednn_mm"


def _linear(node: torch.fx.Node, placeholders: list[torch.fx.Node], order: dict[torch.fx.Node, int]) -> Linear | None:
    """The ``Linear`` of an ``_C.onednn_mm(out, x, bias, handle)`` node that the rewrite can
    take: its handle a piece input, its output a ``torch.empty`` of (rows, out) that nothing
    reads or writes before it and no other op writes after it, its ``x`` reshaped to (-1, in)."""
    if len(node.args) != 4 or node.kwargs:
        return None
    out, x, _bias, handle = node.args
    if handle not in placeholders or not isinstance(out, torch.fx.Node) or out.target is not torch.empty:
        return None
    size = out.args[0] if len(out.args) == 1 else out.args
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not isinstance(size[-1], int):
        return None
    if not (isinstance(x, torch.fx.Node) and x.op == "call_method" and x.target == "reshape"
            and len(x.args) == 3 and x.args[1] == -1 and isinstance(x.args[2], int)):
        return None
    dtype = out.kwargs.get("dtype", torch.get_default_dtype())
    if not isinstance(dtype, torch.dtype):
        return None
    if any(order[user] < order[node] or _is_onednn_mm(user) for user in out.users if user is not node):
        return None
    return Linear(placeholders.index(handle), int(size[-1]), int(x.args[2]), dtype)


def rewrite(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[Linear]] | None:
    """A copy of ``gm`` with each takeable ``onednn_mm`` replaced by ``streamed_mm`` over a new
    input appended after the others (in the order of the returned ``Linear``s); None when
    there is none. Works from the graph's code alone (no metadata), so a piece restored from
    vLLM's artifact is rewritten to the same graph."""
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))  # the output node first: the surgery updates it too
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    order = {n: i for i, n in enumerate(graph.nodes)}
    taken = [(n, _linear(n, placeholders, order)) for n in graph.nodes if _is_onednn_mm(n)]
    linears = [(n, lin) for n, lin in taken if lin is not None]
    if not linears:
        return None
    weights: list[torch.fx.Node] = []
    anchor = placeholders[-1]
    for i in range(len(linears)):
        with graph.inserting_after(anchor):
            anchor = graph.placeholder(f"warmgraph_weight_{i}")
        weights.append(anchor)
    for (node, _), weight in zip(linears, weights):
        out, x, bias, _handle = node.args
        with graph.inserting_after(node):
            streamed = graph.call_function(streamed_mm, (x, weight, bias))
        out.replace_all_uses_with(streamed, delete_user_cb=lambda user, node=node: user is not node)
        graph.erase_node(node)
        if not out.users:
            graph.erase_node(out)
    graph.lint()
    return torch.fx.GraphModule(gm, graph), [lin for _, lin in linears]


def streamed(graph: VllmGraph) -> tuple[VllmGraph, list[Linear]] | None:
    """``graph``'s streamed form (see the module docstring): its slots and factors are the
    original's plus one tensor per weight; None when the graph has no ``onednn_mm`` to take."""
    result = rewrite(graph.gm)
    if result is None:
        return None
    gm, linears = result
    tensors = sum(1 for s in graph.slots if s.kind == "tensor")
    slots = [*graph.slots, *(Slot("tensor", tensor_index=tensors + i) for i in range(len(linears)))]
    specs = [{"shape": [lin.out_features, lin.in_features], "stride": [lin.in_features, 1],
              "dtype": str(lin.dtype), "device": "cpu"} for lin in linears]
    factors = {**graph.factors, "inputs": [*graph.factors["inputs"], *specs],
               "layout": [*graph.factors["layout"], *(["tensor"] * len(linears))],
               "code": hashlib.sha256(structure(gm).encode()).hexdigest(), "streamed": True}
    return VllmGraph.restore(gm, slots, factors, graph.twinned_ops), linears
