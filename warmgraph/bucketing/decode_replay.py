"""Replaying requests as decode steps: the shapes continuous batching gives a trace.

Step 2 of ``workload``: ``simulate_decode`` (re-exported there) replays the requests the way
vLLM and vllm-gaudi schedule them and returns a ``DecodeTrace`` of ``(batch, total_blocks)``
shapes, one per decode step. Pure Python and numpy: never import torch here.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from warmgraph.errors import ConfigError

# -- replaying a trace as decode steps --------------------------------------------------------


@dataclass(frozen=True)
class DecodeTrace:
    """The decode steps of a simulated run.

    ``shapes`` is (steps, 2) int64, one ``(batch, total_blocks)`` row per step that had at
    least one decoding sequence, in time order. ``steps == len(shapes)``.
    ``scheduler_steps`` counts every engine step, including those that only ran prefills.
    ``rejected`` is the number of requests skipped for exceeding ``max_model_len``.
    """

    shapes: np.ndarray
    rejected: int
    steps: int
    scheduler_steps: int


def simulate_decode(
    context: np.ndarray | Sequence[int],
    generated: np.ndarray | Sequence[int],
    *,
    max_num_seqs: int,
    block_size: int,
    max_model_len: int | None = None,
) -> DecodeTrace:
    """Decode shapes of a saturated continuous-batching run over the requests.

    Model (vLLM / vllm-gaudi, no preemption, no prefix caching, unlimited KV blocks):
      - All requests are queued at the start, in trace order; arrival timestamps are
        ignored, so the engine is always saturated: this gives the largest batches the
        trace can produce, not the ones a real arrival rate would.
      - Each step first admits queued requests into free slots, up to ``max_num_seqs``
        running. An admitted request is prefilled that step (no decode) and that produces
        its first token.
      - Then every request that was running before this step decodes one token. A request
        finishes once it has produced ``generated`` tokens, so it decodes
        ``generated - 1`` times (never when ``generated <= 1``), and frees its slot at the
        end of the step it finishes in.
      - Requests with ``context + generated > max_model_len`` are skipped and counted.

    Each step with at least one decoding sequence emits ``(batch, total_blocks)``:
    ``batch`` decoding sequences and ``total_blocks = sum(ceil(current_len / block_size))``
    over them. ``current_len`` is the KV-cache length the step attends over: ``context +
    k`` in a request's k-th decode step (k = 1 .. generated-1), that is the prompt plus the
    k tokens generated before this step; the last of them is this step's input token,
    whose KV is written this step. The token this step samples is not counted. This is
    vllm-gaudi's ``ceil((num_computed_tokens + 1) / block_size)`` per sequence, summed
    into the num_blocks of its decode bucket ``(bs, 1, num_blocks)``.
    """
    ctx, gen = _check_requests(context, generated)
    _check_positive("max_num_seqs", max_num_seqs)
    _check_positive("block_size", block_size)
    rejected = 0
    if max_model_len is not None:
        _check_positive("max_model_len", max_model_len)
        keep = ctx + gen <= max_model_len
        rejected = int(np.count_nonzero(~keep))
        ctx, gen = ctx[keep], gen[keep]
    if ctx.size == 0:
        return DecodeTrace(np.zeros((0, 2), dtype=np.int64), rejected, 0, 0)

    # Rather than stepping the engine, compute when each request is admitted, then add up
    # every request's per-step contribution with difference arrays. Cost is linear in
    # requests plus steps, so even max_num_seqs=1 over a large trace stays fast.
    admit = _admission_steps(gen, int(max_num_seqs))
    life = np.maximum(gen, 1)  # steps a request holds its slot: prefill + generated-1 decodes
    scheduler_steps = int((admit + life - 1).max())

    dec = gen >= 2
    a, c, g = admit[dec], ctx[dec], gen[dec]
    first, stop = a + 1, a + g  # decode steps are first .. stop-1 (k = step - a)
    bs = int(block_size)
    size = scheduler_steps + 2
    batch = np.zeros(size, dtype=np.int64)
    np.add.at(batch, first, 1)
    np.add.at(batch, stop, -1)

    # A request's blocks ceil((c + k) / bs) start at ceil((c + 1) / bs), grow by one at each
    # k >= 2 where c + k - 1 is a multiple of bs, and leave the sum after k = g - 1.
    blocks = np.zeros(size, dtype=np.int64)
    np.add.at(blocks, first, _ceil_div(c + 1, bs))
    np.add.at(blocks, stop, -_ceil_div(c + g - 1, bs))
    k0 = 2 + (-(c + 1)) % bs  # first k >= 2 with (c + k - 1) % bs == 0
    count = np.where(k0 <= g - 1, (g - 1 - k0) // bs + 1, 0)
    total = int(count.sum())
    if total:
        group_start = np.repeat(np.cumsum(count) - count, count)
        m = np.arange(total, dtype=np.int64) - group_start
        np.add.at(blocks, np.repeat(a + k0, count) + m * bs, 1)
    batch = np.cumsum(batch)[1 : scheduler_steps + 1]
    blocks = np.cumsum(blocks)[1 : scheduler_steps + 1]
    live = batch > 0
    shapes = np.column_stack([batch[live], blocks[live]]).astype(np.int64, copy=False)
    return DecodeTrace(shapes, rejected, int(shapes.shape[0]), scheduler_steps)


def _ceil_div(x: np.ndarray, d: int) -> np.ndarray:
    return -(-x // d)


def _admission_steps(gen: np.ndarray, max_num_seqs: int) -> np.ndarray:
    """The step (1-based) at which each request is admitted, FIFO into the first free slot."""
    n, life = gen.size, np.maximum(gen, 1).tolist()
    m = min(n, max_num_seqs)
    # Heap of the steps at which the occupied slots become free. Each admission pushes a
    # time later than itself, so pops never go backwards and FIFO order is kept.
    free = [1 + life[i] for i in range(m)]
    heapq.heapify(free)
    out = [1] * n
    for i in range(m, n):
        t = free[0]
        out[i] = t
        heapq.heapreplace(free, t + life[i])
    return np.array(out, dtype=np.int64)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _check_requests(context: object, generated: object) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, values in (("context", context), ("generated", generated)):
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ConfigError(f"{name} must be a 1-D array of token counts, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ConfigError(f"{name} must hold integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise ConfigError(f"{name} has a negative token count ({arr.min()}); counts must be >= 0")
        arrays.append(arr)
    if arrays[0].size != arrays[1].size:
        raise ConfigError(
            f"context and generated have different lengths ({arrays[0].size} vs {arrays[1].size}); "
            "give one value of each per request"
        )
    return arrays[0], arrays[1]
