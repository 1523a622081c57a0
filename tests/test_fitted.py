"""Tests for warmgraph.bucketing.fitted: exactness of fit_1d, the N-D heuristic, real data."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.fitted import fit, fit_1d, waste
from warmgraph.errors import ConfigError

# vllm-gaudi's exponential buckets for (min 128, step 128, max 8192, 13 limit).
EXPONENTIAL = [128, 256, 384, 512, 768, 1024, 1536, 2048, 2944, 4096, 5888, 8192]

fast = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- independent oracles ----------------------------------------------------------------------


def padded_total(buckets: list[int], values, weights=None) -> float:
    """Sum of weight * work(smallest bucket >= value) over covered values, by plain search.
    Work counts a zero as 1, as ``buckets.work`` does."""
    b = np.sort(np.asarray(buckets, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64)
    idx = np.searchsorted(b, v, side="left")
    ok = idx < len(b)
    return float(np.sum(w[ok] * np.maximum(b[idx[ok]], 1)))


def brute_force(groups: list[int], gweights: list[float], top: int, k: int) -> float:
    """Least padded work over every subset of ``groups`` with at most k buckets, top included."""
    g = np.asarray(groups, dtype=np.float64)
    gw = np.asarray(gweights, dtype=np.float64)
    others = sorted(set(groups) - {top})
    best = np.inf
    for size in range(min(k - 1, len(others)) + 1):
        subsets = list(itertools.combinations(others, size))
        combos = np.array(subsets, dtype=np.float64).reshape(len(subsets), size)
        sets = np.hstack([combos, np.full((len(combos), 1), float(top))])
        padded = np.where(sets[:, None, :] >= g[None, :, None], sets[:, None, :], np.inf).min(axis=2)
        best = min(best, float((np.maximum(padded, 1) * gw).sum(axis=1).min()))
    return best


def rounded_groups(values, step: int, top: int, weights=None) -> tuple[list[int], list[float]]:
    v = np.asarray(values, dtype=np.int64)
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = (v <= top) & (w > 0)
    r = np.minimum(-(-v[keep] // step) * step, top)
    groups = sorted(set(r.tolist()))
    return groups, [float(w[keep][r == x].sum()) for x in groups]


def reference_dp(groups: list[int], gweights: list[float], k: int) -> float:
    """The O(k m^2) textbook DP, for inputs too big to enumerate."""
    c = np.maximum(np.asarray(groups, dtype=np.float64), 1)
    cw = np.cumsum(gweights)
    cur = c * cw
    for _ in range(k - 1):
        nxt = cur.copy()
        for j in range(1, len(c)):
            nxt[j] = min(cur[j], float(np.min(cur[:j] + c[j] * (cw[j] - cw[:j]))))
        cur = nxt
    return float(cur[-1])


# -- fit_1d -----------------------------------------------------------------------------------


@fast
@given(
    values=st.lists(st.integers(0, 80), min_size=1, max_size=30),
    step=st.sampled_from([1, 2, 4, 8]),
    top=st.integers(1, 64),
    k=st.integers(1, 5),
    weighted=st.booleans(),
    data=st.data(),
)
def test_fit_1d_matches_exhaustive_search(values, step, top, k, weighted, data):
    weights = data.draw(st.lists(st.integers(0, 3), min_size=len(values), max_size=len(values))) if weighted else None
    groups, gw = rounded_groups(values, step, top, weights)
    if not groups:
        with pytest.raises(ConfigError, match="no value"):
            fit_1d(values, step, top, max_buckets=k, weights=weights)
        return
    got = fit_1d(values, step, top, max_buckets=k, weights=weights)
    assert got == sorted(set(got)) and top in got and len(got) <= k
    assert set(got) <= set(groups) | {top}
    assert padded_total(got, values, weights) == pytest.approx(brute_force(groups, gw, top, k))


@fast
@given(
    values=st.lists(st.integers(0, 3000), min_size=50, max_size=400),
    step=st.sampled_from([1, 3, 16]),
    k=st.integers(2, 12),
)
def test_fit_1d_matches_reference_dp_on_larger_inputs(values, step, k):
    groups, gw = rounded_groups(values, step, 2048)
    if not groups:
        return
    got = fit_1d(values, step, 2048, max_buckets=k)
    top_groups, top_gw = (groups, gw) if groups[-1] == 2048 else ([*groups, 2048], [*gw, 0.0])
    assert padded_total(got, values) == pytest.approx(reference_dp(top_groups, top_gw, k))


@fast
@given(
    values=st.lists(st.integers(0, 64), min_size=1, max_size=30),
    step=st.sampled_from([1, 2, 4]),
    target=st.floats(0.0, 1.5),
)
def test_max_waste_returns_the_fewest_buckets(values, step, target):
    real = float(sum(max(v, 1) for v in values))
    try:
        got = fit_1d(values, step, 64, max_waste=target)
    except ConfigError:
        # Only when even every candidate misses the target.
        every = sorted(set(rounded_groups(values, step, 64)[0]) | {64})
        assert padded_total(every, values) / real - 1 > target
        return
    assert 64 in got
    assert waste(BucketSet(got), values) <= target + 1e-12
    if len(got) > 1:
        fewer = fit_1d(values, step, 64, max_buckets=len(got) - 1)
        assert waste(BucketSet(fewer), values) > target


def test_max_waste_zero_with_step_one_keeps_every_value():
    values = [3, 7, 7, 20, 100]
    assert fit_1d(values, 1, 100, max_waste=0.0) == [3, 7, 20, 100]
    with pytest.raises(ConfigError, match="smaller step"):
        fit_1d(values, 8, 100, max_waste=0.0)


@fast
@given(
    values=st.lists(st.integers(0, 70), min_size=1, max_size=30),
    cands=st.sets(st.integers(0, 80), min_size=1, max_size=12),
    k=st.integers(1, 4),
)
def test_candidates_mode_picks_a_subset_and_keeps_the_max(values, cands, k):
    usable = sorted(c for c in cands if c <= 64)
    if not usable:
        with pytest.raises(ConfigError, match="candidate"):
            fit_1d(values, 7, 64, max_buckets=k, candidates=sorted(cands))
        return
    top = usable[-1]
    covered = [v for v in values if v <= top]
    if not covered:
        with pytest.raises(ConfigError, match="no value"):
            fit_1d(values, 7, 64, max_buckets=k, candidates=sorted(cands))
        return
    got = fit_1d(values, 7, 64, max_buckets=k, candidates=sorted(cands))  # step ignored
    assert set(got) <= set(usable) and top in got and len(got) <= k
    groups = sorted({usable[int(np.searchsorted(usable, v))] for v in covered})
    gw = [float(sum(1 for v in covered if usable[int(np.searchsorted(usable, v))] == g)) for g in groups]
    assert padded_total(got, covered) == pytest.approx(brute_force(groups, gw, top, k))


def test_zero_is_its_own_bucket_only_when_it_occurs():
    assert fit_1d([0, 0, 0, 5], 4, 16, max_buckets=2) == [0, 16]  # 0 costs 1, like 1
    assert fit_1d([0, 0, 0, 5], 4, 16, max_waste=19 / 8 - 1) == [0, 16]
    assert fit_1d([1, 5], 4, 16, max_buckets=3) == [4, 8, 16]
    # With candidates, 0 rounds to the smallest candidate unless 0 is one.
    assert fit_1d([0, 3], 1, 8, max_buckets=3, candidates=[2, 4, 8]) == [2, 4, 8]
    assert fit_1d([0, 3], 1, 8, max_buckets=3, candidates=[0, 4, 8]) == [0, 4, 8]


def test_weights_equal_repetition():
    values, counts = [5, 17, 40, 41, 90], [3, 1, 4, 1, 5]
    repeated = np.repeat(values, counts)
    assert fit_1d(values, 4, 96, max_buckets=3, weights=counts) == fit_1d(repeated, 4, 96, max_buckets=3)


def test_fit_with_one_dimension_is_fit_1d():
    values = [5, 17, 40, 41, 90, 90]
    got = fit(values, steps=4, maxes=96, max_buckets=3)
    assert got.to_list() == fit_1d(values, 4, 96, max_buckets=3) and got.dims == ("size",)
    assert fit(np.array(values)[:, None], steps=[4], maxes=[96], max_buckets=3) == got


# -- N-D --------------------------------------------------------------------------------------


def decode_shapes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    batch = np.clip(rng.poisson(12, n) + 1, 1, 64)
    ctx = np.clip(rng.lognormal(6.5, 0.8, n), 1, 8192).astype(np.int64)
    return np.stack([batch, np.minimum(-(-batch * ctx // 128), 4096)], axis=1)


def grid(values_per_dim) -> BucketSet:
    return BucketSet(list(itertools.product(*[sorted({int(v) for v in vals}) for vals in values_per_dim])))


@pytest.mark.parametrize("budget", [4, 16, 36])
def test_fit_2d_covers_and_beats_plain_grids(budget):
    shapes = decode_shapes(3000)
    shapes[:5] = [[70, 10], [3, 5000], [64, 4096], [1, 0], [0, 7]]  # two uncoverable rows
    got = fit(shapes, steps=[1, 32], maxes=[64, 4096], max_buckets=budget)
    assert len(got) <= budget and (64, 4096) in got and got.dims == ("batch", "blocks")
    coverable = np.all(shapes <= [64, 4096], axis=1)
    assert np.all((got.lookup_many(shapes) >= 0) == coverable)
    side = int(np.sqrt(budget))
    even = grid([np.ceil(np.linspace(64 / side, 64, side)), np.ceil(np.linspace(4096 / side, 4096, side))])
    expo = grid([[64 // 2**i for i in range(side)], [4096 // 2**i for i in range(side)]])
    assert len(even) == len(expo) == side * side <= budget
    assert waste(got, shapes) <= waste(even, shapes)
    assert waste(got, shapes) <= waste(expo, shapes)


def test_fit_3d_and_max_waste():
    rng = np.random.default_rng(3)
    n = 2000
    shapes = np.stack(
        [rng.integers(1, 9, n), np.clip(rng.lognormal(6, 0.7, n), 1, 4096), rng.integers(0, 300, n)], axis=1
    ).astype(np.int64)
    got = fit(shapes, steps=[1, 128, 16], maxes=[8, 4096, 512], max_buckets=24)
    assert len(got) <= 24 and (8, 4096, 512) in got
    assert np.all(got.lookup_many(shapes) >= 0)
    assert got.dims == ("batch", "query_len", "ctx_blocks")
    target = waste(got, shapes)
    met = fit(shapes, steps=[1, 128, 16], maxes=[8, 4096, 512], max_waste=target)
    assert waste(met, shapes) <= target + 1e-9 and (8, 4096, 512) in met
    shapes2 = decode_shapes(1500, seed=4)
    met2 = fit(shapes2, steps=[1, 32], maxes=[64, 4096], max_waste=0.5, dims=["b", "k"])
    assert waste(met2, shapes2) <= 0.5 and met2.dims == ("b", "k")


def test_waste_counts_covered_shapes_only():
    buckets = BucketSet([(2, 4), (4, 8)])
    shapes = [(1, 3), (3, 5), (5, 1)]
    assert waste(buckets, shapes) == pytest.approx((8 + 32) / (3 + 15) - 1)
    assert waste(buckets, shapes, weights=[2, 1, 9]) == pytest.approx((16 + 32) / (6 + 15) - 1)
    assert waste(BucketSet([8]), [0, 0]) == pytest.approx(16 / 2 - 1)  # zeros count as 1
    assert waste(BucketSet([(0, 4), (2, 4)]), [(0, 3), (0, 0)]) == pytest.approx(8 / 4 - 1)
    assert waste(BucketSet([4]), [9]) == 0.0  # nothing covered
    assert waste(BucketSet([4, 8]), [3, 8, 9]) == pytest.approx(12 / 11 - 1)


# -- real data --------------------------------------------------------------------------------


def test_generalises_on_the_azure_conversation_trace(conv_trace: Path):
    # conv_trace (conftest) is shared/workloads/azure_llm_inference_2023_conv.csv beside the
    # checkout, and skips the test only when that file is absent.
    with conv_trace.open(newline="") as f:
        tokens = np.array([int(row["ContextTokens"]) for row in csv.DictReader(f)], dtype=np.int64)
    even, odd = tokens[0::2], tokens[1::2]
    learned = BucketSet(fit_1d(even, 128, 8192, max_buckets=12))
    direct = BucketSet(fit_1d(odd, 128, 8192, max_buckets=12))
    held_out, best = waste(learned, odd), waste(direct, odd)
    assert best <= held_out <= 1.05 * best
    assert held_out <= 0.6 * waste(BucketSet(EXPONENTIAL), odd)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fit_1d([1, 2], 0, 8, max_buckets=2), "step"),
        (lambda: fit_1d([1, 2], 1, 0, max_buckets=2), "max_value"),
        (lambda: fit_1d([1, -2], 1, 8, max_buckets=2), "negative"),
        (lambda: fit_1d([9, 10], 1, 8, max_buckets=2), "no value"),
        (lambda: fit_1d([1, 2], 1, 8, max_buckets=0), "max_buckets"),
        (lambda: fit_1d([1, 2], 1, 8, max_waste=-0.1), "max_waste"),
        (lambda: fit_1d([1, 2], 1, 8), "exactly one"),
        (lambda: fit_1d([1, 2], 1, 8, max_buckets=2, max_waste=0.1), "exactly one"),
        (lambda: fit_1d([1.5, 2], 1, 8, max_buckets=2), "whole numbers"),
        (lambda: fit_1d([1, 2], 1, 8, max_buckets=2, weights=[1]), "weights"),
        (lambda: fit_1d([1, 2], 1, 8, max_buckets=2, candidates=[16]), "candidate"),
        (lambda: fit([[1, 2]], steps=[1], maxes=[8, 8], max_buckets=2), "steps"),
        (lambda: fit([[1, 2]], steps=[1, 0], maxes=[8, 8], max_buckets=2), "steps"),
        (lambda: fit([[1, 2]], steps=[1, 1], maxes=[8, 0], max_buckets=2), "maxes"),
        (lambda: fit([[1, -2]], steps=[1, 1], maxes=[8, 8], max_buckets=2), "negative"),
        (lambda: fit([[9, 2]], steps=[1, 1], maxes=[8, 8], max_buckets=2), "no shape"),
        (lambda: fit([[1, 2]], steps=[1, 1], maxes=[8, 8], max_buckets=0), "max_buckets"),
        (lambda: fit([[1, 2]], steps=[1, 1], maxes=[8, 8], max_waste=-1), "max_waste"),
        (lambda: fit([[1, 2]], steps=[1, 1], maxes=[8, 8]), "exactly one"),
        (lambda: fit([[1, 3]], steps=[4, 4], maxes=[8, 8], max_waste=0.0), "smaller steps"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ConfigError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
