"""Fitted buckets: the bucket set that minimises padded work on a trace of shapes.

Ours, not upstream: vllm-gaudi spaces buckets by a fixed rule (linear or exponential); here
the trace decides. Waste is ``sum(padded) / sum(real) - 1`` over covered shapes, padded being
the work of the bucket ``BucketSet.lookup`` picks; work is the product of the dims with a zero
counted as 1 (``buckets.work``), for buckets and real shapes alike. ``fit_1d`` is exact (a
dynamic program), ``fit`` a heuristic for 2+ dimensions, ``waste`` scores any set. No torch.

This module holds the N-D heuristic, ``fit`` and ``waste``. ``fit_1d``, with its DP and the
input checks ``fit`` shares, lives in ``fitted_1d``; it is importable from here as well.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from warmgraph.bucketing.buckets import BucketSet, work_many
from warmgraph.bucketing.fitted_1d import _check_budget, _int_array, _Layers, _waste_of, _weight_array, fit_1d
from warmgraph.bucketing.fitted_1d import _groups as _groups  # re-exported: tests check the rounding
from warmgraph.bucketing.limits import MAX_BUCKET_VALUE
from warmgraph.errors import ConfigError

# The most buckets ``fit`` will try when meeting a ``max_waste`` target in 2+ dimensions.
_MAX_FIT_BUCKETS = 4096
# Per-dimension bucket counts tried for the grids of ``fit``: roughly x1.5 apart, so the
# number of grids stays small (a few hundred for 3 dimensions) while covering every shape.
_COUNT_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


# -- N-D: grids from per-dimension fits, then greedy removal --------------------------------


def _prune(
    rows: np.ndarray, row_w: np.ndarray, cols: np.ndarray, corner: int, budget: int, target: float
) -> tuple[np.ndarray, float]:
    """Greedily drop buckets (``cols``) down to ``budget``; return (kept mask, padded work).

    Each step drops the bucket whose rows lose least by moving to their next best covering
    bucket. Past the budget it keeps dropping while work stays <= ``target``: drops are
    nested, so one run answers every smaller budget. A dense (rows x buckets) cost matrix,
    inf where a bucket does not cover, makes a step a few small numpy calls; only rows whose
    best or second best was dropped are re-ranked. The corner (never dropped) covers every
    row, so every row keeps a finite best.
    """
    work = work_many(cols)
    covers = np.all(cols[None, :, :] >= rows[:, None, :], axis=2)
    cost = np.where(covers, work[None, :], np.inf)
    alive = np.ones(len(cols), dtype=bool)
    n = len(rows)
    b1, b2 = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    v1, v2 = np.zeros(n), np.zeros(n)

    def rank(sel: np.ndarray) -> None:
        sub = np.where(alive[None, :], cost[sel], np.inf)
        local = np.arange(len(sel))
        first = np.argmin(sub, axis=1)
        v1[sel], b1[sel] = sub[local, first], first
        sub[local, first] = np.inf
        second = np.argmin(sub, axis=1)
        v2[sel], b2[sel] = sub[local, second], second

    rank(np.arange(n))
    total = float(np.sum(row_w * v1))
    for count in range(len(cols), 1, -1):
        loss = np.bincount(b1, weights=row_w * (v2 - v1), minlength=len(cols))
        loss[~alive] = np.inf
        loss[corner] = np.inf
        drop = int(np.argmin(loss))
        if count <= budget and not total + loss[drop] <= target:
            break
        alive[drop] = False
        total += float(loss[drop])
        hit = np.flatnonzero((b1 == drop) | (b2 == drop))
        if hit.size:
            rank(hit)
    return alive, float(np.sum(row_w * v1))


def _allocations(sizes: list[int], targets: list[int]) -> list[tuple[int, ...]]:
    """Per-dimension counts (k_0..k_{d-1}), k_i <= sizes[i], with a product near each target:
    the first d-1 counts from the ladder, the last one filling up to the target."""
    ladders = [sorted({k for k in _COUNT_LADDER if k < n} | {n}) for n in sizes[:-1]]
    out = set()
    for prefix in itertools.product(*ladders):
        p = math.prod(prefix)
        out.update((*prefix, min(sizes[-1], -(-t // p))) for t in targets if p <= max(targets))
    return sorted(out)


def _fit_nd(
    uniq: np.ndarray, uw: np.ndarray, maxes: np.ndarray, budget: int, target: float = -np.inf
) -> tuple[list[tuple[int, ...]], float]:
    """Heuristic buckets for unique rounded shapes ``uniq`` (weights ``uw``): (buckets, work).

    At most ``budget`` buckets. With a finite ``target`` (padded work), prefer the fewest
    buckets whose work is <= target, then the least work; otherwise just the least work.
    """
    d = uniq.shape[1]
    corner = tuple(int(v) for v in maxes)
    occupied = np.unique(np.vstack([uniq, [corner]]), axis=0)
    candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if len(occupied) <= budget:
        # Every rounded shape fits as its own bucket: the floor, or a start for the target.
        candidates.append((uniq, uw, occupied))
    else:
        # Per dimension: distinct values (max included), each shape's index among them, and
        # exact 1-D fits of the marginal, weighted by padded work: padding one dimension
        # costs in proportion to the product of the shape's other dimensions.
        marg, index, layers, sizes = [], [], [], []
        for axis in range(d):
            vals = np.union1d(uniq[:, axis], [corner[axis]])
            idx = np.searchsorted(vals, uniq[:, axis])
            other = work_many(np.delete(uniq, axis, axis=1))
            marg.append(vals)
            index.append(idx)
            layers.append(_Layers(vals.astype(np.float64), np.bincount(idx, uw * other, vals.size)))
            sizes.append(vals.size)
        # Bigger grids give the greedy more to choose from (a few % less waste per doubling)
        # but cost time; 2-D has few allocations per target, so it can afford more doublings.
        factors = (1, 2, 4, 8, 16) if d == 2 else (1, 2, 4)
        targets = [budget * f for f in factors if budget * f <= max(budget, _MAX_FIT_BUCKETS)]
        for alloc in _allocations(sizes, targets):
            cell = np.zeros(len(uniq), dtype=np.int64)
            grids = []
            for axis, k in enumerate(alloc):
                while len(layers[axis].costs) < k:
                    layers[axis].add()
                grid = np.array(layers[axis].solution(k), dtype=np.int64)
                # Each distinct marginal value's grid index, then each shape's flat cell id.
                cell = cell * len(grid) + np.searchsorted(grid, marg[axis])[index[axis]]
                grids.append(grid)
            flat = np.unique(cell)
            row_w = np.bincount(np.searchsorted(flat, cell), weights=uw)
            rows = np.stack([g[i] for g, i in zip(grids, np.unravel_index(flat, alloc))], axis=1)
            candidates.append((rows, row_w, np.unique(np.vstack([rows, [corner]]), axis=0)))
    best: tuple[tuple[bool, int, float] | tuple[float, int], np.ndarray, float] | None = None
    for rows, row_w, cols in candidates:
        corner_idx = int(np.flatnonzero(np.all(cols == corner, axis=1))[0])
        if len(cols) > budget or target > -np.inf:
            alive, total = _prune(rows, row_w, cols, corner_idx, budget, target)
            cols = cols[alive]
        else:
            total = float(np.sum(row_w * work_many(rows)))
        key = (total > target, len(cols), total) if target > -np.inf else (total, len(cols))
        if best is None or key < best[0]:
            best = (key, cols, total)
    assert best is not None
    return [tuple(b) for b in best[1].tolist()], best[2]


def _per_dim(value: int | Sequence[int], d: int, what: str) -> list[int]:
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    if len(items) == 1 and d == 1:
        return [int(items[0])]
    if len(items) != d:
        raise ConfigError(f"{what} has {len(items)} entries; give one per dimension ({d})")
    return [int(v) for v in items]


def fit(
    shapes: Any,
    *,
    steps: int | Sequence[int],
    maxes: int | Sequence[int],
    max_buckets: int | None = None,
    max_waste: float | None = None,
    dims: Sequence[str] | None = None,
    weights: Any = None,
) -> BucketSet:
    """A BucketSet fitted to ``shapes``: an (n, d) array, or n values for one dimension.

    Contract:
      - ``steps`` / ``maxes``: one int per dimension (a plain int when d == 1). Shapes above
        any max are dropped as uncoverable; the corner bucket (the maxes) is always kept.
      - d == 1 is ``fit_1d``. d >= 2 is a heuristic for least total padded work: grids of
        exact per-dimension fits with 1-4x (2-D: 1-16x) the budget in cells, greedily pruned.
      - ``max_buckets``: at most that many. ``max_waste``: the budget doubles from 1 until a
        fit meets the target, whose greedy then drops buckets while it still does (few, not
        provably fewest); ConfigError if every rounded shape, or 4096 buckets, miss it.
      - ConfigError for bad steps, maxes, budgets, negative sizes or no coverable shape.
    """
    _check_budget(max_buckets, max_waste)
    arr = np.asarray(shapes)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ConfigError(f"shapes has shape {np.shape(shapes)}; give an (n, d) array or n values")
    d = arr.shape[1]
    step_l, max_l = _per_dim(steps, d, "steps"), _per_dim(maxes, d, "maxes")
    if d == 1:
        values = fit_1d(arr[:, 0], step_l[0], max_l[0], max_buckets=max_buckets, max_waste=max_waste, weights=weights)
        return BucketSet(values, dims)
    for name, given in (("steps", step_l), ("maxes", max_l)):
        if min(given) < 1:
            raise ConfigError(f"{name} {given} has a value < 1; give values >= 1")
        if max(given) > MAX_BUCKET_VALUE:
            raise ConfigError(f"{name} {given} has a value above 2**53; sizes must be at most {MAX_BUCKET_VALUE}")
    arr = _int_array(arr, "shapes")
    w = _weight_array(weights, len(arr)).astype(np.float64)
    step_a, max_a = np.array(step_l, dtype=np.int64), np.array(max_l, dtype=np.int64)
    keep = np.all(arr <= max_a, axis=1) & (w > 0)
    if not keep.any():
        raise ConfigError(f"no shape is <= maxes {max_l} with a positive weight; raise maxes or check the trace")
    arr, w = arr[keep], w[keep]
    rounded = np.minimum(-(-arr // step_a) * step_a, max_a)
    uniq, inv = np.unique(rounded, axis=0, return_inverse=True)
    uw = np.bincount(inv.ravel(), weights=w)
    if max_buckets is not None:
        return BucketSet(_fit_nd(uniq, uw, max_a, max_buckets)[0], dims)
    assert max_waste is not None
    real, floor = float(np.sum(w * work_many(arr))), float(np.sum(uw * work_many(uniq)))
    if _waste_of(floor, real) > max_waste:
        raise ConfigError(
            f"max_waste {max_waste} is below {_waste_of(floor, real):.6g}, the waste with every "
            "rounded shape as a bucket; raise max_waste or use smaller steps"
        )
    # Work allowed by the target; the tiny slack keeps float rounding from rejecting the floor.
    target = (1.0 + max_waste) * real * (1 + 1e-12) if real > 0 else np.inf
    budget = 1
    while True:
        buckets, total = _fit_nd(uniq, uw, max_a, budget, target)
        if total <= target:
            return BucketSet(buckets, dims)
        if budget >= _MAX_FIT_BUCKETS:
            raise ConfigError(
                f"max_waste {max_waste} is not met with {_MAX_FIT_BUCKETS} buckets; raise max_waste or maxes"
            )
        budget = min(2 * budget, _MAX_FIT_BUCKETS)


def waste(buckets: BucketSet, shapes: Any, weights: Any = None) -> float:
    """Padding waste of ``shapes`` in ``buckets``: sum(padded work) / sum(real work) - 1.

    Covered shapes only (a miss has no padded work). Real work is ``work_many`` (zeros count
    as 1), as in ``workload.evaluate``; 0.0 when nothing is covered. ``shapes`` is (n, d), or n values for a 1-D set.
    """
    arr = np.asarray(shapes)
    if arr.ndim == 1 and buckets.ndim == 1:
        arr = arr[:, None]
    idx = buckets.lookup_many(arr)
    w = _weight_array(weights, len(idx)).astype(np.float64)
    covered = idx >= 0
    padded = float(np.sum(w * buckets.padded_work_many(idx)))
    real = float(np.sum((w * work_many(arr))[covered]))
    return _waste_of(padded, real)
