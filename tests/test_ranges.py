"""The three vllm-gaudi range strategies against vllm-gaudi's own published examples.

Expected lists come from vllm-gaudi's unit tests and docstrings, and from running its HEAD
code (shared/docs/upstream/vllm-gaudi.md §1.3-1.5, §2.1).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmgraph.bucketing.exponential import exponential_range
from warmgraph.bucketing.linear import linear_range
from warmgraph.bucketing.padding_aware import padding_aware_range
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
