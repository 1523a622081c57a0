"""Every ``warmgraph cache`` subcommand through the real entry point: empty, full, and bad input.

Good input: human output and ``--json`` (exactly one JSON object on stdout). Bad input: exit
code 2 and one line on stderr, never a traceback. A cache root that does not exist reads as
an empty cache and is not created by the reading commands.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from cli_helpers import Capsys, assert_one_line_error, run, run_json

from warmgraph.cli.cache import human_age, human_size, parse_duration, parse_size
from warmgraph.graph_cache.key import CacheKey, make_key
from warmgraph.graph_cache.store import GraphCache


def key_of(name: str, bucket: tuple[int, ...], backend: str = "aot") -> CacheKey:
    return make_key(graph={"name": name}, bucket=bucket, backend={"backend": backend}, device={"type": "cpu"})


def add(cache: GraphCache, key: CacheKey, size: int = 1000) -> str:
    def write(d: Path) -> list[str]:
        (d / "graph.bin").write_bytes(b"g" * size)
        (d / "meta.json").write_text("{}")
        return ["graph.bin", "meta.json"]

    with cache.lock(key.hash):
        cache.store(key, write, 0.25)
    return key.hash


@pytest.fixture
def absent(tmp_path: Path) -> str:
    return str(tmp_path / "absent")


@pytest.fixture
def full(tmp_path: Path) -> tuple[str, dict[str, str]]:
    cache = GraphCache(tmp_path / "cache")
    keys = {
        "dec1": add(cache, key_of("decode", (1, 128)), 1000),
        "dec8": add(cache, key_of("decode", (8, 128)), 3000),
        "pre": add(cache, key_of("prefill", (1, 512), "inductor"), 2_000_000),
    }
    return str(cache.root), keys


def test_units() -> None:
    assert [parse_duration(t) for t in ("30m", "12h", "7d", "2w", "90s", "1.5h")] == [
        1800, 43200, 604800, 1209600, 90, 5400]
    assert [parse_size(t) for t in ("500MB", "2G", "1.5GiB", "4096", "10k")] == [
        500 * 2**20, 2 * 2**30, int(1.5 * 2**30), 4096, 10240]
    for bad in ("7", "7y", "", "-1d"):
        with pytest.raises(ValueError, match=r"e\.g\. 30m"):
            parse_duration(bad)
    with pytest.raises(ValueError, match=r"e\.g\. 500MB or 2G"):
        parse_size("lots")
    assert [human_size(n) for n in (512, 1536, 15 * 2**20, 3 * 2**30)] == ["512 B", "1.5 KB", "15 MB", "3.0 GB"]
    assert [human_age(0, now) for now in (5, 180, 7200, 5 * 86400)] == ["5s", "3m", "2h", "5d"]


# -- an absent cache reads as empty and is not created ---------------------------------------


def test_absent_cache_reads_empty(capsys: Capsys, absent: str) -> None:
    code, out, _ = run(capsys, "cache", "ls", "--dir", absent)
    assert code == 0 and out == f"the cache at {absent} is empty\n"
    assert run_json(capsys, "cache", "ls", "--dir", absent) == {"root": absent, "entries": []}
    code, out, _ = run(capsys, "cache", "du", "--dir", absent)
    assert code == 0 and "is empty" in out
    assert run_json(capsys, "cache", "du", "--dir", absent)["total"] == {"entries": 0, "bytes": 0}
    code, out, _ = run(capsys, "cache", "verify", "--dir", absent)
    assert code == 0 and out.startswith("0 ok, 0 bad")
    assert run_json(capsys, "cache", "verify", "--dir", absent) == {
        "root": absent, "ok": 0, "bad": [], "reasons": {}, "repaired": False}
    assert run_json(capsys, "cache", "prune", "--keep-last", "0", "--dir", absent)["removed"] == []
    assert run_json(capsys, "cache", "clear", "--dir", absent) == {"root": absent, "removed": [], "bytes_freed": 0}
    assert_one_line_error(*run(capsys, "cache", "show", "abc", "--dir", absent), "no cache entry has a key starting")
    assert_one_line_error(*run(capsys, "cache", "rm", "abc", "--dir", absent), "no cache entry has a key starting")
    assert_one_line_error(*run(capsys, "cache", "export", "--out", f"{absent}.tar.gz", "--dir", absent),
                          "nothing to export")
    assert not Path(absent).exists() and not Path(f"{absent}.tar.gz").exists()


def test_default_root_from_environment(capsys: Capsys, absent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMGRAPH_CACHE_DIR", absent)
    assert run_json(capsys, "cache", "ls")["root"] == absent


# -- a full cache ----------------------------------------------------------------------------


def test_ls(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, keys = full
    code, out, _ = run(capsys, "cache", "ls", "--dir", root)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["key", "graph", "backend", "bucket", "device", "size", "age", "last",
                                              "used", "hits"]
    assert any(keys["pre"][:12] in line and "prefill" in line and "inductor" in line and "1,512" in line
               and "1.9 MB" in line and "never" in line for line in lines)
    assert lines[-1] == f"3 entries, 1.9 MB in {root}"
    data = run_json(capsys, "cache", "ls", "--dir", root)
    assert data["root"] == root and sorted(e["key"] for e in data["entries"]) == sorted(keys.values())
    dec1 = next(e for e in data["entries"] if e["key"] == keys["dec1"])
    assert dec1["graph_name"] == "decode" and dec1["backend"] == "aot" and dec1["bucket"] == [1, 128]
    assert dec1["device"] == "cpu" and dec1["size"] == 1002 and dec1["hits"] == 0
    assert dec1["created"] <= dec1["last_used"] <= time.time()


def test_show(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, keys = full
    cache = GraphCache(root)
    cache.touch(cache.get(keys["dec8"]))
    code, out, _ = run(capsys, "cache", "show", keys["dec8"][:8], "--dir", root)
    assert code == 0 and keys["dec8"] in out and "1 hits" in out
    assert "factors:" in out and "  graph:\n    name: decode" in out and "  bucket: [8, 128]" in out
    sha = cache.get(keys["dec8"]).manifest["files"]["graph.bin"]["sha256"]
    assert any(line.split() == ["graph.bin", "3000", sha] for line in out.splitlines())
    data = run_json(capsys, "cache", "show", keys["dec8"][:8], "--dir", root)
    assert data["manifest"]["key"] == keys["dec8"] and data["manifest"]["factors"]["bucket"] == [8, 128]
    assert data["usage"]["hits"] == 1


def test_du(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, _ = full
    data = run_json(capsys, "cache", "du", "--dir", root)
    assert data["total"] == {"entries": 3, "bytes": 2_004_006}
    assert data["by_graph"] == {"decode": {"entries": 2, "bytes": 4004}, "prefill": {"entries": 1, "bytes": 2_000_002}}
    assert data["by_backend"] == {"aot": {"entries": 2, "bytes": 4004}, "inductor": {"entries": 1, "bytes": 2_000_002}}
    code, out, _ = run(capsys, "cache", "du", "--dir", root)
    assert code == 0 and "decode" in out and "inductor" in out and out.endswith(f"total: 3 entries, 1.9 MB in {root}\n")


def _corrupt(root: str, key: str) -> None:
    f = Path(root) / "entries" / key / "graph.bin"
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))


def test_verify_and_repair(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, keys = full
    code, out, _ = run(capsys, "cache", "verify", "--dir", root)
    assert code == 0 and out.startswith("3 ok, 0 bad")
    _corrupt(root, keys["dec1"])
    code, out, _ = run(capsys, "cache", "verify", "--dir", root)
    assert code == 1 and "2 ok, 1 bad" in out and f"bad {keys['dec1'][:12]}" in out and "checksum" in out
    data = run_json(capsys, "cache", "verify", "--dir", root, code=1)
    assert data["ok"] == 2 and data["bad"] == [keys["dec1"]] and "checksum" in data["reasons"][keys["dec1"]]
    assert data["repaired"] is False and (Path(root) / "entries" / keys["dec1"]).exists()
    data = run_json(capsys, "cache", "verify", "--repair", "--dir", root, code=1)
    assert data["bad"] == [keys["dec1"]] and data["repaired"] is True
    assert not (Path(root) / "entries" / keys["dec1"]).exists()
    assert run_json(capsys, "cache", "verify", "--dir", root) == {
        "root": root, "ok": 2, "bad": [], "reasons": {}, "repaired": False}


def _age(root: str, key: str, seconds: float) -> None:
    usage = Path(root) / "entries" / key / "usage.json"
    usage.write_text(json.dumps({"last_used": time.time() - seconds, "hits": 3}))


def test_prune(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, keys = full
    _age(root, keys["dec1"], 3 * 86400)
    _age(root, keys["dec8"], 3600)
    _age(root, keys["pre"], 60)
    data = run_json(capsys, "cache", "prune", "--older-than", "2d", "--dir", root)
    assert data == {"root": root, "removed": [keys["dec1"]], "bytes_freed": 1002}
    code, out, _ = run(capsys, "cache", "prune", "--keep-last", "1", "--dir", root)
    assert code == 0 and f"removed {keys['dec8'][:12]}" in out and "prune: removed 1 entries" in out
    assert run_json(capsys, "cache", "prune", "--max-size", "1MB", "--dir", root)["removed"] == [keys["pre"]]
    assert run_json(capsys, "cache", "ls", "--dir", root)["entries"] == []


def test_prune_max_size_is_lru(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, keys = full
    _age(root, keys["pre"], 100)
    _age(root, keys["dec1"], 50)
    _age(root, keys["dec8"], 10)
    data = run_json(capsys, "cache", "prune", "--max-size", "5K", "--dir", root)
    assert data["removed"] == [keys["pre"]] and data["bytes_freed"] == 2_000_002


def test_rm(capsys: Capsys, full: tuple[str, dict[str, str]]) -> None:
    root, keys = full
    code, out, _ = run(capsys, "cache", "rm", keys["pre"][:10].upper(), "--dir", root)
    assert code == 0 and f"removed {keys['pre'][:12]}" in out
    assert run_json(capsys, "cache", "rm", keys["dec1"], "--dir", root) == {
        "root": root, "removed": [keys["dec1"]], "bytes_freed": 1002}
    assert [e["key"] for e in run_json(capsys, "cache", "ls", "--dir", root)["entries"]] == [keys["dec8"]]
    assert list((Path(root) / "tmp").iterdir()) == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_clear(capsys: Capsys, full: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, keys = full
    assert_one_line_error(*run(capsys, "cache", "clear", "--dir", root), "pass --yes")
    monkeypatch.setattr("sys.stdin", _Tty("n\n"))
    code, _, err = run(capsys, "cache", "clear", "--dir", root)
    assert code == 130 and "remove all 3 entries" in err
    assert len(run_json(capsys, "cache", "ls", "--dir", root)["entries"]) == 3
    monkeypatch.setattr("sys.stdin", _Tty("y\n"))
    data = run_json(capsys, "cache", "clear", "--dir", root)  # the prompt went to stderr
    assert sorted(data["removed"]) == sorted(keys.values()) and data["bytes_freed"] == 2_004_006
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    add(GraphCache(root), key_of("again", (1,)))
    code, out, _ = run(capsys, "cache", "clear", "--yes", "--dir", root)
    assert code == 0 and "clear: removed 1 entries" in out
    assert run_json(capsys, "cache", "ls", "--dir", root)["entries"] == []


def test_export_import(capsys: Capsys, full: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    root, keys = full
    out = str(tmp_path / "g.tar.gz")
    code, text, _ = run(capsys, "cache", "export", "--out", out, "--graph", "decode", "--dir", root)
    assert code == 0 and text.startswith(f"exported 2 entries to {out}")
    data = run_json(capsys, "cache", "export", "--out", out, "--backend", "inductor", "--dir", root)
    assert data["keys"] == [keys["pre"]] and data["bytes"] == os.path.getsize(out)
    data = run_json(capsys, "cache", "export", "--out", out, "--key", keys["dec8"][:6], "--dir", root)
    assert data["keys"] == [keys["dec8"]]
    other = str(tmp_path / "other")
    assert run_json(capsys, "cache", "import", out, "--dir", other)["imported"] == [keys["dec8"]]
    code, text, _ = run(capsys, "cache", "import", out, "--dir", other)
    assert code == 0 and "imported 0 new entries" in text
    assert run_json(capsys, "cache", "verify", "--dir", other)["ok"] == 1


# -- bad input -------------------------------------------------------------------------------


def _two_sharing_a_first_digit(cache: GraphCache) -> str:
    seen: dict[str, CacheKey] = {}
    for i in range(1, 100):
        key = key_of("amb", (i,))
        if key.hash[0] in seen:
            add(cache, seen[key.hash[0]])
            add(cache, key)
            return key.hash[0]
        seen[key.hash[0]] = key
    raise AssertionError("unreachable: 17 keys always share a first digit")


def test_unknown_and_ambiguous_keys(capsys: Capsys, full: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    root, _ = full
    for cmd in ("show", "rm"):
        assert_one_line_error(*run(capsys, "cache", cmd, "zzzz", "--dir", root), "no cache entry has a key starting")
    amb_root = tmp_path / "amb"
    digit = _two_sharing_a_first_digit(GraphCache(amb_root))
    for cmd in ("show", "rm"):
        assert_one_line_error(*run(capsys, "cache", cmd, digit, "--dir", str(amb_root), "--json"), "is ambiguous")
    assert len(run_json(capsys, "cache", "ls", "--dir", str(amb_root))["entries"]) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["prune"], "give at least one of --older-than"),
        (["prune", "--older-than", "7days"], "e.g. 30m, 12h, 7d"),
        (["prune", "--older-than", "soon"], "'soon' is not a duration"),
        (["prune", "--max-size", "2Q"], "e.g. 500MB or 2G"),
        (["prune", "--keep-last", "-1"], "--keep-last"),
        (["export"], "Missing option '--out'"),
        (["import"], "Missing argument 'ARCHIVE'"),
        (["nope"], "No such command 'nope'"),
    ],
)
def test_bad_arguments(capsys: Capsys, full: tuple[str, dict[str, str]], args: list[str], fragment: str) -> None:
    root, _ = full
    assert_one_line_error(*run(capsys, "cache", *args, "--dir", root), fragment)


def test_bad_archives(capsys: Capsys, full: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    root, _ = full
    assert_one_line_error(*run(capsys, "cache", "import", str(tmp_path / "missing.tar.gz"), "--dir", root),
                          "does not exist")
    junk = tmp_path / "junk.tar.gz"
    junk.write_text("not an archive")
    assert_one_line_error(*run(capsys, "cache", "import", str(junk), "--dir", root, "--json"),
                          "not a readable gzip-compressed tar")
    assert_one_line_error(*run(capsys, "cache", "export", "--out", str(tmp_path / "x.tar.gz"), "--graph", "nope",
                               "--dir", root), "nothing to export")


def test_unsafe_root(capsys: Capsys, full: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    root, keys = full
    os.chmod(root, 0o770)
    try:
        for args in (["ls"], ["du"], ["verify"], ["show", keys["pre"][:6]], ["prune", "--keep-last", "1"],
                     ["clear", "--yes"], ["import", str(tmp_path / "a.tar.gz")]):
            assert_one_line_error(*run(capsys, "cache", *args, "--dir", root), f"chmod go-w {root}")
    finally:
        os.chmod(root, 0o700)
    assert len(run_json(capsys, "cache", "ls", "--dir", root)["entries"]) == 3
