"""Linear bucketing, as vllm-gaudi's ``warmup_range``.

Doubles from min while below ``step`` (the ramp-up), then every multiple of ``step`` up to
max. Max itself appears only when it is a multiple of ``step``, as upstream. A min of 0
adds a 0 bucket and starts the ramp at ``step``. Source: vllm-gaudi
``vllm_gaudi/extension/bucketing/linear.py``.
"""

from __future__ import annotations

from warmgraph.bucketing._check import check_range


def linear_range(bmin: int, step: int, bmax: int) -> list[int]:
    """Sorted bucket values for one dimension."""
    check_range("linear", bmin, step, bmax)
    if bmin == 0 and bmax == 0:
        return [0]
    start = step if bmin == 0 else bmin
    values: list[int] = []
    v = start
    while v < step and v <= bmax:
        values.append(v)
        if v == 0:  # doubling 0 never ends; upstream cannot reach this (start >= step > 0)
            break
        v *= 2
    values.extend(range(step, bmax + 1, step))
    out = {v for v in values if v >= start}
    if bmin == 0:
        out.add(0)
    return sorted(out)
