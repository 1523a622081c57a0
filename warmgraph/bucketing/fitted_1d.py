"""The exact 1-D fit: ``fit_1d``, the dynamic program behind it, and the input checks of every fit.

``fit_1d`` picks the bucket values that minimise total padded work on a trace of sizes;
waste and work are as in ``fitted`` (which re-exports ``fit_1d`` and builds the N-D
heuristic ``fit`` on the ``_Layers`` DP and the checks here). No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from warmgraph.bucketing.limits import MAX_BUCKET_VALUE
from warmgraph.errors import ConfigError

# Int64 DP values are exact; past this bound c * W could overflow, so use float64.
_INT_SAFE = 2**62


def _check_budget(max_buckets: int | None, max_waste: float | None) -> None:
    if (max_buckets is None) == (max_waste is None):
        raise ConfigError("give exactly one of max_buckets (a bucket count) or max_waste (a waste target)")
    if max_buckets is not None and max_buckets < 1:
        raise ConfigError(f"max_buckets is {max_buckets}; give at least 1")
    if max_waste is not None and not max_waste >= 0:
        raise ConfigError(f"max_waste is {max_waste}; give a waste target >= 0 (0.1 means 10% padding)")


def _int_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    # Floats are fine if whole (traces read with numpy often are); NaN fails the test too.
    if arr.size and (arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(arr % 1 == 0))):
        raise ConfigError(f"{what} must be whole numbers; round the trace to ints first")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ConfigError(f"{what} has a negative value {arr.min()}; sizes must be >= 0")
    return arr


def _weight_array(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.int64)
    w = np.asarray(weights)
    if w.shape != (n,):
        raise ConfigError(f"weights has shape {w.shape}; give one weight per value ({n})")
    if not np.issubdtype(w.dtype, np.number) or not np.all(w >= 0):
        raise ConfigError("weights must be numbers >= 0; drop or zero the entries to ignore")
    # Whole-number weights stay ints so the DP is exact; others are float64.
    return w.astype(np.int64) if np.all(np.mod(w, 1) == 0) else w.astype(np.float64)


def _waste_of(padded: float, real: float) -> float:
    return float(padded) / float(real) - 1.0 if real > 0 else 0.0


# -- the 1-D dynamic program ----------------------------------------------------------------


def _best_previous(prev: np.ndarray, c: np.ndarray, cw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each j >= 1: min over i < j of prev[i] + c[j] * (cw[j] - cw[i]), and the leftmost i.

    The cost c[j] * (cw[j] - cw[i]) is Monge (for a <= b <= e <= f the quadrangle term is
    (cw[b] - cw[a]) * (c[e] - c[f]) <= 0), so the leftmost argmin is nondecreasing in j.
    Divide and conquer on that: solve the middle j of every open range at once with numpy,
    which splits each range's i window in two. About log2(m) rounds of O(m) numpy work,
    instead of O(m^2) for a plain min over all i < j.
    """
    m = len(c)
    best, arg = np.zeros(m, dtype=prev.dtype), np.full(m, -1, dtype=np.int64)
    if m < 2:
        return best, arg
    jlo, jhi = np.array([1]), np.array([m - 1])
    ilo, ihi = np.array([0]), np.array([m - 2])
    while jlo.size:
        mid = (jlo + jhi) // 2
        # ilo < mid always holds: ilo is the argmin of some j' < mid, and that is < j'.
        lens = np.minimum(ihi, mid - 1) - ilo + 1
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(mid.size), lens)
        i = np.arange(int(lens.sum())) - starts[seg] + ilo[seg]
        vals = prev[i] - c[mid][seg] * cw[i]
        mins = np.minimum.reduceat(vals, starts)
        first = np.minimum.reduceat(np.where(vals == mins[seg], i, m), starts)
        best[mid] = mins + c[mid] * cw[mid]
        arg[mid] = first
        left, right = jlo < mid, mid < jhi
        jlo, jhi = np.concatenate([jlo[left], mid[right] + 1]), np.concatenate([mid[left] - 1, jhi[right]])
        ilo, ihi = np.concatenate([ilo[left], first[right]]), np.concatenate([first[left], ihi[right]])
    return best, arg


class _Layers:
    """DP[k][j]: least padded work covering candidate groups 0..j with at most k buckets, the
    largest being c[j]. Layer k only needs layer k-1, so layers are added one at a time;
    ``choices`` keeps, per layer, the previous bucket (or -1: layer k-1 was no worse).
    """

    def __init__(self, c: np.ndarray, w: np.ndarray) -> None:
        self.c = c
        self.wc = np.maximum(c, 1)  # a bucket's work: size 0 costs as much as size 1
        self.cw = np.cumsum(w)
        self.cur = self.wc * self.cw  # one bucket, c[j], covers groups 0..j
        self.costs = [self.cur[-1]]
        self.choices: list[np.ndarray] = []

    def add(self) -> None:
        best, arg = _best_previous(self.cur, self.wc, self.cw)
        take = best < self.cur
        take[0] = False  # group 0 has no earlier bucket to split from
        self.choices.append(np.where(take, arg, -1).astype(np.int32))
        self.cur = np.where(take, best, self.cur)
        self.costs.append(self.cur[-1])

    def solution(self, k: int) -> list[int]:
        """Sorted bucket values of the optimum with at most k buckets (k <= layers built)."""
        j = len(self.c) - 1
        out = []
        for layer in range(k, 1, -1):
            prev = int(self.choices[layer - 2][j])
            if prev >= 0:
                out.append(int(self.c[j]))
                j = prev
        out.append(int(self.c[j]))
        return sorted(out)


