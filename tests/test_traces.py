"""Tests for warmgraph.bucketing.traces: reading request traces (real Azure traces and small files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from warmgraph.bucketing.traces import read_requests, read_trace
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
