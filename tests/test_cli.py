"""Every ``warmgraph buckets`` subcommand with good and bad input, through the real entry point.

Good input: human output and ``--json`` (exactly one JSON object on stdout). Bad input:
exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run, run_json

PLAN = ["--max-num-seqs", "128", "--max-num-batched-tokens", "2048", "--max-model-len", "4096", "--num-blocks", "2000"]




def test_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "buckets", "range", "exponential", "--min", "128", "--step", "128", "--max", "2048",
                       "--limit", "10")
    assert code == 0 and "9 buckets" in out and "128 256 384 512 640 896 1152 1536 2048" in out
    data = run_json(capsys, "buckets", "range", "padding_aware", "--min", "0", "--step", "8", "--max", "64",
                    "--pad-max", "16", "--pad-percent", "50")
    assert data["buckets"] == [0, 1, 2, 4, 8, 16, 32, 48, 64]
    data = run_json(capsys, "buckets", "range", "linear", "--min", "2", "--step", "64", "--max", "128")
    assert data["buckets"] == [2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--min", "-1", "--step", "1", "--max", "9", "--limit", "3"], "min is -1"),
        (["--min", "9", "--step", "1", "--max", "2", "--limit", "3"], "min 9 is greater than max 2"),
        (["--min", "1", "--step", "1", "--max", "9", "--limit", "0"], "limit is 0"),
        (["--min", "1", "--step", "1", "--max", "9"], "needs --limit"),
        (["--min", "x", "--step", "1", "--max", "9"], "'x' is not a valid integer"),
    ],
)
def test_range_bad_input(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    assert_one_line_error(*run(capsys, "buckets", "range", "exponential", *args), fragment)


def test_unknown_strategy_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(*run(capsys, "buckets", "range", "cubic", "--min", "1", "--step", "1", "--max", "2"),
                          "'cubic' is not one of")
    assert_one_line_error(*run(capsys, "buckets", "nope"), "No such command 'nope'")


def test_plan(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLLM_BUCKETING_STRATEGY", "VLLM_EXPONENTIAL_BUCKETING", "VLLM_BUCKETING_FROM_FILE"):
        monkeypatch.delenv(name, raising=False)
    data = run_json(capsys, "buckets", "plan", "--strategy", "exponential", *PLAN)
    assert (len(data["prompt"]), len(data["decode"])) == (63, 45)
    assert data["decode"][0] == [1, 1, 1]
    code, out, _ = run(capsys, "buckets", "plan", *PLAN)
    assert code == 0 and "prompt: 63 buckets" in out and "decode: 45 buckets" in out
    monkeypatch.setenv("VLLM_BUCKETING_STRATEGY", "lin")
    monkeypatch.setenv("VLLM_DECODE_BS_BUCKET_STEP", "16")
    code, out, _ = run(capsys, "buckets", "plan", *PLAN)
    assert "linear plan" in out and "VLLM_DECODE_BS_BUCKET_STEP=16" in out and "changed by the environment" in out


def test_plan_file_and_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "b.txt"
    f.write_text("(1, [128, 256], 0)\n(8, 1, [64, 128])\n")
    data = run_json(capsys, "buckets", "plan", "--strategy", "file", "--file", str(f), *PLAN)
    assert data["prompt"] == [[1, 128, 0], [1, 256, 0]] and data["decode"] == [[8, 1, 64], [8, 1, 128]]
    assert_one_line_error(*run(capsys, "buckets", "plan", "--strategy", "file", *PLAN), "pass --file")
    assert_one_line_error(*run(capsys, "buckets", "plan", "--strategy", "file", "--file", str(tmp_path / "x"), *PLAN),
                          "does not exist")
    f.write_text("(1, 2)\n")
    assert_one_line_error(*run(capsys, "buckets", "plan", "--strategy", "file", "--file", str(f), *PLAN),
                          "not a 3-tuple")
    bad = [a if a != "4096" else "-4096" for a in PLAN]
    assert_one_line_error(*run(capsys, "buckets", "plan", *bad), "max_model_len is -4096")
    assert_one_line_error(*run(capsys, "buckets", "plan", "--max-num-seqs", "4"), "Missing option")


def test_simulate(capsys: pytest.CaptureFixture[str], conv_trace: Path, tmp_path: Path) -> None:
    data = run_json(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--strategy", "exponential",
                    "--min", "128", "--step", "128", "--max", "8192", "--limit", "13",
                    "--compare", "linear,padding_aware,fitted")
    assert data["num_buckets"] == 12 and data["padding_waste"] > 0 and data["hit_rate"] > 0.99
    by_name = {r["strategy"]: r for r in data["compare"]}
    assert set(by_name) == {"linear", "padding_aware", "fitted"}
    assert all(r["num_buckets"] <= 12 for r in by_name.values())
    assert by_name["fitted"]["num_buckets"] == 12
    assert by_name["fitted"]["padding_waste"] < data["padding_waste"]
    png = tmp_path / "plot.png"
    code, out, _ = run(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--strategy", "fitted",
                       "--max-buckets", "8", "--max", "8192", "--plot", str(png))
    assert code == 0 and "fitted" in out and png.read_bytes()[:4] == b"\x89PNG"


def test_simulate_plot_without_matplotlib(capsys: pytest.CaptureFixture[str], conv_trace: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # matplotlib is an extra: without it --plot is refused before any work, naming the extra
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    png = tmp_path / "plot.png"
    code, out, err = run(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--limit", "5",
                         "--plot", str(png))
    assert_one_line_error(code, out, err, "pip install 'warmgraph[plot]'")
    assert not png.exists()


def test_simulate_decode(capsys: pytest.CaptureFixture[str], code_trace: Path) -> None:
    data = run_json(capsys, "buckets", "simulate", "--trace", str(code_trace), "--decode", "--max-num-seqs", "64",
                    "--max-model-len", "8192", "--num-blocks", "4096", "--compare", "fitted")
    assert data["strategy"] == "exponential" and data["decode_steps"] > 0
    fitted = data["compare"][0]
    assert fitted["strategy"] == "fitted" and fitted["num_buckets"] <= data["num_buckets"]
    assert fitted["hit_rate"] == 1.0


def test_simulate_bad_input(capsys: pytest.CaptureFixture[str], conv_trace: Path, tmp_path: Path) -> None:
    assert_one_line_error(*run(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--column", "Nope",
                               "--limit", "5"), "Nope")
    assert_one_line_error(*run(capsys, "buckets", "simulate", "--trace", str(tmp_path / "none.csv"), "--limit", "5"),
                          "does not exist")
    assert_one_line_error(*run(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--strategy", "fitted"),
                          "needs a budget")
    assert_one_line_error(*run(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--limit", "4",
                               "--compare", "magic"), "unknown strategies")
    gaudi = tmp_path / "gaudi.txt"
    gaudi.write_text("(1, [128, 256], 0)\n")
    assert_one_line_error(*run(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--strategy", "file",
                               "--file", str(gaudi)), "holds 3-D buckets")


def test_fit_round_trip(capsys: pytest.CaptureFixture[str], conv_trace: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "fit.yaml"
    data = run_json(capsys, "buckets", "fit", "--trace", str(conv_trace), "--step", "128", "--max", "8192",
                    "--max-buckets", "12", "--out", str(out_file))
    assert len(data["buckets"]) == 12 and data["buckets"][-1] == 8192
    assert abs(data["held_out"]["waste"] - data["held_out"]["waste_if_fit_on_odd"]) < 0.05
    back = run_json(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--strategy", "file",
                    "--file", str(out_file))
    assert back["buckets"] == data["buckets"]
    assert back["padding_waste"] == pytest.approx(data["padding_waste"])
    assert_one_line_error(*run(capsys, "buckets", "fit", "--trace", str(conv_trace), "--max", "8192"),
                          "exactly one budget")
    assert_one_line_error(*run(capsys, "buckets", "fit", "--trace", str(conv_trace), "--max", "8192",
                               "--max-buckets", "0"), "max_buckets")


def test_capture(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "buckets", "capture", "--max-num-seqs", "256", "--max-num-batched-tokens", "2048",
                    "--num-layers", "94")
    assert len(data["sizes"]) == 51 and data["budget"]["total_graphs"] <= 1800
    assert_one_line_error(*run(capsys, "buckets", "capture", "--max-num-seqs", "0", "--max-num-batched-tokens", "8"),
                          "max_num_seqs is 0")


def test_python_dash_m_and_console_script() -> None:
    proc = subprocess.run([sys.executable, "-m", "warmgraph", "buckets", "range", "linear", "--min", "1", "--step",
                           "4", "--max", "8", "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["buckets"] == [1, 2, 4, 8]
    proc = subprocess.run([sys.executable, "-m", "warmgraph", "buckets", "range", "linear", "--min", "9", "--step",
                           "4", "--max", "8"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_choices_and_defaults_come_from_bucketing() -> None:
    from warmgraph.bucketing.capture_sizes import ASCEND_LEGACY_GRAPH_BUDGET
    from warmgraph.bucketing.plans import STRATEGIES, ServingConfig
    from warmgraph.bucketing.strategies import NAMES, RANGE_STRATEGIES, RangeSpec
    from warmgraph.cli.buckets import buckets

    def param(command: str, name: str):  # type: ignore[no-untyped-def]
        return next(p for p in buckets.commands[command].params if p.name == name)

    assert tuple(param("range", "strategy").type.choices) == RANGE_STRATEGIES
    assert tuple(param("plan", "strategy").type.choices) == STRATEGIES
    assert tuple(param("simulate", "strategy").type.choices) == NAMES
    assert param("plan", "block_size").default == ServingConfig.__dataclass_fields__["block_size"].default
    assert param("simulate", "block_size").default == ServingConfig.__dataclass_fields__["block_size"].default
    for command, name in (("range", "pad_max"), ("range", "pad_percent"), ("simulate", "step"), ("fit", "step")):
        assert param(command, name).default == RangeSpec.__dataclass_fields__[name].default, (command, name)
    assert param("capture", "graph_budget").default == ASCEND_LEGACY_GRAPH_BUDGET


def test_plan_file_without_strategy_means_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "b.txt"
    f.write_text("(1, [128, 256], 0)\n(8, 1, [64, 128])\n")
    data = run_json(capsys, "buckets", "plan", "--file", str(f), *PLAN)
    assert data["strategy"] == "file" and data["prompt"] == [[1, 128, 0], [1, 256, 0]]


def test_big_comparisons_and_budgets_stay_quick(capsys: pytest.CaptureFixture[str], conv_trace: Path) -> None:
    # step 1 gives thousands of buckets: comparing at that count tried every exponential limit
    # up to 2n (minutes); a fitted budget above the distinct lengths ran n layers of the DP.
    start = time.perf_counter()
    data = run_json(capsys, "buckets", "simulate", "--trace", str(conv_trace), "--strategy", "linear", "--step", "1",
                    "--compare", "exponential,padding_aware,fitted")
    assert data["num_buckets"] == 14050 and {r["strategy"] for r in data["compare"]} == {
        "exponential", "padding_aware", "fitted"}
    assert all(r["num_buckets"] <= 14050 for r in data["compare"])
    fitted = run_json(capsys, "buckets", "fit", "--trace", str(conv_trace), "--step", "1", "--max", "20000",
                      "--max-buckets", "100000")
    assert fitted["padding_waste"] == 0.0
    assert time.perf_counter() - start < 15
