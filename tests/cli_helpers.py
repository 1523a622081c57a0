"""Running the real CLI entry point inside a test, and the one-line error contract."""

from __future__ import annotations

import json

import pytest

from warmgraph.cli.main import main

Capsys = pytest.CaptureFixture[str]


def run(capsys: Capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def one_json(out: str) -> dict:
    assert out.count("\n") == 1, out  # one line: one object and nothing else
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def run_json(capsys: Capsys, *args: str, code: int = 0) -> dict:
    got, out, err = run(capsys, *args, "--json")
    assert got == code, err
    return one_json(out)


def assert_one_line_error(code: int, out: str, err: str, fragment: str) -> None:
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("warmgraph: error: "), err
    assert fragment in err, err
    assert "Traceback" not in err
