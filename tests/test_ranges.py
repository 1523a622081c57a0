"""The three vllm-gaudi range strategies against vllm-gaudi's own published examples.

Expected lists come from vllm-gaudi's unit tests and docstrings, and from running its HEAD
code (shared/docs/upstream/vllm-gaudi.md §1.3-1.5, §2.1). Upstream's loops are kept below as
references: warmgraph's faster versions must give the same values. Then the caps of
``bucketing.limits`` and the equal-count search of ``strategies.at_count``.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgraph.bucketing.exponential import exponential_range
from warmgraph.bucketing.fitted import _groups, _Layers, fit_1d
from warmgraph.bucketing.limits import MAX_RANGE_VALUES, TooManyBucketsError
from warmgraph.bucketing.linear import linear_range
from warmgraph.bucketing.padding_aware import padding_aware_range
from warmgraph.bucketing.strategies import RangeSpec, at_count, build
from warmgraph.errors import ConfigError


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ((128, 128, 2048, 10), [128, 256, 384, 512, 640, 896, 1152, 1536, 2048]),  # upstream docstring
        ((128, 128, 4096, 13), [128, 256, 384, 512, 640, 768, 1024, 1408, 1792, 2304, 3072, 4096]),
        ((128, 128, 1024, 11), [128, 256, 384, 512, 640, 768, 896, 1024]),
        ((1, 2, 256, 9), [1, 2, 4, 8, 14, 24, 42, 78, 140, 256]),  # upstream unit test
        ((0, 1, 702, 11), [0, 1, 2, 4, 8, 14, 27, 52, 99, 190, 365, 702]),
        ((1, 256, 10779, 14), [1, 256, 512, 768, 1024, 1280, 1536, 2048, 2560, 3584, 4608, 6144, 8192, 10779]),
        ((1, 2, 1, 1), [1]),  # limit 1: max alone, no 0/1 bucket added
        ((128, 128, 8192, 13), [128, 256, 384, 512, 768, 1024, 1536, 2048, 2944, 4096, 5888, 8192]),
        ((0, 1, 192, 9), [0, 1, 2, 4, 8, 14, 27, 52, 100, 192]),
    ],
)
def test_exponential_matches_vllm_gaudi(cfg: tuple[int, int, int, int], expected: list[int]) -> None:
    assert exponential_range(*cfg) == expected


def test_exponential_contiguous_pa_pins_last_to_max() -> None:
    values = exponential_range(1, 256, 3593, 13, contiguous_pa=True)
    assert values[-1] == 3593
    assert exponential_range(1, 256, 10779, 14)[-1] <= 10779


@given(
    bmin=st.integers(0, 300),
    step=st.integers(1, 64),
    span=st.integers(0, 5000),
    limit=st.integers(1, 20),
)
def test_exponential_properties(bmin: int, step: int, span: int, limit: int) -> None:
    # includes max 0 and 1, where the clamp to max could repeat a value
    bmax = bmin + span
    values = exponential_range(bmin, step, bmax, limit)
    assert values == sorted(set(values))
    assert values[-1] <= bmax
    assert len(values) <= limit + (1 if bmin in (0, 1) and limit > 1 else 0)
    if limit > 1:
        assert bmax in values or values[-1] == bmax
        start = step if bmin in (0, 1) else bmin
        # Every value but the 0/1 bucket and the clamped max is a multiple of step.
        for v in values:
            assert v in (bmin, bmax) or v % step == 0 or v == start


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ((2, 64, 128), [2, 4, 8, 16, 32, 64, 128]),  # upstream test_warmup_range
        ((1, 64, 128), [1, 2, 4, 8, 16, 32, 64, 128]),  # upstream test_warmup_range_with_one
        ((2, 32, 64), [2, 4, 8, 16, 32, 64]),  # upstream docstring
        ((0, 1, 4), [0, 1, 2, 3, 4]),
        ((0, 0 + 8, 20), [0, 8, 16]),  # max appears only as a multiple of step
        ((0, 5, 0), [0]),
    ],
)
def test_linear_matches_vllm_gaudi(cfg: tuple[int, int, int], expected: list[int]) -> None:
    assert linear_range(*cfg) == expected


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ((0, 8, 64, 64, 0), [0, 1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]),  # upstream parametrised test
        ((0, 8, 64, 64, 50), [0, 1, 2, 4, 8, 16, 32, 64]),
        ((0, 8, 64, 16, 50), [0, 1, 2, 4, 8, 16, 32, 48, 64]),
        ((16, 16, 128, 32, 25), [16, 32, 48, 64, 80, 96, 128]),
    ],
)
def test_padding_aware_matches_vllm_gaudi(cfg: tuple[int, int, int, int, int], expected: list[int]) -> None:
    assert padding_aware_range(*cfg) == expected


@given(step=st.integers(1, 64), span=st.integers(0, 3000), pct=st.integers(0, 50))
def test_padding_aware_respects_relative_limit(step: int, span: int, pct: int) -> None:
    bmax = step + span
    values = padding_aware_range(step, step, bmax, 0, pct)
    assert values[-1] == bmax and values == sorted(set(values))
    # Past the ramp-up, the padding between neighbours stays within the relative limit
    # unless the gap is a single step (no bucket in between could be kept).
    for lo, hi in itertools.pairwise(values):
        if lo > step and hi - lo > step:
            assert (hi - lo - 1) / hi <= pct / 100 + step / hi


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (exponential_range, (10, 1, 5, 3), "min 10 is greater than max 5"),
        (exponential_range, (1, 1, 5, 0), "limit is 0"),
        (exponential_range, (-1, 1, 5, 2), "min is -1"),
        (linear_range, (1, 0, 5), "step is 0"),
        (linear_range, (1, 2, -5), "max is -5"),
        (padding_aware_range, (1, 2, 10, 0, 60), "pad_percent is 60"),
        (padding_aware_range, (1, 2, 10, -1, 20), "pad_max is -1"),
    ],
)
def test_bad_ranges_raise_config_error(fn, args, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        fn(*args)


def test_linear_values_are_step_multiples_after_ramp() -> None:
    values = linear_range(3, 16, 100)
    assert values == [3, 6, 12, 16, 32, 48, 64, 80, 96]
    assert all(v % 16 == 0 for v in values if v >= 16)
    assert math.prod([1]) == 1


def test_exponential_tiny_max_has_no_duplicates() -> None:
    assert exponential_range(0, 1, 0, 2) == [0]
    assert exponential_range(0, 4, 1, 3) == [0, 1]


# -- upstream's loops, kept as references for the faster versions -----------------------------


def upstream_padding_aware(bmin: int, step: int, bmax: int, pad_max: int, pad_percent: float) -> list[int]:
    """vllm-gaudi's walk over every multiple of step (warmup_range_with_limits), verbatim."""
    if pad_max == 0:
        pad_max = bmax
    if pad_max == 0:
        return [0]
    out = [bmin]
    current = bmin
    while current <= bmax:
        last = out[-1]
        if current <= step:
            nxt = last * 2 or 1
            if nxt <= bmax:
                out.append(nxt)
        else:
            nxt = current + step
            max_padding = nxt - last - 1
            keep = max_padding / nxt > pad_percent / 100.0 or max_padding > pad_max or current % pad_max == 0
            if keep and current != last:
                out.append(current)
        current = nxt
    if out[-1] != bmax:
        out.append(bmax)
    return out


