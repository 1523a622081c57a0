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
from warmgraph.bucketing.linear import linear_range
from warmgraph.bucketing.padding_aware import padding_aware_range
from warmgraph.errors import ConfigError

NAMES = ("exponential", "linear", "padding_aware", "fitted", "file")


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


def at_count(spec: RangeSpec, n: int, values: Sequence[int] | np.ndarray | None = None) -> tuple[RangeSpec, BucketSet]:
    """``spec``'s strategy tuned to have ``n`` buckets (or the closest count below ``n``).

    exponential varies ``limit``; linear varies ``step`` over multiples of the base step
    (min follows step); padding_aware varies ``pad_percent``; fitted gets ``limit = n``;
    a file is what it is. Ties in count go to the setting that wastes least on ``values``.
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
        tries = [replace(s, limit=k) for k in range(1, max(n + 2, 2) * 2)]
    elif s.strategy == "linear":
        top = max(1, s.max // s.step)
        tries = [replace(s, step=s.step * k, min=s.step * k) for k in range(1, top + 1)]
    else:
        tries = [replace(s, pad_percent=p, pad_max=0) for p in range(0, 51)]
    return _closest([(t, build(t, values)) for t in tries], n, values)
