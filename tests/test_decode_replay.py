"""Tests for warmgraph.bucketing.decode_replay: simulate_decode against a step-by-step engine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgraph.bucketing import BucketSet
from warmgraph.bucketing.decode_replay import DecodeTrace, simulate_decode
from warmgraph.bucketing.workload import WorkloadReport, evaluate, read_requests
from warmgraph.errors import ConfigError

WORKLOADS = Path(__file__).resolve().parents[2] / "shared" / "workloads"
CONV = WORKLOADS / "azure_llm_inference_2023_conv.csv"
needs_traces = pytest.mark.skipif(not WORKLOADS.is_dir(), reason="shared/workloads is not checked out")


# -- simulate_decode -------------------------------------------------------------------------


def naive_decode(
    ctx: list[int], gen: list[int], max_num_seqs: int, block_size: int, max_model_len: int | None = None
) -> tuple[list[tuple[int, int]], int, int]:
    """Step the engine one step at a time, as the docstring of simulate_decode describes it."""
    queue = [(c, g) for c, g in zip(ctx, gen) if max_model_len is None or c + g <= max_model_len]
    rejected = len(ctx) - len(queue)
    running: list[list[int]] = []  # [context, generated target, tokens produced so far]
    shapes, steps = [], 0
    while queue or running:
        steps += 1
        admitted = []
        while queue and len(running) + len(admitted) < max_num_seqs:
            c, g = queue.pop(0)
            admitted.append([c, g, 1])  # prefill produces the first token
        if running:
            # KV length: the prompt plus every token produced before this step.
            blocks = sum(math.ceil((c + produced) / block_size) for c, _, produced in running)
            shapes.append((len(running), blocks))
            for r in running:
                r[2] += 1
        running = [r for r in running + admitted if r[2] < r[1]]
    return shapes, rejected, steps


def as_tuples(trace: DecodeTrace) -> list[tuple[int, int]]:
    return [(int(b), int(k)) for b, k in trace.shapes]


def test_decode_hand_example_one_slot() -> None:
    # A: 3 prompt tokens, 4 generated -> decodes at KV lengths 4, 5, 6 (blocks 1, 2, 2)
    # B: 6 prompt tokens, 3 generated -> admitted after A frees its slot, KV lengths 7, 8
    trace = simulate_decode([3, 6], [4, 3], max_num_seqs=1, block_size=4)
    assert as_tuples(trace) == [(1, 1), (1, 2), (1, 2), (1, 2), (1, 2)]
    assert trace.steps == 5 and trace.scheduler_steps == 7 and trace.rejected == 0
    assert trace.shapes.dtype == np.int64 and trace.shapes.shape == (5, 2)


def test_decode_hand_example_two_slots() -> None:
    trace = simulate_decode([3, 6], [4, 3], max_num_seqs=2, block_size=4)
    assert as_tuples(trace) == [(2, 1 + 2), (2, 2 + 2), (1, 2)]
    assert trace.scheduler_steps == 4


def test_decode_single_token_requests_never_decode() -> None:
    trace = simulate_decode([5, 7, 9], [1, 0, 1], max_num_seqs=2, block_size=4)
    assert trace.steps == 0 and trace.shapes.shape == (0, 2) and trace.scheduler_steps == 2


def test_decode_one_slot_steps() -> None:
    rng = np.random.default_rng(1)
    ctx, gen = rng.integers(0, 500, 300), rng.integers(0, 60, 300)
    trace = simulate_decode(ctx, gen, max_num_seqs=1, block_size=16)
    assert trace.steps == int(np.maximum(gen - 1, 0).sum())
    assert (trace.shapes[:, 0] == 1).all()


def test_decode_batch_limited_by_max_num_seqs() -> None:
    rng = np.random.default_rng(2)
    ctx, gen = rng.integers(1, 2000, 2000), rng.integers(1, 300, 2000)
    trace = simulate_decode(ctx, gen, max_num_seqs=64, block_size=128)
    assert trace.shapes[:, 0].max() <= 64
    assert (trace.shapes[:, 0] == 64).mean() > 0.5  # saturated: mostly full batches
    # Every decode token is in exactly one step, whatever the batching.
    assert trace.shapes[:, 0].sum() == np.maximum(gen - 1, 0).sum()


def test_decode_rejects_over_max_model_len() -> None:
    trace = simulate_decode([10, 100, 50], [5, 30, 50], max_num_seqs=4, block_size=8, max_model_len=100)
    assert trace.rejected == 1
    assert trace.shapes[:, 0].sum() == 4 + 49
    none = simulate_decode([10], [5], max_num_seqs=1, block_size=8, max_model_len=14)
    assert none.rejected == 1 and none.steps == 0 and none.scheduler_steps == 0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (([1], [1]), {"max_num_seqs": 0, "block_size": 4}),
        (([1], [1]), {"max_num_seqs": 1, "block_size": 0}),
        (([1], [1]), {"max_num_seqs": 1.5, "block_size": 4}),
        (([1], [1]), {"max_num_seqs": 1, "block_size": 4, "max_model_len": 0}),
        (([1, 2], [1]), {"max_num_seqs": 1, "block_size": 4}),
        (([-1], [1]), {"max_num_seqs": 1, "block_size": 4}),
        (([1], [-1]), {"max_num_seqs": 1, "block_size": 4}),
        (([1.5], [1]), {"max_num_seqs": 1, "block_size": 4}),
        (([[1]], [[1]]), {"max_num_seqs": 1, "block_size": 4}),
    ],
)
def test_decode_validates(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        simulate_decode(*args, **kwargs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 25)), max_size=15),
    st.integers(1, 6),
    st.integers(1, 9),
    st.one_of(st.none(), st.integers(1, 60)),
)
def test_decode_matches_naive(
    requests: list[tuple[int, int]], max_num_seqs: int, block_size: int, max_model_len: int | None
) -> None:
    ctx = [c for c, _ in requests]
    gen = [g for _, g in requests]
    want, rejected, steps = naive_decode(ctx, gen, max_num_seqs, block_size, max_model_len)
    got = simulate_decode(
        np.array(ctx, dtype=np.int64),
        np.array(gen, dtype=np.int64),
        max_num_seqs=max_num_seqs,
        block_size=block_size,
        max_model_len=max_model_len,
    )
    assert as_tuples(got) == want
    assert got.rejected == rejected and got.steps == len(want) and got.scheduler_steps == steps


@needs_traces
def test_decode_real_trace() -> None:
    ctx, gen = read_requests(CONV)
    trace = simulate_decode(ctx, gen, max_num_seqs=256, block_size=128)
    assert trace.shapes[:, 0].max() == 256
    assert trace.shapes[:, 0].sum() == np.maximum(gen - 1, 0).sum()
    buckets = BucketSet([(b, k) for b in (64, 128, 256) for k in range(128, 4097, 128)])
    report = evaluate(buckets, trace.shapes)
    assert isinstance(report, WorkloadReport) and report.hit_rate > 0.9
