"""The integration's pieces that need vLLM's modules but no engine: plan, plugin switch, op twins."""

from __future__ import annotations

import pytest
import torch

from warmgraph.errors import WarmgraphError
from warmgraph.integrations.vllm.graph import structure
from warmgraph.integrations.vllm.plan import cut_graph, dynamic_max, parse_sizes, stream_one
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
    assert stream_one({}) is True and stream_one({"WARMGRAPH_VLLM_STREAM": "off"}) is False
    with pytest.raises(WarmgraphError, match="WARMGRAPH_VLLM_STREAM='16' is not understood"):
        stream_one({"WARMGRAPH_VLLM_STREAM": "16"})


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


def _onednn_graph(out_features: int, in_features: int, bias: bool = False,
                  returned: bool = False) -> torch.fx.GraphModule:
    """A graph calling vLLM's oneDNN op as vLLM's ``onednn_mm`` wrapper does (an empty output,
    ``x`` reshaped to (-1, in), the handle an input), then using the output, or returning it."""
    def f(x: torch.Tensor, handle: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], out_features), dtype=torch.float32)
        torch.ops._C.onednn_mm(out, x.reshape(-1, in_features), b if bias else None, handle)
        return out if returned else out * 2 + out[:, :1]

    return torch.fx.symbolic_trace(f)


@pytest.mark.parametrize("bias,returned", [(False, False), (True, False), (False, True)])
def test_streamed_form_equals_onednn_and_recovers_the_exact_weight(bias: bool, returned: bool) -> None:
    import vllm._custom_ops as ops

    from warmgraph.integrations.vllm.stream import Linear, rewrite
    from warmgraph.integrations.vllm.weights import recover

    torch.manual_seed(0)
    weight, b = torch.randn(48, 300), torch.randn(48)  # 300 inputs: two identity blocks in recover
    handler = ops.create_onednn_mm(weight.t(), 32)
    gm = _onednn_graph(48, 300, bias, returned)
    streamed, linears = rewrite(gm)
    assert linears == [Linear(handle_input=1, out_features=48, in_features=300, dtype=torch.float32)]
    assert not any("onednn" in str(n.target) for n in streamed.graph.nodes)  # the op is gone
    assert [n.name for n in streamed.graph.nodes if n.op == "placeholder"] == ["x", "handle", "b",
                                                                               "warmgraph_weight_0"]
    recovered = recover(handler.handler_tensor, linears[0])
    assert torch.equal(recovered, weight)  # bit for bit, not approximately
    for rows in (1, 3):
        x = torch.randn(rows, 300)
        expected = gm(x, handler.handler_tensor, b)
        got = streamed(x, handler.handler_tensor, b, recovered)
        assert got.is_contiguous() and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # sums of 300 in another order
    assert rewrite(_traced(1e-5, "layers_1")) is None  # nothing to take


def test_calls_the_rewrite_cannot_take_stay() -> None:
    from warmgraph.integrations.vllm.stream import rewrite

    def computed_handle(x: torch.Tensor, handle: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], 8), dtype=torch.float32)
        torch.ops._C.onednn_mm(out, x.reshape(-1, 4), None, handle + 0)  # not an input: no weight to recover
        return out

    def read_before(x: torch.Tensor, handle: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], 8), dtype=torch.float32)
        first = out[:, :2]  # a view taken before the op writes
        torch.ops._C.onednn_mm(out, x.reshape(-1, 4), None, handle)
        return first

    def three_dims(x: torch.Tensor, handle: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], 2, 8), dtype=torch.float32)
        torch.ops._C.onednn_mm(out, x.reshape(-1, 4), None, handle)
        return out

    for f in (computed_handle, read_before, three_dims):
        assert rewrite(torch.fx.symbolic_trace(f)) is None, f.__name__


def test_the_memory_profile_run_is_told_from_real_steps() -> None:
    from types import SimpleNamespace

    from vllm.forward_context import ForwardContext, override_forward_context

    from warmgraph.integrations.vllm.profile_run import is_memory_profile_run

    def context(metadata: object, *caches: object) -> ForwardContext:
        layers = {f"layer{i}": SimpleNamespace(kv_cache=c) for i, c in enumerate(caches)}
        layers["norm"] = SimpleNamespace()  # a layer without a KV cache does not count
        return ForwardContext(no_compile_layers=layers, attn_metadata=metadata, slot_mapping={})

    empty, bound = torch.tensor([]), torch.zeros(2, 16, 4)
    assert not is_memory_profile_run()  # no forward pass at all
    cases = [
        (context(None, empty, empty), True),  # vLLM's profile run: no metadata, nothing allocated
        (context(None, [], ([], empty)), True),  # caches kept as lists (Mamba's states)
        (context({"layer0": object()}, empty, empty), False),  # a step with metadata is real
        (context(None, bound, bound), False),  # a dummy run after the KV cache exists (DP, capture)
        (context(None, empty, bound), False),
        (context(None, [bound]), False),
        (context(None), False),  # no layer holds a KV cache: nothing tells the run apart
    ]
    for ctx, expected in cases:
        with override_forward_context(ctx):
            assert is_memory_profile_run() is expected, ctx.no_compile_layers
