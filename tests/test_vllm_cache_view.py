"""``warmgraph cache ls|show|prune --vllm``: a view of vLLM's own torch.compile cache, without vLLM.

The synthetic caches (``vllm_cache_writer``) are laid out as vLLM 0.32.0 writes them: every
listed value is asserted, sizes to the byte, ages through ``os.utime``, and prune order, dry
runs and interrupted deletions. The CLI's side is in ``test_vllm_cache_cli.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import Capsys, assert_one_line_error, run
from vllm_cache_writer import (
    AOT,
    COMPILE_A,
    COMPILE_B,
    DAY,
    ENV,
    entry_dir,
    left_entries,
    make_cache3,
    set_age,
    write_aot,
    write_compile,
)

from warmgraph.errors import CacheError
from warmgraph.graph_cache import vllm as vc


@pytest.fixture
def cache3(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    return make_cache3(tmp_path)


def test_default_root_is_vllms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert vc.default_vllm_root() == tmp_path / "home" / ".cache" / "vllm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vc.default_vllm_root() == tmp_path / "xdg" / "vllm"
    monkeypatch.setenv("VLLM_CACHE_ROOT", "~/vc")
    assert vc.default_vllm_root() == tmp_path / "home" / "vc"


def test_scan_reads_every_field(cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    entries = vc.scan(root)
    assert [e.hash for e in entries] == [COMPILE_A, AOT, COMPILE_B]  # oldest first
    a, aot, b = entries
    assert (a.kind, a.path, a.ranks, a.prefixes) == ("compile", entry_dir(root, COMPILE_A), ("rank_0_0",),
                                                     ("backbone",))
    assert (a.compilers, a.ranges, a.graphs, a.artifacts) == (("inductor_standalone",), ((1, 128), (4, 4)), 4, 4)
    assert a.cache_file_parses is True and a.dtype == "bf16" and a.damaged == ()
    assert a.factors == {"env": ENV, "config_hash": "c" * 64, "code_hash": "d" * 64, "compiler_hash": "e" * 10}
    assert (b.ranks, b.ranges, b.graphs, b.artifacts) == (("rank_0_0", "rank_1_0"), ((1, 8192),), 6, 6)
    assert (aot.kind, aot.ranks, aot.prefixes, aot.artifacts, aot.cache_file_parses, aot.damaged) == (
        "aot", ("rank_0_0",), (), 1, None, ())
    assert {e.hash: e.size for e in entries} == sizes and sizes[AOT] == 5300 and sizes[COMPILE_B] > 6 * 2**20
    now = time.time()
    assert [round(e.age(now) / 3600) for e in entries] == [72, 48, 1]


def test_size_and_age_follow_no_links(tmp_path: Path) -> None:
    root = tmp_path / "vllm"
    size = write_compile(root, COMPILE_A)
    big = tmp_path / "outside.bin"
    big.write_bytes(b"x" * 10**6)
    link = entry_dir(root, COMPILE_A) / "rank_0_0" / "backbone" / "link"
    link.symlink_to(big)
    set_age(entry_dir(root, COMPILE_A), 5 * DAY)
    os.utime(big, None)  # the target is new: it must not make the entry young
    (entry,) = vc.scan(root)
    assert entry.size == size + len(str(big)) and 5 * DAY - 60 < entry.age() < 5 * DAY + 60
    newest = entry_dir(root, COMPILE_A) / "rank_0_0" / "backbone" / "vllm_compile_cache.py"
    os.utime(newest, None)
    assert vc.scan(root)[0].age() < 60


def test_find_by_unique_prefix(tmp_path: Path) -> None:
    root = tmp_path / "vllm"
    for h in ("abc1234567", "abc7654321"):
        write_compile(root, h)
    write_aot(root, "abd" + "0" * 61)
    assert vc.find(root, "ABC1").hash == "abc1234567" and vc.find(root, "abd").kind == "aot"
    with pytest.raises(CacheError, match=r"hash prefix 'ab' is ambiguous \(3 vLLM entries: .*\); give more of it"):
        vc.find(root, "ab")
    with pytest.raises(CacheError, match=r"no vLLM cache entry has a hash starting with 'zz' in .*cache ls --vllm"):
        vc.find(root, "zz")
    with pytest.raises(CacheError, match="no vLLM cache entry"):
        vc.find(root, "")


def _local(root: Path) -> Path:
    return entry_dir(root, COMPILE_A) / "rank_0_0" / "backbone"


def _rewrite(name: str, text: str):  # type: ignore[no-untyped-def]
    return lambda root: (_local(root) / name).write_text(text)


DAMAGE = {
    "factors not json": (_rewrite("cache_key_factors.json", "{not json"),
                         "rank_0_0/backbone/cache_key_factors.json does not parse (Expecting property name"),
    "factors missing": (lambda root: (_local(root) / "cache_key_factors.json").unlink(),
                        "rank_0_0/backbone/cache_key_factors.json is missing"),
    "factors lack a key": (_rewrite("cache_key_factors.json", json.dumps({"env": {}, "config_hash": "c"})),
                           "cache_key_factors.json lacks code_hash, compiler_hash"),
    "cache file garbage": (_rewrite("vllm_compile_cache.py", "{((1, 2), 0, 'x'): open('/etc/passwd')}"),
                           "rank_0_0/backbone/vllm_compile_cache.py does not parse (malformed node or string on line "
                           "1: <ast.Call object>)"),
    "cache file bad key": (_rewrite("vllm_compile_cache.py", "{((1, 2), 0, 7): {}}"),
                           "vllm_compile_cache.py does not parse (bad key ((1, 2), 0, 7))"),
    "handle missing": (_rewrite("vllm_compile_cache.py", "{((1, 2), 0, 'inductor_standalone'): {'cache_key': 'k'}}"),
                       "((1, 2), 0, 'inductor_standalone') has no graph_handle pair"),
    "artifact missing": (lambda root: (_local(root) / "artifact_compile_range_4_4_subgraph_1").unlink(),
                         "rank_0_0/backbone/artifact_compile_range_4_4_subgraph_1 is missing (listed in"),
    "no prefix": (lambda root: os.rename(_local(root), entry_dir(root, COMPILE_A) / "rank_0_0" / "triton_cache"),
                  "rank_0_0 has no prefix directory"),
    "no rank": (lambda root: os.rename(entry_dir(root, COMPILE_A) / "rank_0_0", entry_dir(root, COMPILE_A) / "x"),
                "no rank_{r}_{dp} directory"),
    "aot without model": (lambda root: (entry_dir(root, AOT) / "rank_0_0" / "model").unlink(),
                          "no rank_*/model file"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_entries_are_listed(capsys: Capsys, cache3: tuple[Path, dict[str, int]], case: str) -> None:
    root, _ = cache3
    damage, why = DAMAGE[case]
    damage(root)
    entries = {e.hash: e for e in vc.scan(root)}
    bad = entries[AOT if case.startswith("aot") else COMPILE_A]
    assert any(why in d for d in bad.damaged), bad.damaged
    assert [h for h, e in entries.items() if e.damaged] == [bad.hash]
    if case.startswith("cache file"):
        assert bad.cache_file_parses is False
    code, out, _ = run(capsys, "cache", "ls", "--vllm-root", str(root))
    assert code == 0 and f"damaged: {bad.damaged[0]}" in out and out.endswith("; 1 damaged (see "
                                                                            "'warmgraph cache show --vllm HASH')\n")
    code, out, _ = run(capsys, "cache", "show", bad.hash[:6], "--vllm", "--vllm-root", str(root))
    assert code == 0 and f"damaged   {bad.damaged[0]}\n" in out


def test_one_bad_rank_damages_the_entry(cache3: tuple[Path, dict[str, int]]) -> None:
    root, _ = cache3
    (entry_dir(root, COMPILE_B) / "rank_1_0" / "backbone" / "vllm_compile_cache.py").write_text("{")
    b = {e.hash: e for e in vc.scan(root)}[COMPILE_B]
    assert b.cache_file_parses is False and b.graphs == 3 and b.ranks == ("rank_0_0", "rank_1_0")
    assert len(b.damaged) == 1 and b.damaged[0].startswith("rank_1_0/backbone/vllm_compile_cache.py does not parse (")


def test_linked_entry_is_listed_never_followed_nor_pruned(tmp_path: Path) -> None:
    root = tmp_path / "vllm"
    write_compile(root, COMPILE_A)
    elsewhere = tmp_path / "elsewhere"
    write_compile(elsewhere, COMPILE_B)
    (root / "torch_compile_cache" / COMPILE_B).symlink_to(entry_dir(elsewhere, COMPILE_B))
    entries = {e.hash: e for e in vc.scan(root)}
    assert entries[COMPILE_B].damaged == ("a symbolic link; not followed",) and entries[COMPILE_B].size == 0
    assert [e.hash for e in vc.prune(root, older_than=0)] == [COMPILE_A]
    assert (root / "torch_compile_cache" / COMPILE_B).is_symlink() and entry_dir(elsewhere, COMPILE_B).is_dir()


def test_cache_dir_linked_out_of_the_root_is_refused(capsys: Capsys, tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "vllm", tmp_path / "elsewhere"
    write_compile(elsewhere, COMPILE_A)
    root.mkdir()
    (root / "torch_compile_cache").symlink_to(elsewhere / "torch_compile_cache")
    with pytest.raises(CacheError, match="is a symbolic link out of"):
        vc.prune(root, older_than=0)
    assert_one_line_error(*run(capsys, "cache", "ls", "--vllm-root", str(root)), "not followed")
    assert entry_dir(elsewhere, COMPILE_A).is_dir()


# -- prune -----------------------------------------------------------------------------------


def test_prune_older_than_oldest_first(cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    assert [e.hash for e in vc.prune(root, older_than=DAY, dry_run=True)] == [COMPILE_A, AOT]
    assert left_entries(root) == sorted([COMPILE_A, COMPILE_B, "torch_aot_compile", AOT])
    removed = vc.prune(root, older_than=DAY)
    assert [e.hash for e in removed] == [COMPILE_A, AOT] and sum(e.size for e in removed) == sizes[COMPILE_A] + 5300
    assert left_entries(root) == [COMPILE_B, "torch_aot_compile"]


def test_prune_max_size_removes_oldest_until_it_fits(cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    total = sum(sizes.values())
    assert vc.prune(root, max_size=total) == []
    assert [e.hash for e in vc.prune(root, max_size=total - 1, dry_run=True)] == [COMPILE_A]
    assert [e.hash for e in vc.prune(root, max_size=sizes[COMPILE_B])] == [COMPILE_A, AOT]
    assert [e.hash for e in vc.scan(root)] == [COMPILE_B]
    assert [e.hash for e in vc.prune(root, older_than=1800, max_size=10**9)] == [COMPILE_B]
    with pytest.raises(CacheError, match="older_than or max_size"):
        vc.prune(root)


def test_prune_never_leaves_a_half_deleted_entry(cache3: tuple[Path, dict[str, int]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = cache3
    real_rmtree = vc.shutil.rmtree
    seen: list[Path] = []

    def killed_midway(path: str | Path, ignore_errors: bool = False) -> None:
        path = Path(path)
        seen.append(path)
        assert not entry_dir(root, COMPILE_A).exists()  # renamed away before the first file goes
        assert path.parent == root / "torch_compile_cache" and path.name.startswith(f".warmgraph-prune-{COMPILE_A}-")
        next(p for p in path.rglob("*") if p.is_file()).unlink()
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(vc.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        vc.prune(root, older_than=DAY)
    monkeypatch.setattr(vc.shutil, "rmtree", real_rmtree)
    assert [e.hash for e in vc.scan(root)] == [AOT, COMPILE_B]  # sound entries only
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = seen[0].with_name(f".warmgraph-prune-{COMPILE_A}-{dead.pid}-0123abcd")
    os.rename(seen[0], leftover)
    assert [e.hash for e in vc.prune(root, older_than=10 * DAY)] == []
    assert left_entries(root) == sorted([COMPILE_B, "torch_aot_compile", AOT])  # the dead prune's leftover is gone


def test_prune_refuses_a_root_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="is not a directory; pass --vllm-root DIR"):
        vc.prune(tmp_path / "file", older_than=0)
    assert vc.prune(tmp_path / "absent", older_than=0) == [] and not (tmp_path / "absent").exists()
