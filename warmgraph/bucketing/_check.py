"""Argument checks shared by the range strategies: one-line ConfigErrors that name the fix."""

from __future__ import annotations

from warmgraph.errors import ConfigError


def check_range(name: str, bmin: int, step: int, bmax: int) -> None:
    """Validate a (min, step, max) triple for strategy ``name``."""
    for label, value in (("min", bmin), ("step", step), ("max", bmax)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: {label} must be an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{name}: {label} is {value}; sizes must be >= 0")
    if step < 1:
        raise ConfigError(f"{name}: step is {step}; use a step of at least 1")
    if bmin > bmax:
        raise ConfigError(f"{name}: min {bmin} is greater than max {bmax}; lower min or raise max")