def upstream_exponential(bmin: int, step: int, bmax: int, limit: int, contiguous_pa: bool = False) -> list[int]:
    """vllm-gaudi's point-by-point loop (warmup_range_with_limit), verbatim."""
    if limit == 1:
        return [bmax]
    start = step if bmin in (0, 1) else bmin
    values = set()
    for i in range(limit):
        point = start * np.float_power(bmax / start, (1.0 / float(limit - 1)) * i)
        values.add(bmax if i == limit - 1 and contiguous_pa else math.ceil(point / step) * step)
    if bmin in (0, 1):
        values.add(bmin)
    out = sorted(values)
    if out[-1] > bmax:
        out[-1] = bmax
    return sorted(set(out))


def upstream_linear(bmin: int, step: int, bmax: int) -> list[int]:
    """vllm-gaudi's warmup_range: ramp up by doubling, then every multiple of step, min and up."""
    if bmin == 0 and bmax == 0:
        return [0]
    start = step if bmin == 0 else bmin
    ramp = list(itertools.takewhile(lambda x: x < step and x <= bmax, itertools.accumulate(
        itertools.repeat(2), lambda a, b: a * b, initial=start)))
    out = {v for v in [*ramp, *range(step, bmax + 1, step)] if v >= start}
    return sorted(out | ({0} if bmin == 0 else set()))


@settings(max_examples=400, deadline=None)
@given(
    bmin=st.integers(0, 300),
    step=st.integers(1, 130),
    span=st.integers(0, 4000),
    pad_max=st.one_of(st.just(0), st.integers(1, 8), st.integers(1, 5000)),
    pct=st.one_of(st.sampled_from([0, 1, 10, 25, 50]), st.floats(0, 50)),
)
def test_padding_aware_jumps_land_where_upstream_walks(bmin: int, step: int, span: int, pad_max: int,
                                                       pct: float) -> None:
    assert padding_aware_range(bmin, step, bmin + span, pad_max, pct) == upstream_padding_aware(
        bmin, step, bmin + span, pad_max, pct)


