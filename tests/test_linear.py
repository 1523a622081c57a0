"""warmgraph.models.linear: one-row products become a multiply and a row sum only where that pays."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from warmgraph.models.linear import Linear, row_linear, streams_row

_MATMULS = {"linear", "mm", "addmm", "matmul", "bmm"}


def _ops(module: torch.nn.Module, x: torch.Tensor, dynamic_shapes: object = None) -> set[str]:
    exported = torch.export.export(module, (x,), dynamic_shapes=dynamic_shapes)
    return {n.target.__name__.split(".")[0] for n in exported.graph.nodes if n.op == "call_function"}


def _layer(dtype: torch.dtype = torch.float32, bias: bool = False) -> Linear:
    torch.manual_seed(0)
    layer = Linear(64, 48, bias=bias).to(dtype)
    return layer.eval()


def test_eager_calls_use_the_gemm() -> None:
    x = torch.randn(1, 64)
    assert not streams_row(x)  # not compiling
    layer = _layer()
    assert torch.equal(layer(x), F.linear(x, layer.weight))


@pytest.mark.parametrize("shape", [(1, 64), (1, 1, 64), (64,)])
def test_a_traced_single_row_has_no_matmul(shape: tuple[int, ...]) -> None:
    ops = _ops(_layer(), torch.randn(shape))
    assert not ops & _MATMULS, ops
    assert {"mul", "sum"} <= ops


@pytest.mark.parametrize("shape", [(2, 64), (1, 3, 64)])
def test_a_traced_batch_keeps_the_gemm(shape: tuple[int, ...]) -> None:
    assert "linear" in _ops(_layer(), torch.randn(shape))


def test_a_symbolic_row_count_keeps_the_gemm() -> None:
    rows = torch.export.Dim("rows", min=1, max=64)
    assert "linear" in _ops(_layer(), torch.randn(4, 64), dynamic_shapes=({0: rows},))


@pytest.mark.parametrize("bias", [False, True])
def test_row_linear_matches_f_linear_in_float32(bias: bool) -> None:
    layer = _layer(bias=bias)
    x = torch.randn(1, 64)
    out = row_linear(x, layer.weight, layer.bias)
    assert out.shape == (1, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_row_linear_accumulates_bf16_in_float32() -> None:
    layer = _layer(torch.bfloat16)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    out = row_linear(x, layer.weight)
    exact = F.linear(x.double(), layer.weight.double()).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    # Summed in float32, every output rounds to the exact product's bf16 value or one step away;
    # summed in bf16 the 64 roundings would drift further.
    step = exact.float().abs() * 2 ** -7
    assert ((out.float() - exact.float()).abs() <= step + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_single_row_equals_the_gemm(dtype: torch.dtype) -> None:
    layer = _layer(dtype)
    x = torch.randn(1, 64, dtype=dtype)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(compiled(x), F.linear(x, layer.weight), **tol)


def test_every_projection_of_the_llama_model_streams_rows() -> None:
    from warmgraph.models.llama import LlamaForCausalLM
    from warmgraph.models.tiny import TINY_CONFIG

    model = LlamaForCausalLM(TINY_CONFIG)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 7 * model.config.num_hidden_layers + 1  # q k v o gate up down, and the LM head
    assert all(type(m) is Linear for m in linears)


@pytest.mark.parametrize(("batch", "gemms"), [(1, 0), (2, 7)])
def test_the_decode_layer_graph_streams_its_projections_at_batch_1(batch: int, gemms: int) -> None:
    from warmgraph.models.layer_inputs import LayerInputs, kv_cache_shape
    from warmgraph.models.paged import DecodeStep
    from warmgraph.models.tiny import TINY_CONFIG as cfg

    hidden = torch.zeros(batch, 1, cfg.hidden_size)
    rope = torch.zeros(batch, 1, cfg.head_dim)
    meta = [torch.zeros(1, dtype=torch.long)] * 3 + [torch.zeros(batch, dtype=torch.long)]
    cache = torch.zeros(kv_cache_shape(cfg, 4, 16))
    example = (hidden, rope, rope, *meta, cache, cache, *LayerInputs().zeros(cfg, torch.float32))
    exported = torch.export.export(DecodeStep(cfg, 16), example)
    ops = [n.target.__name__.split(".")[0] for n in exported.graph.nodes if n.op == "call_function"]
    assert ops.count("linear") == gemms  # q k v o gate up down
