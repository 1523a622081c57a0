"""BucketSet: the shapes that get a compiled graph, and the lookup from a real shape to one.

A bucket is a tuple of non-negative ints, one per named dimension, for example
``(batch, query_len, ctx_blocks)`` for a prompt step as vllm-gaudi shapes it. A shape is
*covered* by a bucket when it is no larger in every dimension; running it in that bucket
costs the bucket's padded work: the product of its dimensions, with a zero dimension
counted as 1 (a prompt bucket with no context blocks still costs batch x query_len; a plain
product would call it free and every such bucket would tie).

``lookup`` returns the covering bucket with the least padded work (ties go to the
lexicographically smallest bucket). vllm-gaudi's runtime instead takes the lexicographic
first fit, which minimises batch first and can pick a far larger bucket; we do not.

How lookup stays fast: only the per-dimension order of a shape matters. Map each dimension
of the shape to the index of the first bucket value >= it (a bisect). The answer depends
only on that grid cell, so we precompute it for every cell with a suffix minimum over the
grid, once, on first use. A lookup is then d bisects and one list index.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum

import numpy as np

from warmgraph.bucketing.limits import MAX_BUCKET_VALUE
from warmgraph.errors import BucketMissError, ConfigError

Bucket = tuple[int, ...]

# Above this many grid cells the dense table would cost too much memory; cells are then
# solved lazily and memoised.
_DENSE_CELL_LIMIT = 4_000_000

_DEFAULT_DIMS: dict[int, tuple[str, ...]] = {
    1: ("size",),
    2: ("batch", "blocks"),
    3: ("batch", "query_len", "ctx_blocks"),
}


class MissPolicy(str, Enum):
    """What to do with a shape that no bucket covers."""

    EAGER = "eager"  # no bucket: the caller runs uncompiled and counts it
    COMPILE = "compile"  # derive a bucket with vllm-gaudi's fallback rule; the caller adds it
    ERROR = "error"  # raise BucketMissError naming the shape and the largest bucket

    @classmethod
    def parse(cls, value: MissPolicy | str) -> MissPolicy:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise ConfigError(f"miss policy {value!r} is unknown; use one of: {allowed}") from None


def calc_fallback_value(n: int, base_step: int) -> int:
    """vllm-gaudi's rule for a bucket value that was not planned.

    The value is rounded up to a multiple of ``ceil(n ** (1/3)) * base_step``: gaps grow
    with the value, but more slowly than exponential spacing. 0 and 1 stay as they are.
    Examples from vllm-gaudi: (31, 32) -> 128, (4001, 32) -> 4096, (3, 2) -> 4.
    """
    if n <= 1:
        return n
    size = math.ceil(math.pow(n, 1 / 3)) * base_step
    return math.ceil(n / size) * size


def work(shape: Sequence[int]) -> int:
    """Work of a shape or bucket: the product of its dimensions, zeros counted as 1."""
    return math.prod(v if v > 0 else 1 for v in shape)


def work_many(shapes: np.ndarray) -> np.ndarray:
    """``work`` of each row of an (n, d) array, as float64."""
    return np.prod(np.maximum(shapes, 1), axis=1, dtype=np.float64)


def default_dims(ndim: int) -> tuple[str, ...]:
    """Dimension names used when none are given: vllm-gaudi's for 1, 2 and 3 dimensions."""
    return _DEFAULT_DIMS.get(ndim, tuple(f"d{i}" for i in range(ndim)))


def _as_bucket(value: int | Sequence[int], ndim: int | None, what: str) -> Bucket:
    items = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{what} {value!r} has a non-integer value {v!r}; buckets are tuples of ints")
        if v < 0:
            raise ConfigError(f"{what} {value!r} has a negative value {v}; sizes must be >= 0")
        if v > MAX_BUCKET_VALUE:
            raise ConfigError(f"{what} {value!r} has a value {v} above 2**53; sizes must be at most {MAX_BUCKET_VALUE}")
        out.append(int(v))
    if not out:
        raise ConfigError(f"{what} {value!r} is empty; give at least one dimension")
    if ndim is not None and len(out) != ndim:
        raise ConfigError(f"{what} {value!r} has {len(out)} dimensions, expected {ndim}")
    return tuple(out)


