"""The integration's pieces that need vLLM's modules but no engine: plan, plugin switch, op twins."""

from __future__ import annotations

import pytest
import torch

from warmgraph.errors import WarmgraphError
from warmgraph.integrations.vllm.graph import structure
from warmgraph.integrations.vllm.plan import cut_graph, dynamic_max, parse_sizes
from warmgraph.integrations.vllm.plugin import enabled, setting


def test_sizes_parse_and_refuse() -> None:
    assert parse_sizes("4, 1,2,2") == [1, 2, 4]
    for bad in ("", "0,1", "a,b", "-3"):
        with pytest.raises(WarmgraphError, match="WARMGRAPH_VLLM_SIZES"):
            parse_sizes(bad)
    assert dynamic_max(2048) == 16384 and dynamic_max(32768) == 32768
    assert cut_graph({}) is True and cut_graph({"WARMGRAPH_VLLM_CUT": "0"}) is False
    with pytest.raises(WarmgraphError, match="WARMGRAPH_VLLM_CUT"):
        cut_graph({"WARMGRAPH_VLLM_CUT": "layers"})


def test_plugin_switch() -> None:
    assert enabled({}) is False and enabled({"WARMGRAPH_VLLM": "0"}) is False
    assert enabled({"WARMGRAPH_VLLM": "1"}) is True and enabled({"WARMGRAPH_VLLM": "true"}) is True
    assert setting({"WARMGRAPH_VLLM": "1"}) == "graph" and setting({"WARMGRAPH_VLLM": "Piecewise"}) == "piecewise"
    assert setting({}) is None and enabled({"WARMGRAPH_VLLM": "piecewise"}) is True
    with pytest.raises(WarmgraphError, match="not understood"):
        enabled({"WARMGRAPH_VLLM": "maybe"})


def test_layer_name_twin_keeps_the_schema_but_the_opaque_argument() -> None:
    import vllm.model_executor.layers.attention.attention  # noqa: F401  (registers vLLM's ops)

    from warmgraph.integrations.vllm.layer_names import NAMESPACE, twin

    original = torch.ops.vllm.unified_attention_with_output.default
    made = twin(original)
    assert made is twin(original)  # made once
    assert made.namespace == NAMESPACE
    theirs = [(a.name, str(a.type), a.alias_info is not None) for a in original._schema.arguments]
    ours = [(a.name, str(a.type), a.alias_info is not None) for a in made._schema.arguments]
    assert [t for t in theirs if t[1] != "PyObject"] == [t for t in ours if t[1] != "str"]
    assert [(n, w) for n, t, w in theirs if t == "PyObject"] == [(n, w) for n, t, w in ours if t == "str"]
    assert [(n, t) for n, t, _ in ours if t == "str"] == [("layer_name", "str")]


def _traced(eps: float, names: str) -> torch.fx.GraphModule:
    """A norm-and-scale graph whose inputs and nodes are named after ``names`` (as vLLM's layers are)."""
    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    gm = torch.fx.symbolic_trace(f)
    for node in gm.graph.nodes:
        node.name = f"{names}_{node.name}"
    gm.recompile()
    return gm


def test_structure_ignores_names_but_not_computation() -> None:
    layer_1, layer_2 = _traced(1e-5, "layers_1"), _traced(1e-5, "layers_2")
    assert layer_1.code != layer_2.code  # Dynamo's names differ from layer to layer
    assert structure(layer_1) == structure(layer_2)  # one key: compiled once
    assert structure(_traced(1e-6, "layers_1")) != structure(layer_1)  # a constant is computation
    swapped = _traced(1e-5, "layers_1")
    mul = [n for n in swapped.graph.nodes if n.op == "call_function"][-1]
    mul.args = (mul.args[1], mul.args[0])  # w * (...) instead of (...) * w: another dataflow
    assert structure(swapped) != structure(layer_1)
