"""Tests for warmgraph.bucketing.workload: scoring a bucket set (``evaluate``), and its re-exports.

Trace reading is tested in ``test_traces.py``, the decode replay in ``test_decode_replay.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgraph.bucketing import BucketSet
from warmgraph.bucketing.workload import (
    DecodeTrace,
    evaluate,
    read_requests,
    read_trace,
    simulate_decode,
)
from warmgraph.errors import ConfigError

# -- evaluate --------------------------------------------------------------------------------


def test_evaluate_hand_example() -> None:
    report = evaluate(BucketSet([4, 8]), [1, 4, 5, 9])
    assert report.num_buckets == 2 and report.num_shapes == 4
    assert report.hit_rate == 0.75
    # padded 4 + 4 + 8 = 16 over real 1 + 4 + 5 = 10; paddings 3, 0, 3
    assert report.padding_waste == pytest.approx(0.6)
    assert report.padding_p50 == 3.0
    assert report.padding_p99 == pytest.approx(np.percentile([3, 0, 3], 99))
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_evaluate_2d() -> None:
    buckets = BucketSet([(2, 8), (4, 4), (4, 16)])
    shapes = np.array([[1, 3], [2, 8], [3, 5], [4, 17], [3, 2]])
    report = evaluate(buckets, shapes)
    # (1,3)->(4,4) work 16 vs 3; (2,8)->(2,8) 16 vs 16; (3,5)->(4,16) 64 vs 15;
    # (4,17) misses; (3,2)->(4,4) 16 vs 6.
    assert report.hit_rate == 0.8
    assert report.padding_waste == pytest.approx((112 - 40) / 40)
    assert report.padding_p50 == pytest.approx(np.percentile([13, 0, 49, 10], 50))
    assert report.padding_p99 == pytest.approx(np.percentile([13, 0, 49, 10], 99))


def test_evaluate_nothing_covered_and_no_shapes() -> None:
    report = evaluate(BucketSet([4]), [5, 6])
    assert (report.hit_rate, report.padding_waste, report.padding_p50, report.padding_p99) == (0, 0, 0, 0)
    empty = evaluate(BucketSet([(1, 1)]), np.zeros((0, 2), dtype=np.int64))
    assert empty.num_shapes == 0 and empty.hit_rate == 1.0 and empty.padding_waste == 0.0


def test_evaluate_rejects_bad_shapes() -> None:
    with pytest.raises(ConfigError):
        evaluate(BucketSet([4]), [1.5, 2.0])
    with pytest.raises(ConfigError):
        evaluate(BucketSet([4]), [-1])
    with pytest.raises(ConfigError):
        evaluate(BucketSet([(4, 4)]), [[1, 2, 3]])


def test_evaluate_many_shapes() -> None:
    rng = np.random.default_rng(0)
    buckets = BucketSet([(b, k) for b in (1, 2, 4, 8, 16, 32, 64) for k in range(8, 2049, 8)])
    shapes = np.column_stack([rng.integers(1, 80, 1_000_000), rng.integers(1, 2100, 1_000_000)])
    report = evaluate(buckets, shapes)
    assert 0.7 < report.hit_rate < 1.0
    assert report.padding_waste > 0 and report.padding_p99 >= report.padding_p50 >= 0


def naive_percentile(values: list[float], q: float) -> float:
    """numpy's default ('linear') percentile, written out."""
    xs = sorted(values)
    rank = q / 100 * (len(xs) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def naive_evaluate(buckets: list[tuple[int, ...]], shapes: list[tuple[int, ...]]) -> dict:
    paddings, real_sum, padded_sum = [], 0, 0
    for s in shapes:
        works = [math.prod(b) for b in buckets if all(bv >= sv for bv, sv in zip(b, s))]
        if works:
            padded, real = min(works), math.prod(s)
            paddings.append(padded - real)
            real_sum += real
            padded_sum += padded
    hits = len(paddings)
    return {
        "hit_rate": hits / len(shapes),
        "padding_waste": (padded_sum - real_sum) / real_sum if hits else 0.0,
        "padding_p50": naive_percentile(paddings, 50) if hits else 0.0,
        "padding_p99": naive_percentile(paddings, 99) if hits else 0.0,
    }


@st.composite
def buckets_and_shapes(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    ndim = draw(st.integers(1, 3))
    dim = st.tuples(*[st.integers(1, 40)] * ndim)
    buckets = draw(st.lists(dim, min_size=1, max_size=12))
    shapes = draw(st.lists(dim, min_size=1, max_size=40))
    return buckets, shapes


@settings(max_examples=150, deadline=None)
@given(buckets_and_shapes())
def test_evaluate_matches_naive(case: tuple[list[tuple[int, ...]], list[tuple[int, ...]]]) -> None:
    buckets, shapes = case
    got = evaluate(BucketSet(buckets), np.array(shapes, dtype=np.int64)).to_dict()
    want = naive_evaluate(buckets, shapes)
    assert got["num_shapes"] == len(shapes)
    assert got["num_buckets"] == len(set(buckets))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


# -- re-exports: trace reading and decode replay keep the import path callers use ----------------


def test_workload_re_exports_its_steps() -> None:
    from warmgraph.bucketing import decode_replay, traces

    assert (read_trace, read_requests) == (traces.read_trace, traces.read_requests)
    assert (simulate_decode, DecodeTrace) == (decode_replay.simulate_decode, decode_replay.DecodeTrace)