class BucketSet:
    """A sorted, immutable set of N-dimensional buckets with named dimensions.

    Contract:
      - ``buckets`` is sorted lexicographically and has no duplicates; it never changes.
      - ``lookup(shape)`` returns the covering bucket of least padded work, or applies the
        miss policy. It does not modify the set: with ``compile`` it returns the derived
        bucket and the caller keeps it with ``with_buckets``.
      - ``lookup_many`` answers many shapes at once with numpy, for simulation.
    """

    __slots__ = (
        "_buckets",
        "_dims",
        "_fallback_steps",
        "_grid",
        "_grid_np",
        "_lazy",
        "_members",
        "_strides",
        "_table",
        "_table_arr",
    )

    def __init__(
        self,
        buckets: Iterable[int | Sequence[int]],
        dims: Sequence[str] | None = None,
        fallback_steps: Sequence[int] | None = None,
    ) -> None:
        items = list(buckets)
        if not items:
            raise ConfigError("a bucket set needs at least one bucket; the strategy or file produced none")
        ndim = len(dims) if dims is not None else None
        parsed = {_as_bucket(b, ndim, "bucket") for b in items}
        first = next(iter(parsed))
        ndim = len(first)
        if any(len(b) != ndim for b in parsed):
            raise ConfigError("buckets have different numbers of dimensions; give them all the same length")
        self._buckets: tuple[Bucket, ...] = tuple(sorted(parsed))
        self._members = frozenset(parsed)
        self._dims: tuple[str, ...] = tuple(dims) if dims is not None else default_dims(ndim)
        if len(set(self._dims)) != ndim:
            raise ConfigError(f"dimension names {self._dims} must be {ndim} distinct names")
        if fallback_steps is None:
            # vllm-gaudi's base steps: 2 for batch sizes, 32 for tokens and blocks.
            fallback_steps = [2 if name == "batch" else 32 for name in self._dims]
        if len(fallback_steps) != ndim or any(int(s) < 1 for s in fallback_steps):
            raise ConfigError(f"fallback_steps {fallback_steps} must be {ndim} positive ints")
        self._fallback_steps = tuple(int(s) for s in fallback_steps)
        self._grid: tuple[list[int], ...] | None = None
        self._grid_np: tuple[np.ndarray, ...] = ()
        self._strides: tuple[int, ...] = ()
        self._table: list[int] | None = None
        self._table_arr: np.ndarray | None = None
        self._lazy: dict[int, int] | None = None

    # -- the set ---------------------------------------------------------------------------

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return self._buckets

    @property
    def dims(self) -> tuple[str, ...]:
        return self._dims

    @property
    def ndim(self) -> int:
        return len(self._dims)

    def __len__(self) -> int:
        return len(self._buckets)

    def __iter__(self) -> Iterator[Bucket]:
        return iter(self._buckets)

    def __contains__(self, bucket: object) -> bool:
        if isinstance(bucket, int):
            bucket = (bucket,)
        return bucket in self._members

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketSet) and (self._dims, self._buckets) == (other._dims, other._buckets)

    def __hash__(self) -> int:
        return hash((self._dims, self._buckets))

    def __repr__(self) -> str:
        shown = ", ".join(str(b) for b in self._buckets[:6])
        more = f", ... {len(self) - 6} more" if len(self) > 6 else ""
        return f"BucketSet(dims={self._dims}, [{shown}{more}])"

    def values(self, dim: int | str = 0) -> list[int]:
        """Sorted distinct values that buckets take on one dimension."""
        axis = self._dims.index(dim) if isinstance(dim, str) else dim
        return sorted({b[axis] for b in self._buckets})

    def to_list(self) -> list[list[int]] | list[int]:
        """Plain lists for JSON: ints for a 1-D set, lists of ints otherwise."""
        if self.ndim == 1:
            return [b[0] for b in self._buckets]
        return [list(b) for b in self._buckets]

    @staticmethod
    def padded_work(bucket: Sequence[int]) -> int:
        """The work a call costs in this bucket: see ``work``."""
        return work(bucket)

    @property
    def largest(self) -> Bucket:
        """The bucket with the most padded work (the last such in sorted order)."""
        return max(self._buckets, key=lambda b: (work(b), b))

    def with_buckets(self, *buckets: int | Sequence[int]) -> BucketSet:
        """A new set with these buckets added (the set itself never changes)."""
        return BucketSet([*self._buckets, *buckets], self._dims, self._fallback_steps)

    def fallback_bucket(self, shape: int | Sequence[int]) -> Bucket:
        """The bucket vllm-gaudi would derive for an uncovered shape (``calc_fallback_value``)."""
        s = _as_bucket(shape, self.ndim, "shape")
        return tuple(calc_fallback_value(v, step) for v, step in zip(s, self._fallback_steps))

    # -- lookup ----------------------------------------------------------------------------

    def lookup(self, shape: int | Sequence[int], miss: MissPolicy | str = MissPolicy.EAGER) -> Bucket | None:
        """The covering bucket with the least padded work.

        With no covering bucket: ``eager`` returns None, ``compile`` returns the fallback
        bucket (not yet in the set), ``error`` raises BucketMissError.
        """
        if self._grid is None:
            self._build()
        grid = self._grid
        assert grid is not None
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        if len(shape) != len(grid):
            raise ConfigError(
                f"shape {tuple(shape)} has {len(shape)} dimensions, expected {len(grid)} {self._dims}"
            )
        flat = 0
        for values, stride, v in zip(grid, self._strides, shape):
            i = bisect.bisect_left(values, v)
            if i == len(values):
                return self._miss(shape, miss)
            flat += i * stride
        best = self._table[flat] if self._table is not None else self._solve_cell(flat)
        if best < 0:
            return self._miss(shape, miss)
        return self._buckets[best]

    def _miss(self, shape: Sequence[int], miss: MissPolicy | str) -> Bucket | None:
        policy = miss if isinstance(miss, MissPolicy) else MissPolicy.parse(miss)
        if policy is MissPolicy.EAGER:
            return None
        if policy is MissPolicy.COMPILE:
            return self.fallback_bucket(shape)
        raise BucketMissError(
            f"shape {tuple(shape)} {self._dims} fits no bucket; the largest is {self.largest}. "
            "Add a bigger bucket or use miss policy 'eager' or 'compile'"
        )

    def lookup_many(self, shapes: np.ndarray | Sequence[Sequence[int]] | Sequence[int]) -> np.ndarray:
        """Indices into ``buckets`` for many shapes at once; -1 where no bucket covers.

        ``shapes`` is an (n, ndim) array, or a 1-D array of n values for a 1-D set.
        """
        if self._grid is None:
            self._build()
        arr = np.asarray(shapes)
        if arr.ndim == 1 and self.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != self.ndim:
            raise ConfigError(f"shapes must be an (n, {self.ndim}) array, got shape {arr.shape}")
        n = arr.shape[0]
        flat = np.zeros(n, dtype=np.int64)
        missing = np.zeros(n, dtype=bool)
        for axis, (values, stride) in enumerate(zip(self._grid_np, self._strides)):
            idx = np.searchsorted(values, arr[:, axis], side="left")
            missing |= idx == len(values)
            flat += np.minimum(idx, len(values) - 1) * stride
        if self._table is not None:
            table = self._table_np()
            out = table[flat]
        else:
            uniq, inverse = np.unique(flat, return_inverse=True)
            solved = np.array([self._solve_cell(int(c)) for c in uniq], dtype=np.int64)
            out = solved[inverse]
        out = np.where(missing, -1, out)
        return out

    def padded_work_many(self, indices: np.ndarray) -> np.ndarray:
        """Padded work of the buckets at these indices (0 where the index is -1)."""
        costs = np.array([work(b) for b in self._buckets], dtype=np.float64)
        return np.where(indices >= 0, costs[np.maximum(indices, 0)], 0.0)

    def as_array(self) -> np.ndarray:
        """The buckets as an (n, ndim) int64 array, in sorted order."""
        return np.array(self._buckets, dtype=np.int64).reshape(len(self), self.ndim)

    # -- the precomputed grid --------------------------------------------------------------

    def _build(self) -> None:
        grid = tuple(self.values(axis) for axis in range(self.ndim))
        sizes = [len(v) for v in grid]
        strides = [1] * self.ndim
        for axis in range(self.ndim - 2, -1, -1):
            strides[axis] = strides[axis + 1] * sizes[axis + 1]
        self._grid_np = tuple(np.array(v, dtype=np.int64) for v in grid)
        self._strides = tuple(strides)
        if math.prod(sizes) <= _DENSE_CELL_LIMIT:
            self._table = self._dense_table(grid, sizes)
        else:
            self._lazy = {}
        self._grid = grid

    def _rank_order(self) -> list[int]:
        """Bucket indices sorted by (padded work, bucket): position = preference."""
        buckets = self._buckets
        return sorted(range(len(buckets)), key=lambda i: (work(buckets[i]), buckets[i]))

    def _dense_table(self, grid: tuple[list[int], ...], sizes: list[int]) -> list[int]:
        order = self._rank_order()
        none = len(order)
        table = np.full(sizes, none, dtype=np.int64)
        positions = [{v: i for i, v in enumerate(values)} for values in grid]
        for rank, b_idx in enumerate(order):
            cell = tuple(pos[v] for pos, v in zip(positions, self._buckets[b_idx]))
            if table[cell] > rank:
                table[cell] = rank
        # A bucket covers every cell at or below it in all dimensions: a reversed running
        # minimum along each axis spreads each bucket's rank down to the cells it covers.
        for axis in range(len(sizes)):
            flipped = np.flip(table, axis=axis)
            table = np.flip(np.minimum.accumulate(flipped, axis=axis), axis=axis)
        order_np = np.array([*order, -1], dtype=np.int64)
        return order_np[table.ravel()].tolist()

    def _table_np(self) -> np.ndarray:
        if self._table_arr is None:
            self._table_arr = np.array(self._table, dtype=np.int64)
        return self._table_arr

    def _solve_cell(self, flat: int) -> int:
        assert self._lazy is not None
        hit = self._lazy.get(flat)
        if hit is not None:
            return hit
        floor = []
        rest = flat
        for values, stride in zip(self._grid, self._strides):
            i, rest = divmod(rest, stride)
            floor.append(values[i])
        best, best_key = -1, None
        for i, b in enumerate(self._buckets):
            if all(bv >= fv for bv, fv in zip(b, floor)):
                key = (work(b), b)
                if best_key is None or key < best_key:
                    best, best_key = i, key
        self._lazy[flat] = best
        return best
