"""Reading request traces: the integer columns of a CSV or JSONL file, with one-line errors.

Step 1 of ``workload``: ``read_trace`` / ``read_requests`` (both re-exported there) load,
for example, the Azure LLM inference traces (``ContextTokens``, ``GeneratedTokens``).
Pure Python and numpy: never import torch here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
