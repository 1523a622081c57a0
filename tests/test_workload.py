"""Tests for warmgraph.bucketing.workload: trace reading, bucket scoring, decode replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgraph.bucketing import BucketSet
from warmgraph.bucketing.workload import (
    DecodeTrace,
    WorkloadReport,
    evaluate,
    read_requests,
    read_trace,
    simulate_decode,
)
from warmgraph.errors import ConfigError, TraceError

WORKLOADS = Path(__file__).resolve().parents[2] / "shared" / "workloads"
CONV = WORKLOADS / "azure_llm_inference_2023_conv.csv"
CODE = WORKLOADS / "azure_llm_inference_2023_code.csv"
needs_traces = pytest.mark.skipif(not WORKLOADS.is_dir(), reason="shared/workloads is not checked out")


# -- read_trace: the real traces ---------------------------------------------------------------


@needs_traces
@pytest.mark.parametrize("path", [CONV, CODE], ids=["conv", "code"])
def test_real_traces_load(path: Path) -> None:
    ctx, gen = read_requests(path)
    assert ctx.dtype == gen.dtype == np.int64
    assert ctx.shape == gen.shape
    assert len(ctx) > 8000
    assert (ctx > 0).all() and (gen > 0).all()
    both = read_trace(path, ["ContextTokens", "GeneratedTokens"])
    assert both.shape == (len(ctx), 2)
    np.testing.assert_array_equal(both[:, 0], ctx)
    one = read_trace(path, "GeneratedTokens")
    assert one.shape == (len(ctx),)
    np.testing.assert_array_equal(one, gen)


@needs_traces
def test_real_trace_row_counts() -> None:
    # Each file's line count less its header: the data rows, every one of them read.
    for path in (CONV, CODE):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        assert len(read_trace(path, "ContextTokens")) == len(lines) - 1


# -- read_trace: small files -----------------------------------------------------------------


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_small_csv(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "\ufeffTIMESTAMP, a ,b\nx,1,2\n\ny,3,40\n")
    np.testing.assert_array_equal(read_trace(p, "a"), [1, 3])
    out = read_trace(p, ("b", "a"))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[2, 1], [40, 3]])


def test_uppercase_extension_is_accepted(tmp_path: Path) -> None:
    p = write(tmp_path, "t.CSV", "a\n5\n")
    np.testing.assert_array_equal(read_trace(p, "a"), [5])


def test_jsonl(tmp_path: Path) -> None:
    rows = [{"c": 10, "g": 2, "note": "x"}, {"c": 0, "g": 7}]
    text = "\n" + json.dumps(rows[0]) + "\n   \n" + json.dumps(rows[1]) + "\n\n"
    p = write(tmp_path, "t.jsonl", text)
    np.testing.assert_array_equal(read_trace(p, "c"), [10, 0])
    np.testing.assert_array_equal(read_trace(p, ["c", "g"]), [[10, 2], [0, 7]])
    ctx, gen = read_requests(p, "c", "g")
    np.testing.assert_array_equal(ctx, [10, 0])
    np.testing.assert_array_equal(gen, [2, 7])


def trace_error(path: Path, columns: str | list[str] = "a") -> str:
    with pytest.raises(TraceError) as info:
        read_trace(path, columns)
    msg = str(info.value)
    assert "\n" not in msg, "messages must be one line"
    assert str(path) in msg, "messages must name the file"
    return msg


def test_missing_file(tmp_path: Path) -> None:
    msg = trace_error(tmp_path / "nope.csv")
    assert "does not exist" in msg


def test_unsupported_extension(tmp_path: Path) -> None:
    msg = trace_error(write(tmp_path, "t.txt", "a\n1\n"))
    assert "'.txt'" in msg and ".csv" in msg and ".jsonl" in msg


def test_not_utf8(tmp_path: Path) -> None:
    msg = trace_error(write(tmp_path, "t.csv", b"a\n\xff\xfe1\n"))
    assert "UTF-8" in msg and "0xff" in msg


def test_unreadable(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert "cannot be read" in trace_error(tmp_path / "dir.csv")


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl"])
@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty(tmp_path: Path, name: str, content: str) -> None:
    assert "empty" in trace_error(write(tmp_path, name, content))


def test_header_only(tmp_path: Path) -> None:
    assert "no data rows" in trace_error(write(tmp_path, "t.csv", "a,b\n"))


def test_missing_column_lists_existing(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nx,1,2\n")
    msg = trace_error(p, ["ContextTokens", "PromptTokens"])
    assert "'PromptTokens'" in msg
    assert "TIMESTAMP, ContextTokens, GeneratedTokens" in msg


def test_missing_key_jsonl(tmp_path: Path) -> None:
    p = write(tmp_path, "t.jsonl", '{"b": 1, "c": 2}\n')
    msg = trace_error(p)
    assert "'a'" in msg and "b, c" in msg
    p = write(tmp_path, "u.jsonl", '{"a": 1}\n{"b": 2}\n')
    msg = trace_error(p)
    assert "line 2" in msg and "'a'" in msg


@pytest.mark.parametrize(
    ("body", "line", "shown", "problem"),
    [
        ("a\n1\n12.5\n", 3, "'12.5'", "not an integer"),
        ("a\n1\n\n\nabc\n", 5, "'abc'", "not an integer"),
        ("a\n-4\n", 2, "'-4'", "negative"),
        ("a\n" + "9" * 25 + "\n", 2, "9999", "too large"),
    ],
)
def test_bad_csv_values(tmp_path: Path, body: str, line: int, shown: str, problem: str) -> None:
    msg = trace_error(write(tmp_path, "t.csv", body))
    assert f"line {line}" in msg and shown in msg and problem in msg and "'a'" in msg


def test_empty_field(tmp_path: Path) -> None:
    msg = trace_error(write(tmp_path, "t.csv", "a,b\n1,2\n,3\n"))
    assert "line 3" in msg and "not an integer" in msg


def test_short_row(tmp_path: Path) -> None:
    msg = trace_error(write(tmp_path, "t.csv", "a,b\n1,2\n3\n"), "b")
    assert "line 3" in msg and "1 fields" in msg


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"a": 1.5}', "not an integer"),
        ('{"a": 2.0}', "not an integer"),
        ('{"a": "3"}', "not an integer"),
        ('{"a": true}', "not an integer"),
        ('{"a": null}', "not an integer"),
        ('{"a": -1}', "negative"),
        ('{"a": 1', "not valid JSON"),
        ("[1, 2]", "not an object"),
    ],
)
def test_bad_jsonl(tmp_path: Path, line: str, problem: str) -> None:
    msg = trace_error(write(tmp_path, "t.jsonl", '{"a": 1}\n\n' + line + "\n"))
    assert "line 3" in msg and problem in msg


def test_bad_columns_argument(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "a\n1\n")
    with pytest.raises(ConfigError):
        read_trace(p, [])


# -- evaluate --------------------------------------------------------------------------------


def test_evaluate_hand_example() -> None:
    report = evaluate(BucketSet([4, 8]), [1, 4, 5, 9])
    assert report.num_buckets == 2 and report.num_shapes == 4
    assert report.hit_rate == 0.75
    # padded 4 + 4 + 8 = 16 over real 1 + 4 + 5 = 10; paddings 3, 0, 3
    assert report.padding_waste == pytest.approx(0.6)
    assert report.padding_p50 == 3.0
    assert report.padding_p99 == pytest.approx(np.percentile([3, 0, 3], 99))
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_evaluate_2d() -> None:
    buckets = BucketSet([(2, 8), (4, 4), (4, 16)])
    shapes = np.array([[1, 3], [2, 8], [3, 5], [4, 17], [3, 2]])
    report = evaluate(buckets, shapes)
    # (1,3)->(4,4) work 16 vs 3; (2,8)->(2,8) 16 vs 16; (3,5)->(4,16) 64 vs 15;
    # (4,17) misses; (3,2)->(4,4) 16 vs 6.
    assert report.hit_rate == 0.8
    assert report.padding_waste == pytest.approx((112 - 40) / 40)
    assert report.padding_p50 == pytest.approx(np.percentile([13, 0, 49, 10], 50))
    assert report.padding_p99 == pytest.approx(np.percentile([13, 0, 49, 10], 99))


def test_evaluate_nothing_covered_and_no_shapes() -> None:
    report = evaluate(BucketSet([4]), [5, 6])
    assert (report.hit_rate, report.padding_waste, report.padding_p50, report.padding_p99) == (0, 0, 0, 0)
    empty = evaluate(BucketSet([(1, 1)]), np.zeros((0, 2), dtype=np.int64))
    assert empty.num_shapes == 0 and empty.hit_rate == 1.0 and empty.padding_waste == 0.0


def test_evaluate_rejects_bad_shapes() -> None:
    with pytest.raises(ConfigError):
        evaluate(BucketSet([4]), [1.5, 2.0])
    with pytest.raises(ConfigError):
        evaluate(BucketSet([4]), [-1])
    with pytest.raises(ConfigError):
        evaluate(BucketSet([(4, 4)]), [[1, 2, 3]])


def test_evaluate_many_shapes() -> None:
    rng = np.random.default_rng(0)
    buckets = BucketSet([(b, k) for b in (1, 2, 4, 8, 16, 32, 64) for k in range(8, 2049, 8)])
    shapes = np.column_stack([rng.integers(1, 80, 1_000_000), rng.integers(1, 2100, 1_000_000)])
    report = evaluate(buckets, shapes)
    assert 0.7 < report.hit_rate < 1.0
    assert report.padding_waste > 0 and report.padding_p99 >= report.padding_p50 >= 0


def naive_percentile(values: list[float], q: float) -> float:
    """numpy's default ('linear') percentile, written out."""
    xs = sorted(values)
    rank = q / 100 * (len(xs) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def naive_evaluate(buckets: list[tuple[int, ...]], shapes: list[tuple[int, ...]]) -> dict:
    paddings, real_sum, padded_sum = [], 0, 0
    for s in shapes:
        works = [math.prod(b) for b in buckets if all(bv >= sv for bv, sv in zip(b, s))]
        if works:
            padded, real = min(works), math.prod(s)
            paddings.append(padded - real)
            real_sum += real
            padded_sum += padded
    hits = len(paddings)
    return {
        "hit_rate": hits / len(shapes),
        "padding_waste": (padded_sum - real_sum) / real_sum if hits else 0.0,
        "padding_p50": naive_percentile(paddings, 50) if hits else 0.0,
        "padding_p99": naive_percentile(paddings, 99) if hits else 0.0,
    }


@st.composite
def buckets_and_shapes(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    ndim = draw(st.integers(1, 3))
    dim = st.tuples(*[st.integers(1, 40)] * ndim)
    buckets = draw(st.lists(dim, min_size=1, max_size=12))
    shapes = draw(st.lists(dim, min_size=1, max_size=40))
    return buckets, shapes


@settings(max_examples=150, deadline=None)
@given(buckets_and_shapes())
def test_evaluate_matches_naive(case: tuple[list[tuple[int, ...]], list[tuple[int, ...]]]) -> None:
    buckets, shapes = case
    got = evaluate(BucketSet(buckets), np.array(shapes, dtype=np.int64)).to_dict()
    want = naive_evaluate(buckets, shapes)
    assert got["num_shapes"] == len(shapes)
    assert got["num_buckets"] == len(set(buckets))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


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
