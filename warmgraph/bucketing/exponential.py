"""Exponential bucketing, exactly as vllm-gaudi's current ``warmup_range_with_limit``.

Values are spaced geometrically from min to max in ``limit`` steps, each rounded up to a
multiple of ``step``; duplicates disappear, so the result can hold fewer than ``limit``
values. A min of 0 or 1 starts the geometric run at ``step`` and is added back as its own
bucket. Source: vllm-gaudi ``vllm_gaudi/extension/bucketing/exponential.py`` (HEAD), whose
published examples the tests reproduce.

``limit`` is capped at ``limits.MAX_RANGE_VALUES`` (every point is computed and held);
vllm-gaudi's own limits are ``ceil(log2(max)) + 1``, never above 64.
"""

from __future__ import annotations

import numpy as np

from warmgraph.bucketing._check import check_range, check_values
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
    check_values("exponential", f"min={bmin} step={step} max={bmax} limit={limit}", limit, "lower limit",
                 bound="up to ")
    if limit == 1:
        return [bmax]
    start = step if bmin in (0, 1) else bmin
    # float64 float_power with the exponent formed as (1/(limit-1))*i, exactly as upstream:
    # i/(limit-1) differs in the last bit and can round 4096 up to 4224. All points at once:
    # the same float64 operations as upstream's loop, element by element (the tests check it).
    exponents = (1.0 / float(limit - 1)) * np.arange(limit, dtype=np.float64)
    points = start * np.float_power(bmax / start, exponents)
    rounded = (np.ceil(points / step).astype(np.int64) * step).tolist()
    if contiguous_pa:
        rounded[-1] = bmax
    values = set(rounded)
    if bmin in (0, 1):
        values.add(bmin)
    out = sorted(values)
    # Rounding up to ``step`` can overshoot max; upstream clamps the top value to max.
    if out[-1] > bmax:
        out[-1] = bmax
    # With max 0 or 1 the clamp can repeat a value ([0, 1] -> [0, 0]); keep each once.
    return sorted(set(out))
