"""Padding-aware bucketing, as vllm-gaudi's ``warmup_range_with_limits`` (``VLLM_BUCKETING_STRATEGY=pad``).

Ramp up by doubling to ``step``; then walk in multiples of ``step`` and keep a value only
when skipping it would let padding exceed ``pad_percent`` of the next value or ``pad_max``
absolute, or when it is a multiple of ``pad_max``. Max is always kept. ``pad_percent=0``
gives dense linear buckets; 50 is close to exponential. Source: vllm-gaudi
``vllm_gaudi/extension/bucketing/padding_aware.py``.

Upstream visits every multiple of ``step`` up to max, so ``max / step`` of a hundred million
runs for minutes even when it keeps 40 values. Here the walk jumps from one kept value to
the next: both padding tests only become true as the walk goes on (the float quotient of an
increasing ratio never decreases), so the first value that passes is found by a galloping
search, and the next multiple of ``pad_max`` by solving a congruence. The values are the
same as upstream's walk (``tests/test_ranges.py`` checks that against the plain walk); the
cost is that of the values kept, at most ``limits.MAX_RANGE_VALUES`` of them.
"""

from __future__ import annotations

import math

from warmgraph.bucketing._check import check_range, check_values
from warmgraph.bucketing.limits import MAX_RANGE_VALUES
from warmgraph.errors import ConfigError


def padding_aware_range(bmin: int, step: int, bmax: int, pad_max: int, pad_percent: int | float) -> list[int]:
    """Sorted bucket values for one dimension. ``pad_max == 0`` means ``pad_max = max``.

    TooManyBucketsError once more than ``MAX_RANGE_VALUES`` values would be kept (only a
    small ``pad_percent`` with a large ``max / step`` gets there).
    """
    check_range("padding_aware", bmin, step, bmax)
    if isinstance(pad_max, bool) or not isinstance(pad_max, int) or pad_max < 0:
        raise ConfigError(f"padding_aware: pad_max is {pad_max!r}; give a padding limit >= 0 (0 means max)")
    if not 0 <= pad_percent <= 50:
        raise ConfigError(f"padding_aware: pad_percent is {pad_percent}; use a value from 0 to 50")
    params = f"min={bmin} step={step} max={bmax} pad_max={pad_max} pad_percent={pad_percent}"
    if pad_max == 0:
        pad_max = bmax
    if pad_max == 0:  # max is 0 too: the only bucket is 0
        return [0]
    out = [bmin]
    current = bmin
    while current <= step and current <= bmax:  # the ramp: current is always out[-1] here
        nxt = out[-1] * 2 or 1
        if nxt <= bmax:
            out.append(nxt)
        current = nxt
    ratio = pad_percent / 100.0

    def keeps_padding(c: int, last: int) -> bool:
        """The two padding tests at walk position ``c``; false then true as ``c`` grows."""
        nxt = c + step
        max_padding = nxt - last - 1
        return max_padding / nxt > ratio or max_padding > pad_max

    # The multiples of pad_max on the walk current + k * step: k = k0 (mod period), if any.
    g = math.gcd(step, pad_max)
    period = pad_max // g
    k0 = (-(current // g) * pow(step // g, -1, period)) % period if current % g == 0 else None
    k, k_end = 0, (bmax - current) // step if current <= bmax else -1  # walk positions 0..k_end
    while k <= k_end:
        last, start = out[-1], k
        # First position >= k that passes a padding test: gallop, then bisect.
        hi, width = k, 1
        while hi <= k_end and not keeps_padding(current + hi * step, last):
            k, hi, width = hi + 1, hi + width, width * 2
        hi = min(hi, k_end + 1)
        while k < hi:
            mid = (k + hi) // 2
            if keeps_padding(current + mid * step, last):
                hi = mid
            else:
                k = mid + 1
        first = hi
        if k0 is not None:
            first = min(first, start + (k0 - start) % period)
        if first > k_end:
            break
        value = current + first * step
        if value != last:
            out.append(value)
            if len(out) > MAX_RANGE_VALUES:
                check_values("padding_aware", params, len(out), "raise pad_percent or step, or lower max",
                             bound="at least ")
        k = first + 1
    if out[-1] != bmax:
        out.append(bmax)
        check_values("padding_aware", params, len(out), "raise pad_percent or step, or lower max")
    return out
