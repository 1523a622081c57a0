"""One-dimensional bucket sets by strategy name, and strategies compared at equal bucket counts.

``build`` turns a strategy name and its parameters into a BucketSet; ``at_count`` finds the
parameters that give a strategy a wanted number of buckets, so strategies are compared on
equal terms (the same graph budget) rather than at their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.exponential import exponential_range
from warmgraph.bucketing.limits import MAX_RANGE_VALUES, TooManyBucketsError
from warmgraph.bucketing.linear import linear_range
from warmgraph.bucketing.padding_aware import padding_aware_range
from warmgraph.errors import ConfigError

# The single list of strategy names. vllm-gaudi's three rule-based 1-D ranges (``buckets
# range``), then warmgraph's fit to a trace and a bucket file. ``plans.STRATEGIES`` (serving
# plans: the ranges and a file) is built from RANGE_STRATEGIES; CLI choices come from these.
RANGE_STRATEGIES = ("exponential", "linear", "padding_aware")
NAMES = (*RANGE_STRATEGIES, "fitted", "file")


@dataclass(frozen=True)
class RangeSpec:
    """A 1-D strategy and its parameters; ``min`` None means ``step``."""

    strategy: str
    step: int = 128
    max: int = 8192
    min: int | None = None
    limit: int | None = None  # exponential: geometric points; fitted: the bucket budget
    pad_max: int = 0
    pad_percent: float = 25
    max_waste: float | None = None  # fitted: a waste target instead of a budget
    file: str | None = None

    def params(self) -> dict[str, Any]:
        keep = {
            "exponential": ("min", "step", "max", "limit"),
            "linear": ("min", "step", "max"),
            "padding_aware": ("min", "step", "max", "pad_max", "pad_percent"),
            "fitted": ("step", "max", "limit", "max_waste"),
            "file": ("file",),
        }[self.strategy]
        d = asdict(self)
        d["min"] = self.step if self.min is None else self.min
        return {k: d[k] for k in keep if d[k] is not None}


def build(spec: RangeSpec, values: Sequence[int] | np.ndarray | None = None) -> BucketSet:
    """The BucketSet ``spec`` describes. ``fitted`` needs ``values`` (the trace it fits)."""
    if spec.strategy not in NAMES:
        raise ConfigError(f"strategy {spec.strategy!r} is unknown; use one of: {', '.join(NAMES)}")
    bmin = spec.step if spec.min is None else spec.min
    if spec.strategy == "exponential":
        if spec.limit is None:
            raise ConfigError("exponential needs --limit, the number of buckets to aim for")
        return BucketSet(exponential_range(bmin, spec.step, spec.max, spec.limit))
    if spec.strategy == "linear":
        return BucketSet(linear_range(bmin, spec.step, spec.max))
    if spec.strategy == "padding_aware":
        return BucketSet(padding_aware_range(bmin, spec.step, spec.max, spec.pad_max, spec.pad_percent))
    if spec.strategy == "fitted":
        from warmgraph.bucketing.fitted import fit_1d

        if values is None:
            raise ConfigError("fitted buckets need a trace; pass --trace FILE")
        if spec.limit is None and spec.max_waste is None:
            raise ConfigError("fitted needs a budget: --max-buckets N (or --limit N) or --max-waste W")
        budget = None if spec.max_waste is not None else spec.limit
        return BucketSet(fit_1d(values, spec.step, spec.max, max_buckets=budget, max_waste=spec.max_waste))
    from warmgraph.bucketing.from_file import load_buckets

    if not spec.file:
        raise ConfigError("strategy 'file' needs a bucket file; pass --file PATH")
    return load_buckets(spec.file)


def _closest(
    candidates: list[tuple[RangeSpec, BucketSet]], n: int, values: Sequence[int] | np.ndarray | None
) -> tuple[RangeSpec, BucketSet]:
    """The candidate with the most buckets not above ``n`` (else the fewest above it).

    Several settings can give the same count (exponential limits 12 and 13 both give 12
    buckets for 128..8192, with 26% and 20% waste on the conv trace); with a trace, the one
    that wastes least wins, so a baseline is never judged at its worst setting.
    """
    under = [c for c in candidates if len(c[1]) <= n]
    pool = under or candidates
    count = max(len(c[1]) for c in pool) if under else min(len(c[1]) for c in pool)
    tied = [c for c in pool if len(c[1]) == count]
    if values is None or len(tied) == 1:
        return tied[0]
    from warmgraph.bucketing.workload import evaluate

    return min(tied, key=lambda c: evaluate(c[1], values).padding_waste)


# at_count: every exponential limit up to this many is tried, as are up to _MAX_TIES linear
# steps that give the same count; beyond, the search narrows (see at_count).
_EXHAUSTIVE_LIMITS = 512
_MAX_TIES = 256
_WINDOW = 8


def _exponential_limits(s: RangeSpec, n: int) -> list[int]:
    """Limits to try for ``n`` buckets: every one up to 2n + 3 (as many as _EXHAUSTIVE_LIMITS),
    else a bisection for the largest limit with at most n buckets, then those of its
    neighbours with the most buckets not above n: the count only roughly grows with the
    limit, and trying every limit would cost O(n^2)."""
    top = hi = min(max(n + 2, 2) * 2 - 1, MAX_RANGE_VALUES)
    if top <= _EXHAUSTIVE_LIMITS:
        return list(range(1, top + 1))
    bmin = s.step if s.min is None else s.min

    def count(limit: int) -> int:
        return len(exponential_range(bmin, s.step, s.max, limit))

    lo = 1  # one limit, one bucket
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= n:
            lo = mid
        else:
            hi = mid - 1
    near = {k: count(k) for k in range(max(1, lo - _WINDOW), min(lo + _WINDOW, top) + 1)}
    best = max(c for c in near.values() if c <= n)
    return [k for k, c in near.items() if c == best]


def _linear_steps(s: RangeSpec, n: int) -> list[int]:
    """Multiples k of the base step to try: with min = step = k * base, a linear range has
    max // (k * base) buckets, so the most buckets not above n (and under the cap) are at
    the smallest such k; the settings tied with it follow (_MAX_TIES of them, evenly spread,
    when there are more)."""
    top = max(1, s.max // s.step)
    limit = min(n, MAX_RANGE_VALUES)
    k = min(top, max(1, s.max // (s.step * (limit + 1)) + 1))
    count = s.max // (s.step * k)
    last = min(top, s.max // (s.step * count)) if count else k
    if last - k < _MAX_TIES:
        return list(range(k, last + 1))
    return sorted({k + (last - k) * i // (_MAX_TIES - 1) for i in range(_MAX_TIES)})


def _built(tries: list[RangeSpec], values: Sequence[int] | np.ndarray | None) -> list[tuple[RangeSpec, BucketSet]]:
    """Each setting with its buckets; settings above the bucket caps are left out."""
    out = []
    for t in tries:
        try:
            out.append((t, build(t, values)))
        except TooManyBucketsError:
            continue
    if not out:
        raise ConfigError(f"every {tries[0].strategy} setting tried makes too many buckets; raise --step or --max")
    return out


def at_count(spec: RangeSpec, n: int, values: Sequence[int] | np.ndarray | None = None) -> tuple[RangeSpec, BucketSet]:
    """``spec``'s strategy tuned to have ``n`` buckets (or the closest count below ``n``).

    exponential varies ``limit``; linear varies ``step`` over multiples of the base step
    (min follows step); padding_aware varies ``pad_percent``; fitted gets ``limit = n``;
    a file is what it is. Ties in count go to the setting that wastes least on ``values``.
    The search costs about a second at most: for large ``n`` it narrows (see
    ``_exponential_limits``, ``_linear_steps``), and settings above the caps of ``limits``
    are skipped.
    """
    if n < 1:
        raise ConfigError(f"bucket count {n} must be at least 1")
    s = spec
    if s.strategy == "fitted":
        tuned = replace(s, limit=n, max_waste=None)
        return tuned, build(tuned, values)
    if s.strategy == "file":
        return s, build(s, values)
    tries: list[RangeSpec]
    if s.strategy == "exponential":
        tries = [replace(s, limit=k) for k in _exponential_limits(s, n)]
    elif s.strategy == "linear":
        tries = [replace(s, step=s.step * k, min=s.step * k) for k in _linear_steps(s, n)]
    else:
        tries = [replace(s, pad_percent=p, pad_max=0) for p in range(0, 51)]
    return _closest(_built(tries, values), n, values)
