"""``warmgraph cache ls|show|prune --vllm`` from the command line: tables, JSON, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Capsys, assert_one_line_error, run, run_json
from vllm_cache_writer import (
    AOT,
    COMPILE_A,
    COMPILE_B,
    DAY,
    ENV,
    GRAPH,
    entry_dir,
    left_entries,
    make_cache3,
    write_compile,
)

from warmgraph.graph_cache import vllm as vc


@pytest.fixture
def cache3(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    return make_cache3(tmp_path)


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_absent_root_is_empty_and_not_created(capsys: Capsys, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path / "absent"
    code, out, _ = run(capsys, "cache", "ls", "--vllm", "--vllm-root", str(absent))
    assert code == 0 and out == f"vLLM's compile cache at {absent} is empty\n"
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(absent))
    assert run_json(capsys, "cache", "ls", "--vllm") == {"root": str(absent), "entries": []}
    assert run_json(capsys, "cache", "prune", "--vllm", "--max-size", "0") == {
        "root": str(absent), "removed": [], "bytes_freed": 0, "dry_run": False}
    assert_one_line_error(*run(capsys, "cache", "show", "--vllm", "0a"), "no vLLM cache entry has a hash starting")
    assert not absent.exists()


def test_cli_ls(capsys: Capsys, cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    code, out, _ = run(capsys, "cache", "ls", "--vllm", "--vllm-root", str(root))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["hash", "kind", "ranks", "prefixes", "compiler", "ranges", "graphs",
                                              "artifacts", "dtype", "size", "age", "note"]
    assert [line.split() for line in lines[2:5]] == [
        [COMPILE_A, "compile", "0_0", "backbone", "inductor_standalone", "1-128,4", "4", "4", "bf16", "19", "KB",
         "3d"],
        [AOT[:12], "aot", "0_0", "-", "-", "-", "0", "1", "-", "5.2", "KB", "2d"],
        [COMPILE_B, "compile", "0_0,1_0", "backbone", "inductor_standalone", "1-8192", "6", "6", "bf16", "6.0", "MB",
         "1h"]]
    assert lines[5] == f"3 entries, 6.0 MB in {root / 'torch_compile_cache'}"
    data = run_json(capsys, "cache", "ls", "--vllm", "--vllm-root", str(root))
    assert data["root"] == str(root) and [e["hash"] for e in data["entries"]] == [COMPILE_A, AOT, COMPILE_B]
    a = data["entries"][0]
    assert a["size"] == sizes[COMPILE_A] and a["ranges"] == [[1, 128], [4, 4]] and a["compilers"] == [
        "inductor_standalone"]
    assert a["factors"] == {"config_hash": "c" * 64, "code_hash": "d" * 64, "compiler_hash": "e" * 10,
                            "env_factors": len(ENV)}
    assert a["damaged"] == [] and a["cache_file_parses"] is True and abs(a["age_seconds"] - 3 * DAY) < 60
    assert a["path"] == str(entry_dir(root, COMPILE_A)) and data["entries"][1]["kind"] == "aot"


def test_cli_show(capsys: Capsys, cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    code, out, _ = run(capsys, "cache", "show", COMPILE_A[:4].upper(), "--vllm-root", str(root))
    assert code == 0 and out.startswith(f"hash      {COMPILE_A}\nkind      compile   path {entry_dir(root, COMPILE_A)}")
    assert ("compiled  inductor_standalone: 4 graphs, ranges 1-128,4, 4 artifacts, vllm_compile_cache.py parses"
            in out)
    assert f"factors   config {'c' * 64}, code {'d' * 64}, compiler {'e' * 10}, 5 env factors" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["rank_0_0/inductor_cache/", "700", "1"] in lines and ["rank_0_0/backbone/computation_graph.py",
                                                                 str(len(GRAPH)), "1"] in lines
    data = run_json(capsys, "cache", "show", AOT[:8], "--vllm", "--vllm-root", str(root))
    assert data["entry"]["hash"] == AOT and data["entry"]["size"] == 5300
    assert data["contents"] == [{"path": "inductor_cache/", "bytes": 300, "files": 1},
                                {"path": "rank_0_0/model", "bytes": 5000, "files": 1}]
    data = run_json(capsys, "cache", "show", COMPILE_A, "--vllm", "--vllm-root", str(root))
    assert data["entry"]["factors"]["env"] == ENV
    assert sum(p["bytes"] for p in data["contents"]) == sizes[COMPILE_A]


def test_cli_prune(capsys: Capsys, cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    code, out, _ = run(capsys, "cache", "prune", "--vllm", "--older-than", "1d", "--dry-run", "--vllm-root", str(root))
    assert code == 0 and out.splitlines() == [
        f"would remove {COMPILE_A} (compile, 19 KB, written 3d ago)",
        f"would remove {AOT[:12]} (aot, 5.2 KB, written 2d ago)",
        f"prune --vllm: would remove 2 entries, 24 KB in {root / 'torch_compile_cache'}; nothing was removed "
        "(--dry-run)"]
    assert len(vc.scan(root)) == 3
    data = run_json(capsys, "cache", "prune", "--vllm", "--max-size", "6310000", "--vllm-root", str(root))
    assert data == {"root": str(root), "removed": [COMPILE_A], "bytes_freed": sizes[COMPILE_A], "dry_run": False}
    code, out, _ = run(capsys, "cache", "prune", "--vllm-root", str(root), "--older-than", "30m")
    assert code == 0 and out.splitlines()[-1] == (f"prune --vllm: removed 2 entries, 6.0 MB in "
                                                  f"{root / 'torch_compile_cache'}")
    assert left_entries(root) == ["torch_aot_compile"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["prune", "--vllm"], "prune --vllm needs --older-than (e.g. 7d) or --max-size (e.g. 2G)"),
        (["prune", "--vllm", "--keep-last", "1"], "--keep-last does not apply to --vllm"),
        (["prune", "--vllm", "--older-than", "7days"], "e.g. 30m, 12h, 7d"),
        (["prune", "--vllm", "--max-size", "lots"], "e.g. 500MB or 2G"),
        (["prune", "--dry-run", "--keep-last", "1"], "--dry-run works with --vllm only"),
        (["ls", "--vllm", "--dir", "/tmp"], "--dir is warmgraph's cache root; for vLLM's cache give --vllm-root"),
        (["show", " ", "--vllm"], "KEY is empty"),
        (["show", "9", "--vllm"], "no vLLM cache entry has a hash starting with '9'"),
        (["show", "0", "--vllm"], "hash prefix '0' is ambiguous (2 vLLM entries"),
    ],
)
def test_cli_bad_input(capsys: Capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                       fragment: str) -> None:
    root = tmp_path / "vllm"
    write_compile(root, "0a00000000")
    write_compile(root, "0b00000000")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(root))
    assert_one_line_error(*run(capsys, "cache", *args), fragment)
    assert_one_line_error(*run(capsys, "cache", *args, "--json"), fragment)
    assert len(vc.scan(root)) == 2


def test_cli_root_that_is_a_file(capsys: Capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(*run(capsys, "cache", "ls", "--vllm-root", str(f)), "is a file")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(f))
    for args in (["ls", "--vllm"], ["show", "0", "--vllm"], ["prune", "--vllm", "--older-than", "1d"]):
        assert_one_line_error(*run(capsys, "cache", *args), f"vLLM cache root {f} is not a directory")
    assert f.read_text() == "x"