def _groups(
    values: Any, step: int, max_value: int, weights: Any, candidates: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sorted candidate values, the weight rounding to each, and the real work covered."""
    if step < 1:
        raise ConfigError(f"step is {step}; give a step >= 1")
    if max_value < 1:
        raise ConfigError(f"max_value is {max_value}; give a max_value >= 1")
    if max_value > MAX_BUCKET_VALUE or step > MAX_BUCKET_VALUE:
        which, value = ("max_value", max_value) if max_value > MAX_BUCKET_VALUE else ("step", step)
        raise ConfigError(f"{which} is {value}; sizes must be at most 2**53 ({MAX_BUCKET_VALUE})")
    vals = _int_array(values, "values").ravel()
    w = _weight_array(weights, vals.size)
    if candidates is None:
        top = int(max_value)
    else:
        cand = np.unique(_int_array(candidates, "candidates"))
        # Capture sizes above max_value cannot be used; what is left must cover something.
        cand = cand[cand <= max_value]
        if cand.size == 0:
            raise ConfigError(f"no candidate is <= max_value {max_value}; add one or raise max_value")
        top = int(cand[-1])
    keep = (vals <= top) & (w > 0)
    vals, w = vals[keep], w[keep]
    if vals.size == 0:
        raise ConfigError(f"no value <= max {top} has a positive weight; raise the max or check the trace")
    if candidates is None:
        rounded = np.minimum(-(-vals // step) * step, top)
    else:
        rounded = cand[np.searchsorted(cand, vals, side="left")]
    c = np.union1d(rounded, [top]).astype(np.int64)
    gw = np.bincount(np.searchsorted(c, rounded), weights=w, minlength=c.size)
    if w.dtype.kind == "i" and top * float(w.sum()) < _INT_SAFE:
        gw = np.rint(gw).astype(np.int64)
    else:
        c = c.astype(np.float64)
    return c, gw, float(np.sum(w * np.maximum(vals, 1).astype(np.float64)))


def fit_1d(
    values: Any,
    step: int,
    max_value: int,
    *,
    max_buckets: int | None = None,
    max_waste: float | None = None,
    weights: Any = None,
    candidates: Sequence[int] | None = None,
) -> list[int]:
    """Sorted bucket values that minimise total padded work on ``values``: the exact optimum.

    Contract:
      - A value rounds up to a multiple of ``step`` clipped to ``max_value`` or, with
        ``candidates``, to the next candidate <= ``max_value`` (``step`` unused). Buckets are
        rounded values; the top (``max_value``, or the largest usable candidate) is always
        kept, so every value <= it is covered. Values above the top or of weight 0 are ignored.
      - Exactly one of ``max_buckets=k`` (least work with at most k buckets) or
        ``max_waste=x`` (fewest buckets whose optimum has waste <= x; ConfigError if even
        every candidate misses x). Waste is sum(padded) / sum(real) - 1; work counts 0 as 1.
      - ConfigError (one line) for step < 1, max_value < 1, negative values, no value <= the
        top, max_buckets < 1, max_waste < 0. Cost: O(k m log m) numpy work, m candidates.
    """
    _check_budget(max_buckets, max_waste)
    c, gw, real = _groups(values, step, max_value, weights, candidates)
    m = c.size
    if max_buckets is not None and max_buckets >= m:
        # Every candidate a bucket is the optimum (what m layers of the DP end with): each
        # split lowers the work, except a 0 bucket below a 1 bucket (both cost 1), which the
        # DP does not take. Skipping the m layers saves O(m^2 log m) for a generous budget.
        every = [int(v) for v in c]
        return every[1:] if m > 1 and every[0] == 0 and every[1] == 1 else every
    layers = _Layers(c, gw)
    if max_buckets is not None:
        for _ in range(min(max_buckets, m) - 1):
            layers.add()
        return layers.solution(min(max_buckets, m))
    assert max_waste is not None

    def meets(cost: float) -> bool:
        return _waste_of(cost, real) <= max_waste

    floor = float(np.sum(layers.wc * gw))
    if not meets(floor):
        how = "use a smaller step" if candidates is None else "add candidates"
        raise ConfigError(
            f"max_waste {max_waste} is below {_waste_of(floor, real):.6g}, the waste with every "
            f"candidate as a bucket; raise max_waste or {how}"
        )
    # Dropping one bucket j < top moves only group j up to c[j+1], so the best m-1 buckets
    # cost the floor plus the cheapest such move. Checking it first spares m layers of DP
    # when the target is the floor itself (max_waste=0 with step 1).
    if m == 1 or not meets(floor + float(np.min(gw[:-1] * np.diff(layers.wc)))):
        return [int(v) for v in c]
    while not meets(layers.costs[-1]):
        layers.add()
    return layers.solution(len(layers.costs))
