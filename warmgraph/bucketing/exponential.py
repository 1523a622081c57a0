"""Exponential bucketing, exactly as vllm-gaudi's current ``warmup_range_with_limit``.

Values are spaced geometrically from min to max in ``limit`` steps, each rounded up to a
multiple of ``step``; duplicates disappear, so the result can hold fewer than ``limit``
values. A min of 0 or 1 starts the geometric run at ``step`` and is added back as its own
bucket. Source: vllm-gaudi ``vllm_gaudi/extension/bucketing/exponential.py`` (HEAD), whose
published examples the tests reproduce.
"""

from __future__ import annotations

import math

import numpy as np

from warmgraph.bucketing._check import check_range
from warmgraph.errors import ConfigError


def exponential_range(bmin: int, step: int, bmax: int, limit: int, *, contiguous_pa: bool = False) -> list[int]:
    """Sorted bucket values for one dimension.

    ``limit`` is the number of geometric points before de-duplication (>= 1); with
    ``limit == 1`` the result is ``[max]`` alone (vllm-gaudi does not add the 0/1 bucket
    then). ``contiguous_pa`` pins the last point to exactly ``max`` instead of rounding it.
    """
    check_range("exponential", bmin, step, bmax)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"exponential: limit is {limit!r}; give the number of buckets, at least 1")
    if limit == 1:
        return [bmax]
    start = step if bmin in (0, 1) else bmin
    values: set[int] = set()
    for i in range(limit):
        # float64 float_power with the exponent formed as (1/(limit-1))*i, exactly as
        # upstream: i/(limit-1) differs in the last bit and can round 4096 up to 4224.
        point = start * np.float_power(bmax / start, (1.0 / float(limit - 1)) * i)
        if i == limit - 1 and contiguous_pa:
            values.add(bmax)
        else:
            values.add(math.ceil(point / step) * step)
    if bmin in (0, 1):
        values.add(bmin)
    out = sorted(values)
    # Rounding up to ``step`` can overshoot max; upstream clamps the top value to max.
    if out[-1] > bmax:
        out[-1] = bmax
    # With max 0 or 1 the clamp can repeat a value ([0, 1] -> [0, 0]); keep each once.
    return sorted(set(out))