@settings(max_examples=400, deadline=None)
@given(
    bmin=st.integers(0, 3000),
    step=st.integers(1, 300),
    span=st.one_of(st.integers(0, 10**5), st.integers(0, 2**52)),
    limit=st.integers(1, 300),
    contiguous_pa=st.booleans(),
)
def test_exponential_in_one_pass_equals_upstream_loop(bmin: int, step: int, span: int, limit: int,
                                                      contiguous_pa: bool) -> None:
    bmax = bmin + span
    assert exponential_range(bmin, step, bmax, limit, contiguous_pa=contiguous_pa) == upstream_exponential(
        bmin, step, bmax, limit, contiguous_pa)


@settings(max_examples=300, deadline=None)
@given(bmin=st.integers(0, 400), step=st.integers(1, 200), span=st.integers(0, 5000))
def test_linear_equals_upstream(bmin: int, step: int, span: int) -> None:
    assert linear_range(bmin, step, bmin + span) == upstream_linear(bmin, step, bmin + span)


# -- caps: refused at once, with the count, the cap and the fix ------------------------------


@pytest.mark.parametrize(
    ("fn", "args", "count", "fragment"),
    [
        (linear_range, (1, 1, 10**11), 10**11, "raise step or lower max"),
        (linear_range, (0, 1, MAX_RANGE_VALUES), MAX_RANGE_VALUES + 1, "raise step or lower max"),
        (exponential_range, (1, 1, 10**6, 10**8), 10**8, "lower limit"),
        (padding_aware_range, (1, 1, 10**12, 0, 0), MAX_RANGE_VALUES + 1, "raise pad_percent or step"),
    ],
)
def test_range_caps(fn, args, count: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with pytest.raises(TooManyBucketsError, match=fragment) as info:
        fn(*args)
    assert time.perf_counter() - start < 2
    assert (info.value.count, info.value.cap) == (count, MAX_RANGE_VALUES)
    assert f"above the cap of {MAX_RANGE_VALUES:,} per dimension" in str(info.value)
    assert isinstance(info.value, ConfigError)  # the CLI's one-line error


def test_ranges_at_the_cap_are_fast_and_exact() -> None:
    start = time.perf_counter()
    assert len(linear_range(1, 1, MAX_RANGE_VALUES)) == MAX_RANGE_VALUES
    assert len(exponential_range(1, 1, 10**9, MAX_RANGE_VALUES)) <= MAX_RANGE_VALUES + 1
    assert len(padding_aware_range(1, 1, MAX_RANGE_VALUES, 0, 0)) == MAX_RANGE_VALUES
    assert time.perf_counter() - start < 3


def test_huge_max_with_few_values_is_fine() -> None:
    # Only the values kept cost anything: a min near max, or padding_aware's sparse walk.
    assert linear_range(10**11 - 5, 1, 10**11) == list(range(10**11 - 5, 10**11 + 1))
    start = time.perf_counter()
    values = padding_aware_range(1, 1, 10**12, 0, 25)
    assert time.perf_counter() - start < 1
    assert values[-1] == 10**12 and values == sorted(set(values)) and len(values) < 200
    with pytest.raises(ConfigError, match=r"at most 2\*\*53"):
        exponential_range(1, 1, 2**53 + 1, 3)


# -- strategies compared at equal counts: the search stays small -----------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 12, 40, 100])
@pytest.mark.parametrize(("base", "bmax"), [(128, 8192), (1, 14050), (16, 4000)])
def test_linear_at_count_matches_the_full_search(n: int, base: int, bmax: int) -> None:
    spec = RangeSpec("linear", step=base, max=bmax)
    top = max(1, bmax // base)
    counts = {k: len(build(replace(spec, step=base * k, min=base * k))) for k in range(1, top + 1)}
    best = max(c for c in counts.values() if c <= n)
    tuned, got = at_count(spec, n)
    assert len(got) == best and tuned.step // base == min(k for k, c in counts.items() if c == best)


@pytest.mark.parametrize(("strategy", "n"), [("linear", 10), ("linear", 10**6), ("exponential", 10**5),
                                              ("padding_aware", 50)])
def test_at_count_with_huge_ranges_is_quick(strategy: str, n: int) -> None:
    start = time.perf_counter()
    _, got = at_count(RangeSpec(strategy, step=1, max=10**9), n)
    assert time.perf_counter() - start < 5
    assert 1 <= len(got) <= min(n, MAX_RANGE_VALUES + 1)


def test_fit_1d_with_a_budget_above_the_candidates_is_the_dp_answer() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        values = rng.integers(0, int(rng.choice([4, 60, 2000])), size=int(rng.integers(1, 80)))
        step, top = int(rng.choice([1, 3, 16])), int(rng.integers(1, 2500))
        if not (values <= top).any():
            continue
        c, gw, _ = _groups(values, step, top, None, None)
        layers = _Layers(c, gw)
        for _ in range(c.size - 1):
            layers.add()
        assert fit_1d(values, step, top, max_buckets=c.size + 5) == layers.solution(c.size)
