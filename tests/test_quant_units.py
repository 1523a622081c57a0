"""FP8 pieces on their own: the multiplier vector, the cast, both GEMM paths, the math switch and
the variant planner (runtime scale patching, trivial patterns, the cap)."""

from __future__ import annotations

import pytest
import torch

from warmgraph.errors import ConfigError
from warmgraph.quant.fp8 import (
    CAST_SLOTS,
    FP8_MAX,
    NUM_SLOTS,
    RESCALE_SLOTS,
    SLOTS,
    fp8_group,
    fp8_math,
    layer_vector,
    to_fp8,
)
from warmgraph.quant.settings import Fp8Settings
from warmgraph.quant.variants import plan_variants, trivial_pattern


def test_the_vector_holds_float32_reciprocals_and_products_in_slot_order() -> None:
    inputs, weights = [0.1, 2.0, 0.3, 1.0], [0.5, 0.25, 0.125, 3.0, 0.2, 0.7, 1.0]
    v = layer_vector(inputs, weights)
    assert v.dtype == torch.float32 and v.shape == (NUM_SLOTS,) == (11,)
    assert SLOTS[0] == "qkv.input" and SLOTS[1] == "self_attn.q_proj.rescale" and SLOTS[9] == "down.input"
    f32 = torch.tensor
    assert v[0] == f32(1.0) / f32(0.1) and v[4] == f32(0.5) and v[9] == 1.0
    assert v[1] == f32(0.1) * f32(0.5) and v[3] == f32(0.1) * f32(0.125) and v[10] == 1.0
    assert v[5] == f32(2.0) * f32(3.0) and v[7] == f32(0.3) * f32(0.2) and v[8] == f32(0.3) * f32(0.7)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="positive and finite"):
            layer_vector([bad, 1.0, 1.0, 1.0], weights)


def test_the_cast_saturates_instead_of_making_inf() -> None:
    x = torch.tensor([1e6, -1e6, 3.0, 0.0])
    q = to_fp8(x, torch.tensor(0.5)).float()
    assert q.tolist() == [FP8_MAX, -FP8_MAX, 1.5, 0.0]
    assert to_fp8(torch.tensor([300.0]), None).float().item() == 288.0  # e4m3's step at 256-448 is 32


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 0.25)])
def test_scaled_mm_and_emulation_agree(dtype: torch.dtype, atol: float) -> None:
    """The CPU runs torch._scaled_mm's reference kernel: slow, but it checks the scaled_mm path's
    layout (column-major weight, scales, out dtype) against emulation, within the GEMM's rounding."""
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 64) * 3).to(dtype)
    w = [to_fp8(torch.randn(32, 64), 20.0), to_fp8(torch.randn(16, 64), 10.0)]
    inv, rescales = torch.tensor(1 / 0.05), [torch.tensor(0.05 / 20), None]
    native = fp8_group(x, w, inv, rescales, "scaled_mm")
    emulated = fp8_group(x, [t.to(dtype) for t in w], inv, rescales, "emulate")
    for a, b, t in zip(native, emulated, w):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape == (2, 3, t.shape[0])
        assert (a.float() - b.float()).abs().max() <= atol
        assert b.float().abs().max() > 10 * atol


def test_the_math_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARMGRAPH_FP8_MATH", raising=False)
    assert fp8_math("cpu") == "emulate" and fp8_math("cpu", "emulate") == "emulate"
    with pytest.raises(ConfigError, match=r"needs a GPU with FP8 GEMMs.*WARMGRAPH_FP8_MATH=emulate"):
        fp8_math("cpu", "scaled_mm")
    monkeypatch.setenv("WARMGRAPH_FP8_MATH", "fast")
    with pytest.raises(ConfigError, match="'fast' is not one of auto, scaled_mm, emulate"):
        fp8_math("cpu")


def _vector(ones: tuple[int, ...] = (), base: float = 0.5) -> list[float]:
    return [1.0 if i in ones else base for i in range(NUM_SLOTS)]


def test_trivial_patterns_take_exact_ones_only() -> None:
    v = _vector(ones=(CAST_SLOTS[0], RESCALE_SLOTS[0]))
    v[CAST_SLOTS[1]] = 1.0000001  # not exactly 1.0 in float32 either
    assert [i for i, d in enumerate(trivial_pattern(v, 0)) if d] == []
    assert [i for i, d in enumerate(trivial_pattern(v, 1)) if d] == [CAST_SLOTS[0]]
    assert [i for i, d in enumerate(trivial_pattern(v, 2)) if d] == [CAST_SLOTS[0], RESCALE_SLOTS[0]]


def test_patching_off_shares_a_graph_between_layers_with_equal_scales() -> None:
    vectors = [_vector(base=0.5), _vector(base=0.25), _vector(base=0.5), _vector(base=0.125)]
    plan = plan_variants(vectors, Fp8Settings(patching=False))
    assert [v.layers for v in plan.variants] == [(0, 2), (1,), (3,)] and plan.assignment == (0, 1, 0, 2)
    assert plan.variants[1].baked == tuple(_vector(base=0.25)) and plan.graphs(5) == 15
    on = plan_variants(vectors, Fp8Settings(patching=True))
    assert len(on.variants) == 1 and on.variants[0].baked is None and on.graphs(5) == 5


def test_the_cap_keeps_the_most_common_patterns_and_sends_the_rest_to_mode_0() -> None:
    a, b, c = (CAST_SLOTS[0],), (CAST_SLOTS[1],), (CAST_SLOTS[2],)
    vectors = [_vector(b), _vector(a), _vector(a), _vector(), _vector(c), _vector(b), _vector(a)]
    plan = plan_variants(vectors, Fp8Settings(patching=True, trivial=1, cap=2))
    # a: 3 layers, b: 2, c: 1 (past the cap) -> mode 0 with layer 3.
    assert [v.layers for v in plan.variants] == [(3, 4), (1, 2, 6), (0, 5)] and plan.capped == (4,)
    tie = plan_variants([_vector(c), _vector(a)], Fp8Settings(patching=True, trivial=1, cap=1))
    assert [v.layers for v in tie.variants] == [(1,), (0,)]  # a tie goes to the earliest layer's pattern
    none = plan_variants(vectors, Fp8Settings(patching=True, trivial=1, cap=0))
    assert len(none.variants) == 1 and none.capped == (0, 1, 2, 4, 5, 6)


@pytest.mark.parametrize(("kwargs", "fragment"), [({"trivial": 3}, "not 0, 1 or 2"),
                                                  ({"cap": -1}, "must be an integer >= 0")])
def test_settings_refuse_values_that_cannot_work(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Fp8Settings(**kwargs)
