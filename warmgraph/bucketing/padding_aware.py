"""Padding-aware bucketing, as vllm-gaudi's ``warmup_range_with_limits`` (``VLLM_BUCKETING_STRATEGY=pad``).

Ramp up by doubling to ``step``; then walk in multiples of ``step`` and keep a value only
when skipping it would let padding exceed ``pad_percent`` of the next value or ``pad_max``
absolute, or when it is a multiple of ``pad_max``. Max is always kept. ``pad_percent=0``
gives dense linear buckets; 50 is close to exponential. Source: vllm-gaudi
``vllm_gaudi/extension/bucketing/padding_aware.py``.
"""

from __future__ import annotations

from warmgraph.bucketing._check import check_range
from warmgraph.errors import ConfigError


def padding_aware_range(bmin: int, step: int, bmax: int, pad_max: int, pad_percent: int | float) -> list[int]:
    """Sorted bucket values for one dimension. ``pad_max == 0`` means ``pad_max = max``."""
    check_range("padding_aware", bmin, step, bmax)
    if isinstance(pad_max, bool) or not isinstance(pad_max, int) or pad_max < 0:
        raise ConfigError(f"padding_aware: pad_max is {pad_max!r}; give a padding limit >= 0 (0 means max)")
    if not 0 <= pad_percent <= 50:
        raise ConfigError(f"padding_aware: pad_percent is {pad_percent}; use a value from 0 to 50")
    if pad_max == 0:
        pad_max = bmax
    if pad_max == 0:  # max is 0 too: the only bucket is 0
        return [0]
    out = [bmin]
    current = bmin
    while current <= bmax:
        last = out[-1]
        if current <= step:
            nxt = last * 2 or 1
            if nxt <= bmax:
                out.append(nxt)
        else:
            nxt = current + step
            max_padding = nxt - last - 1
            keep = max_padding / nxt > pad_percent / 100.0 or max_padding > pad_max or current % pad_max == 0
            if keep and current != last:
                out.append(current)
        current = nxt
    if out[-1] != bmax:
        out.append(bmax)
    return out
