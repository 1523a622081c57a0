"""Argument checks shared by the range strategies: one-line ConfigErrors that name the fix."""

from __future__ import annotations

from warmgraph.bucketing.limits import MAX_BUCKET_VALUE, MAX_RANGE_VALUES, check_count
from warmgraph.errors import ConfigError


def check_range(name: str, bmin: int, step: int, bmax: int) -> None:
    """Validate a (min, step, max) triple for strategy ``name``."""
    for label, value in (("min", bmin), ("step", step), ("max", bmax)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: {label} must be an integer, got {value!r}")
        if label == "step" and value < 1:
            raise ConfigError(f"{name}: step is {value}; use a step of at least 1")
        if value < 0:
            raise ConfigError(f"{name}: {label} is {value}; sizes must be >= 0")
        if value > MAX_BUCKET_VALUE:
            raise ConfigError(f"{name}: {label} is {value}; sizes must be at most 2**53 ({MAX_BUCKET_VALUE})")
    if bmin > bmax:
        raise ConfigError(f"{name}: min {bmin} is greater than max {bmax}; lower min or raise max")


def check_values(name: str, params: str, count: int, fix: str, bound: str = "") -> None:
    """Refuse a range of more than ``MAX_RANGE_VALUES`` values (``limits``), before it is built."""
    check_count(f"{name} range {params}", count, MAX_RANGE_VALUES, fix, noun="bucket values",
                per=" per dimension", bound=bound)
