"""BucketSet: least-work lookup equals a naive scan; miss policies; the vectorised path agrees."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgraph.bucketing import BucketSet, MissPolicy, calc_fallback_value
from warmgraph.errors import BucketMissError, ConfigError


def naive(buckets: list[tuple[int, ...]], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    covering = [b for b in buckets if all(x >= s for x, s in zip(b, shape))]
    return min(covering, key=lambda b: (math.prod(max(v, 1) for v in b), b)) if covering else None


bucket_lists = st.integers(1, 3).flatmap(
    lambda d: st.tuples(
        st.just(d),
        st.lists(st.tuples(*[st.integers(0, 40)] * d), min_size=1, max_size=25),
        st.lists(st.tuples(*[st.integers(0, 45)] * d), min_size=1, max_size=30),
    )
)


@settings(max_examples=300, deadline=None)
@given(bucket_lists)
def test_lookup_equals_naive_scan(case: tuple[int, list[tuple[int, ...]], list[tuple[int, ...]]]) -> None:
    _, buckets, shapes = case
    bs = BucketSet(buckets)
    for shape in shapes:
        assert bs.lookup(shape) == naive(sorted(set(buckets)), shape)
    indices = bs.lookup_many(np.array(shapes))
    for shape, i in zip(shapes, indices):
        expected = naive(sorted(set(buckets)), shape)
        assert (bs.buckets[i] if i >= 0 else None) == expected


def test_least_work_beats_lexicographic_first_fit() -> None:
    # vllm-gaudi's first fit takes (1, 2048, 0) for (1, 100, 0): sorted first, far more work.
    bs = BucketSet([(1, 2048, 0), (2, 128, 0)])
    assert bs.lookup((1, 100, 0)) == (2, 128, 0)


def test_sorted_immutable_and_deduplicated() -> None:
    bs = BucketSet([(2, 8), (1, 16), (2, 8)])
    assert bs.buckets == ((1, 16), (2, 8))
    assert len(bs) == 2 and (2, 8) in bs and (3, 3) not in bs
    bigger = bs.with_buckets((4, 4))
    assert len(bs) == 2 and len(bigger) == 3
    assert bs.dims == ("batch", "blocks")
    with pytest.raises(AttributeError):
        bs.extra = 1  # type: ignore[attr-defined]


def test_one_dimensional_ints() -> None:
    bs = BucketSet([512, 128, 256])
    assert bs.to_list() == [128, 256, 512]
    assert bs.lookup(129) == (256,)
    assert bs.lookup(512) == (512,)
    assert bs.lookup(0) == (128,)
    assert 256 in bs


def test_miss_policies() -> None:
    bs = BucketSet([(1, 128, 0), (2, 256, 4)])
    assert bs.lookup((3, 10, 0)) is None
    assert bs.lookup((3, 10, 0), miss="eager") is None
    derived = bs.lookup((3, 300, 5), miss=MissPolicy.COMPILE)
    assert derived == (calc_fallback_value(3, 2), calc_fallback_value(300, 32), calc_fallback_value(5, 32))
    assert derived not in bs
    assert all(d >= s for d, s in zip(derived, (3, 300, 5)))
    with pytest.raises(BucketMissError, match=r"\(3, 10, 0\).*largest is \(2, 256, 4\)"):
        bs.lookup((3, 10, 0), miss="error")
    with pytest.raises(ConfigError, match="miss policy 'sometimes' is unknown"):
        bs.lookup((9, 9, 9), miss="sometimes")


@pytest.mark.parametrize(("n", "step", "expected"), [(31, 32, 128), (4001, 32, 4096), (7365, 32, 7680),
                                                      (4026, 32, 4096), (3, 2, 4), (1, 32, 1), (0, 32, 0)])
def test_calc_fallback_value_matches_vllm_gaudi(n: int, step: int, expected: int) -> None:
    assert calc_fallback_value(n, step) == expected


@pytest.mark.parametrize(
    ("buckets", "match"),
    [
        ([], "at least one bucket"),
        ([(1, 2), (3,)], "dimensions"),
        ([(1, -2)], "negative"),
        ([(1, 2.5)], "non-integer"),
        ([(1, 2**53 + 1)], r"above 2\*\*53"),
    ],
)
def test_bad_buckets(buckets: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BucketSet(buckets)


def test_shape_rank_mismatch() -> None:
    bs = BucketSet([(1, 2, 3)])
    with pytest.raises(ConfigError, match="2 dimensions, expected 3"):
        bs.lookup((1, 2))
    with pytest.raises(ConfigError, match=r"\(n, 3\)"):
        bs.lookup_many(np.zeros((4, 2), dtype=int))


def test_lazy_path_for_huge_grids(monkeypatch: pytest.MonkeyPatch) -> None:
    import warmgraph.bucketing.buckets as mod

    monkeypatch.setattr(mod, "_DENSE_CELL_LIMIT", 1)
    rng = np.random.default_rng(0)
    buckets = [tuple(int(x) for x in rng.integers(0, 50, 3)) for _ in range(40)]
    bs = BucketSet(buckets)
    shapes = rng.integers(0, 55, (200, 3))
    got = bs.lookup_many(shapes)
    for shape, i in zip(shapes.tolist(), got):
        assert (bs.buckets[i] if i >= 0 else None) == naive(sorted(set(buckets)), tuple(shape))
        assert bs.lookup(tuple(shape)) == (bs.buckets[i] if i >= 0 else None)


def test_zero_dimensions_count_as_one() -> None:
    # A prompt with no context blocks still costs batch x query_len.
    assert BucketSet.padded_work((2, 128, 0)) == 256
    bs = BucketSet([(1, 2048, 0), (2, 128, 0), (1, 128, 4)])
    assert bs.lookup((1, 100, 0)) == (2, 128, 0)
    assert bs.lookup((1, 100, 1)) == (1, 128, 4)


def test_padded_work_many_and_largest() -> None:
    bs = BucketSet([(2, 8), (4, 4), (1, 1)])
    assert bs.largest == (4, 4)
    idx = np.array([0, 1, -1, 2])
    assert bs.padded_work_many(idx).tolist() == [1.0, 16.0, 0.0, 16.0]
