"""Workloads: read request traces, replay them as decode shapes, and score a bucket set on them.

Three steps turn a trace into a verdict on a bucket set:

1. ``read_trace`` / ``read_requests`` load the integer columns of a CSV or JSONL trace,
   for example the Azure LLM inference traces (``ContextTokens``, ``GeneratedTokens``).
2. ``simulate_decode`` replays the requests through continuous batching the way vLLM and
   vllm-gaudi schedule them and returns the ``(batch, total_blocks)`` shape of every
   decode step.
3. ``evaluate`` looks every shape up in a ``BucketSet`` and reports how many are covered
   and how much padded work the covering buckets cost.

Pure Python and numpy, like the rest of ``warmgraph.bucketing``: never import torch here.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmgraph.bucketing.buckets import BucketSet, work_many
from warmgraph.errors import ConfigError, TraceError

SUPPORTED_EXTENSIONS = (".csv", ".jsonl")

_INT64_MAX = np.iinfo(np.int64).max


# -- reading traces -------------------------------------------------------------------------


def read_trace(path: str | Path, columns: str | Sequence[str]) -> np.ndarray:
    """Integer columns of a request trace.

    Contract:
      - ``columns`` is one name (returns an int64 array of shape (n,)) or a sequence of
        names (returns int64 of shape (n, d), columns in the order given).
      - The format follows the extension: ``.csv`` has a header row naming the columns;
        ``.jsonl`` has one JSON object per line, blank lines skipped. A UTF-8 byte-order
        mark is accepted. Blank CSV lines are skipped.
      - Every value read must be a non-negative integer (in JSONL a JSON integer, not a
        float or string). Columns not asked for are not checked.
      - Any problem raises TraceError with a one-line message naming the file, the line
        where it applies, and what to do.
    """
    names = _column_names(columns)
    p = Path(path)
    ext = p.suffix.lower()
    if not p.exists():
        raise TraceError(f"trace file {p} does not exist; check the path (relative to {Path.cwd()})")
    if p.is_dir():
        raise TraceError(f"trace file {p} is a directory and cannot be read as a trace; give a .csv or .jsonl file")
    if ext not in SUPPORTED_EXTENSIONS:
        raise TraceError(
            f"trace file {p} has unsupported extension {p.suffix!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        raw = p.read_bytes()
    except OSError as exc:
        why = exc.strerror or exc
        raise TraceError(f"trace file {p} cannot be read ({why}); check it is a readable file") from None
    try:
        # utf-8-sig drops a leading byte-order mark, which spreadsheet exports often add and
        # which would otherwise become part of the first column name.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceError(
            f"trace file {p} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "re-export it as UTF-8"
        ) from None
    if not text.strip():
        raise TraceError(f"trace file {p} is empty; it needs one row per request (CSV: after a header row)")
    cols, lines = (_read_csv if ext == ".csv" else _read_jsonl)(p, text, names)
    parse = int if ext == ".csv" else _json_int
    arrays = [_to_int64(p, name, values, lines, parse) for name, values in zip(names, cols)]
    return arrays[0] if isinstance(columns, str) else np.column_stack(arrays)


def read_requests(
    path: str | Path,
    context_column: str = "ContextTokens",
    generated_column: str = "GeneratedTokens",
) -> tuple[np.ndarray, np.ndarray]:
    """``(context, generated)`` token counts per request, two int64 arrays of equal length."""
    both = read_trace(path, [context_column, generated_column])
    return np.ascontiguousarray(both[:, 0]), np.ascontiguousarray(both[:, 1])


def _column_names(columns: str | Sequence[str]) -> list[str]:
    names = [columns] if isinstance(columns, str) else list(columns)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"columns {columns!r} must be a column name or a non-empty sequence of names")
    return names


def _read_csv(p: Path, text: str, names: list[str]) -> tuple[list[list[str]], list[int]]:
    reader = csv.reader(io.StringIO(text))
    rows: list[list[str]] = []
    lines: list[int] = []  # physical line of each row, so errors can point at it
    try:
        header = next(reader)
        for row in reader:
            if row:  # csv yields [] for a blank line
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        where = f"trace file {p} line {reader.line_num}"
        raise TraceError(f"{where} is not valid CSV ({exc}); fix that line") from None
    header = [h.strip() for h in header]
    index = {}
    for name in names:
        if name not in header:
            raise TraceError(
                f"trace file {p} has no column {name!r}; its columns are: {', '.join(header)}. "
                "Pass one of those"
            )
        index[name] = header.index(name)
    if not rows:
        raise TraceError(f"trace file {p} has a header but no data rows; add one row per request")
    need = max(index.values()) + 1
    if min(map(len, rows)) < need:
        at = next(i for i, row in enumerate(rows) if len(row) < need)
        raise TraceError(
            f"trace file {p} line {lines[at]} has {len(rows[at])} fields, but column "
            f"{header[need - 1]!r} is field {need}; fix or remove that line"
        )
    return [[row[index[name]] for row in rows] for name in names], lines


def _read_jsonl(p: Path, text: str, names: list[str]) -> tuple[list[list[object]], list[int]]:
    cols: list[list[object]] = [[] for _ in names]
    lines: list[int] = []
    # Split on "\n" only: str.splitlines would also split on separators that JSON allows
    # unescaped inside strings (U+2028), breaking valid objects apart.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            where = f"trace file {p} line {lineno}"
            raise TraceError(f"{where} is not valid JSON ({exc.msg}); fix that line") from None
        if not isinstance(obj, dict):
            raise TraceError(
                f"trace file {p} line {lineno} is a JSON {type(obj).__name__}, not an object; "
                "write one object per request"
            )
        for name, col in zip(names, cols):
            if name not in obj:
                where = "has no column" if not lines else f"line {lineno} has no key"
                raise TraceError(
                    f"trace file {p} {where} {name!r}; the keys on line {lineno} are: "
                    f"{', '.join(map(str, obj))}. Pass one of those or add the key"
                )
            col.append(obj[name])
        lines.append(lineno)
    return cols, lines


def _to_int64(p: Path, name: str, values: list, lines: list[int], parse: Callable[[Any], int]) -> np.ndarray:
    """Values as int64, or TraceError at the first one that is not a non-negative integer."""
    # Fast path: a clean column converts in one pass; only a failure pays for the scan that
    # finds the offending line.
    try:
        arr = np.array(list(map(parse, values)), dtype=np.int64)
        if arr.size == 0 or arr.min() >= 0:
            return arr
    except (ValueError, TypeError, OverflowError):
        pass
    for v, lineno in zip(values, lines):
        try:
            x = parse(v)
            bad = "is negative" if x < 0 else "is too large for int64" if x > _INT64_MAX else ""
        except (ValueError, TypeError):
            bad = "is not an integer"
        if bad:
            raise TraceError(
                f"trace file {p} line {lineno}: column {name!r} value {v!r} {bad}; "
                "values must be non-negative integers"
            )
    raise AssertionError("unreachable: a value failed conversion but none was found bad")


def _json_int(v: object) -> int:
    # bool is an int subclass but not a count; floats and strings are refused rather than
    # guessed at, so a trace that stores lengths as 12.5 or "12" is caught.
    if type(v) is not int:
        raise TypeError
    return v


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
