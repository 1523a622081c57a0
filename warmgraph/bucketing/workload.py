"""Workloads: read request traces, replay them as decode shapes, and score a bucket set on them.

Three steps turn a trace into a verdict on a bucket set:

1. ``read_trace`` / ``read_requests`` load the integer columns of a CSV or JSONL trace,
   for example the Azure LLM inference traces (``ContextTokens``, ``GeneratedTokens``).
2. ``simulate_decode`` replays the requests through continuous batching the way vLLM and
   vllm-gaudi schedule them and returns the ``(batch, total_blocks)`` shape of every
   decode step.
3. ``evaluate`` looks every shape up in a ``BucketSet`` and reports how many are covered
   and how much padded work the covering buckets cost.

Step 1 is in ``traces``, step 2 in ``decode_replay``, step 3 here; all of their public names
are importable from this module.

Pure Python and numpy, like the rest of ``warmgraph.bucketing``: never import torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from warmgraph.bucketing.buckets import BucketSet, work_many
from warmgraph.bucketing.decode_replay import DecodeTrace, simulate_decode
from warmgraph.bucketing.traces import SUPPORTED_EXTENSIONS, read_requests, read_trace
from warmgraph.errors import ConfigError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DecodeTrace",
    "WorkloadReport",
    "evaluate",
    "read_requests",
    "read_trace",
    "simulate_decode",
]


# -- scoring a bucket set ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadReport:
    """How well a bucket set serves a list of shapes.

    ``hit_rate`` is the share of shapes some bucket covers (1.0 when there are no shapes:
    none was missed). ``padding_waste`` is (padded work - real work) / real work summed over
    covered shapes; ``padding_p50`` / ``padding_p99`` are percentiles (numpy's linear
    interpolation) of the per-shape padding, padded minus real work, over covered shapes.
    All three are 0.0 when nothing is covered. Work is ``buckets.work``: the product
    of the dimensions, zeros counted as 1.
    """

    num_buckets: int
    num_shapes: int
    hit_rate: float
    padding_waste: float
    padding_p50: float
    padding_p99: float

    def to_dict(self) -> dict:
        """Plain ints and floats, ready for ``json.dumps``."""
        return {k: (int(v) if k.startswith("num_") else float(v)) for k, v in asdict(self).items()}


def evaluate(buckets: BucketSet, shapes: np.ndarray | Sequence) -> WorkloadReport:
    """Score ``buckets`` on ``shapes``, an (n, ndim) array (or n values for a 1-D set).

    Each shape runs in its least-work covering bucket (``BucketSet.lookup_many``).
    Work counts a zero dimension as 1, so every shape has positive work.
    """
    arr = np.asarray(shapes)
    if arr.size == 0:
        return WorkloadReport(len(buckets), 0, 1.0, 0.0, 0.0, 0.0)
    if arr.ndim == 1 and buckets.ndim == 1:
        arr = arr[:, None]
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"shapes must be integers, got dtype {arr.dtype}; round or cast them first")
    if arr.ndim != 2 or arr.shape[1] != buckets.ndim:
        raise ConfigError(f"shapes must be an (n, {buckets.ndim}) array for {buckets.dims}, got {arr.shape}")
    if arr.min() < 0:
        raise ConfigError("shapes contain a negative size; sizes must be >= 0")
    n = arr.shape[0]
    idx = buckets.lookup_many(arr)
    covered = idx >= 0
    hits = int(np.count_nonzero(covered))
    if hits == 0:
        return WorkloadReport(len(buckets), n, 0.0, 0.0, 0.0, 0.0)
    # float64: exact for work below 2**53, and never wraps around like int64 would.
    real = work_many(arr[covered])
    padded = buckets.padded_work_many(idx[covered])
    padding = padded - real
    real_sum, pad_sum = float(real.sum()), float(padding.sum())
    waste = pad_sum / real_sum if real_sum > 0 else (0.0 if pad_sum == 0 else math.inf)
    p50, p99 = np.percentile(padding, [50, 99])
    return WorkloadReport(len(buckets), n, hits / n, waste, float(p50), float(p99))
