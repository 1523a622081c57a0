"""Linear bucketing, as vllm-gaudi's ``warmup_range``.

Doubles from min while below ``step`` (the ramp-up), then every multiple of ``step`` up to
max. Max itself appears only when it is a multiple of ``step``, as upstream. A min of 0
adds a 0 bucket and starts the ramp at ``step``. Source: vllm-gaudi
``vllm_gaudi/extension/bucketing/linear.py``.

The count is known before anything is built, so a range of more than
``limits.MAX_RANGE_VALUES`` values is refused at once (vllm-gaudi has no cap and fills
memory), and multiples of ``step`` below min are never generated.
"""

from __future__ import annotations

from warmgraph.bucketing._check import check_range, check_values


def linear_range(bmin: int, step: int, bmax: int) -> list[int]:
    """Sorted bucket values for one dimension (TooManyBucketsError above the cap)."""
    check_range("linear", bmin, step, bmax)
    if bmin == 0 and bmax == 0:
        return [0]
    start = step if bmin == 0 else bmin
    ramp: list[int] = []
    v = start
    while v < step and v <= bmax:  # start >= 1, so doubling always grows
        ramp.append(v)
        v *= 2
    # Upstream takes range(step, max + 1, step) and drops values below start; only the
    # multiples of step from start on are made here.
    first = max(step, -(-start // step) * step)
    stable = range(first, bmax + 1, step)
    zero = [0] if bmin == 0 else []
    check_values("linear", f"min={bmin} step={step} max={bmax}", len(zero) + len(ramp) + len(stable),
                 "raise step or lower max")
    return [*zero, *ramp, *stable]
