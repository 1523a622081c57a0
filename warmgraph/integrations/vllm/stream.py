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

The weights come back from the handles (``recover``): the handle's product with an identity
matrix is the weight transposed, exactly (each output is one weight times 1.0 plus zeros).
That costs a GEMM of ``in`` rows per matrix at every start (1.4-1.9 s for SmolLM2 on 2
cores; it grows as ``in`` times the parameters, so a 1B model would take a minute) and one more
copy of the layer weights in memory (vLLM keeps its packed ones for the other counts). So it
is skipped, with a warning, when the copy would take more than a quarter of the available
memory, and stopped (the weights freed) once it is on course to take more than
``RECOVER_SECONDS``. A layer's weights are tied to the handle objects they came from: a call
with other handles (vLLM reloaded its weights) runs the dynamic graph instead.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from warmgraph.integrations.vllm.graph import Slot, VllmGraph, structure

MEMORY_SHARE = 0.25  # the most of the available memory the recovered weights may take
RECOVER_SECONDS = 10.0  # the most a start may spend recovering weights
_BLOCK = 256  # identity rows per product in ``recover``: bounds its temporary memory


class StreamSkipped(Exception):
    """Streaming is not possible or not worth it here; the message says why, in one line."""


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


def recover(handle: torch.Tensor, linear: Linear) -> torch.Tensor:
    """The (out, in) weight behind a oneDNN handle: its products with blocks of the identity
    (exact: each output is one weight times 1.0 plus zeros), written column block by block."""
    weight = torch.empty((linear.out_features, linear.in_features), dtype=linear.dtype)
    for start in range(0, linear.in_features, _BLOCK):
        rows = min(_BLOCK, linear.in_features - start)
        eye = torch.zeros((rows, linear.in_features), dtype=linear.dtype)
        eye[:, start:start + rows].fill_diagonal_(1)
        block = torch.empty((rows, linear.out_features), dtype=linear.dtype)
        torch.ops._C.onednn_mm(block, eye, None, handle)
        weight[:, start:start + rows] = block.t()
    if not torch.isfinite(weight).all():  # 0 * inf is NaN: such a weight cannot come back
        raise StreamSkipped("a layer weight is not finite, so it cannot be recovered exactly")
    return weight


class Weights:
    """The weights recovered in this process, by handle, with the handle objects they came from."""

    def __init__(self) -> None:
        self.by_handle: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(handle) -> (handle, weight)
        self.seconds = 0.0

    def get(self, handle: torch.Tensor, linear: Linear) -> torch.Tensor:
        entry = self.by_handle.get(id(handle))
        if entry is None or entry[0] is not handle:
            t0 = time.perf_counter()
            with torch.inference_mode():
                entry = (handle, recover(handle, linear))
            self.seconds += time.perf_counter() - t0
            self.by_handle[id(handle)] = entry
        return entry[1]

    def clear(self) -> None:
        self.by_handle.clear()

    @property
    def total_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for _, w in self.by_handle.values())


def recover_all(weights: Weights, calls: list[tuple[list[Any], list[Linear]]]) -> list[list[torch.Tensor]]:
    """The weights of every (piece inputs, linears) in ``calls``, recovered once per handle.

    StreamSkipped, with ``weights`` cleared, when a handle is not a tensor, the copies would take
    more than ``MEMORY_SHARE`` of the available memory, the work is on course to take more than
    ``RECOVER_SECONDS``, or oneDNN refuses a product.
    """
    todo: dict[int, tuple[torch.Tensor, Linear]] = {}
    for inputs, linears in calls:
        for lin in linears:
            handle = inputs[lin.handle_input]
            if not isinstance(handle, torch.Tensor):
                raise StreamSkipped("a layer's oneDNN handle is computed inside vLLM's graph, not passed to it")
            todo.setdefault(id(handle), (handle, lin))
    need = sum(lin.nbytes for _, lin in todo.values())
    available = available_memory()
    if need > MEMORY_SHARE * available:
        raise StreamSkipped(f"the weight copies need {need / 1e6:.0f} MB, over a quarter of the "
                            f"{available / 1e6:.0f} MB available")
    work = sum(lin.in_features * lin.nbytes for _, lin in todo.values())
    done = 0
    t0 = time.perf_counter()
    try:
        for handle, lin in todo.values():
            weights.get(handle, lin)
            done += lin.in_features * lin.nbytes
            projected = (time.perf_counter() - t0) * work / done
            if projected > RECOVER_SECONDS:
                raise StreamSkipped(f"recovering the weights would take about {projected:.0f} s "
                                    f"(more than {RECOVER_SECONDS:.0f} s)")
        return [[weights.get(inputs[lin.handle_input], lin) for lin in linears] for inputs, linears in calls]
    except RuntimeError as exc:  # oneDNN refused a product
        weights.clear()
        raise StreamSkipped(f"oneDNN could not multiply by the identity ({str(exc).splitlines()[0]})") from exc
    except StreamSkipped:
        weights.clear()
        raise


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil, which vLLM depends on)."""
    import psutil

    return int(psutil.virtual_memory().available)
