"""``warmgraph cache ls|show|prune --vllm``: a view of vLLM's own torch.compile cache, without vLLM.

The synthetic caches below are laid out as vLLM 0.32.0 writes them (file names, JSON keys and
the pprint'ed ``vllm_compile_cache.py`` are taken from ``vllm/compilation/backends.py``,
``decorators.py`` and ``compiler_interface.py``): every listed value is asserted, sizes to the
byte, ages through ``os.utime``, and prune order, dry runs and interrupted deletions.
"""

from __future__ import annotations

import json
import os
import pprint
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import Capsys, assert_one_line_error, run, run_json

from warmgraph.errors import CacheError
from warmgraph.graph_cache import vllm as vc

# A few of the raw env factors vLLM's envs.compile_factors() writes under "env".
ENV = {"VLLM_COMPILE_CACHE_SAVE_FORMAT": "binary", "VLLM_TARGET_DEVICE": "cpu", "VLLM_USE_AOT_COMPILE": True,
       "VLLM_USE_MEGA_AOT_ARTIFACT": False, "VLLM_USE_STANDALONE_COMPILE": True}
# computation_graph.py: "from __future__ ...\nimport torch\n" + split_gm.print_readable().
GRAPH = ('from __future__ import annotations\nimport torch\nclass GraphModule(torch.nn.Module):\n'
         '    def forward(self, L_input_ids_: "i64[s72]", s72: "Sym(s72)", L_embed_weight_: "bf16[512, 256]", '
         'L_norm_weight_: "bf16[256]", L_positions_: "i64[s72]", L_cos_sin_cache_: "f32[128, 64]"):\n'
         '        submod_0 = self.submod_0(L_input_ids_)\n')
COMPILE_A, COMPILE_B, AOT = "0a1b2c3d4e", "9f8e7d6c5b", "c0ffee" + "1" * 58
DAY = 86400


def write_compile(root: Path, hash10: str, *, ranks: tuple[str, ...] = ("rank_0_0",),
                  ranges: tuple[tuple[int, int], ...] = ((1, 128), (4, 4)), subgraphs: int = 2,
                  artifact: int = 1000, inductor: int = 0) -> int:
    """A ``<hash10>`` entry (prefix "backbone", inductor_standalone artifacts); returns the bytes written."""
    written = 0
    for rank in ranks:
        local = root / "torch_compile_cache" / hash10 / rank / "backbone"
        local.mkdir(parents=True)
        factors = json.dumps({"env": ENV, "config_hash": "c" * 64, "code_hash": "d" * 64, "compiler_hash": "e" * 10},
                             indent=2, sort_keys=True)
        cache = {}
        for s, e in ranges:
            for i in range(subgraphs):
                name = f"artifact_compile_range_{s}_{e}_subgraph_{i}"
                (local / name).write_bytes(b"a" * artifact)
                cache[((s, e), i, "inductor_standalone")] = {"graph_handle": (name, str(local / name)),
                                                             "cache_key": f"a{s}{e}{i}"}
        # CompilerManager.save_to_file; its keys hold Range objects, whose repr is this tuple's (checked
        # against vLLM 0.32.0's writer and reader: only the order of the keys differs).
        text = pprint.PrettyPrinter(indent=4).pformat(cache)
        for name, content in (("cache_key_factors.json", factors), ("computation_graph.py", GRAPH),
                              ("vllm_compile_cache.py", text)):
            (local / name).write_text(content)
            written += len(content)
        written += artifact * len(ranges) * subgraphs
        if inductor:  # the inductor adaptor's cache, beside the prefixes
            (local.parent / "inductor_cache" / "ab").mkdir(parents=True)
            (local.parent / "inductor_cache" / "ab" / "cabc.py").write_bytes(b"i" * inductor)
            written += inductor
    return written


def write_aot(root: Path, sha: str, *, ranks: tuple[str, ...] = ("rank_0_0",), model: int = 5000) -> int:
    """A ``torch_aot_compile/<sha256>`` entry: ``rank_*/model`` and the shared inductor_cache."""
    entry = root / "torch_compile_cache" / "torch_aot_compile" / sha
    (entry / "inductor_cache" / "fx").mkdir(parents=True)
    (entry / "inductor_cache" / "fx" / "graph").write_bytes(b"f" * 300)
    for rank in ranks:
        (entry / rank).mkdir()
        (entry / rank / "model").write_bytes(b"m" * model)
    return 300 + model * len(ranks)


def set_age(path: Path, seconds: float) -> float:
    """Every path in ``path`` last modified ``seconds`` ago (links themselves, not their targets)."""
    t = time.time() - seconds
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(top, name), (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)
    return t


def entry_dir(root: Path, h: str) -> Path:
    base = root / "torch_compile_cache"
    return base / h if len(h) == 10 else base / "torch_aot_compile" / h


@pytest.fixture
def cache3(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A 3 days old compile entry, a 2 days old AOT entry and an hour old compile entry (two ranks)."""
    root = tmp_path / "vllm"
    sizes = {COMPILE_A: write_compile(root, COMPILE_A, artifact=4096, inductor=700), AOT: write_aot(root, AOT),
             COMPILE_B: write_compile(root, COMPILE_B, ranks=("rank_0_0", "rank_1_0"), ranges=((1, 8192),),
                                      subgraphs=3, artifact=2**20)}
    for h, age in ((COMPILE_A, 3 * DAY), (AOT, 2 * DAY), (COMPILE_B, 3600)):
        set_age(entry_dir(root, h), age)
    return root, sizes


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


def _left(root: Path) -> list[str]:
    """Every name left in the two entry directories, hidden ones included."""
    base = root / "torch_compile_cache"
    return sorted(p.name for d in (base, base / "torch_aot_compile") if d.is_dir() for p in d.iterdir())


def test_prune_older_than_oldest_first(cache3: tuple[Path, dict[str, int]]) -> None:
    root, sizes = cache3
    assert [e.hash for e in vc.prune(root, older_than=DAY, dry_run=True)] == [COMPILE_A, AOT]
    assert _left(root) == sorted([COMPILE_A, COMPILE_B, "torch_aot_compile", AOT])
    removed = vc.prune(root, older_than=DAY)
    assert [e.hash for e in removed] == [COMPILE_A, AOT] and sum(e.size for e in removed) == sizes[COMPILE_A] + 5300
    assert _left(root) == [COMPILE_B, "torch_aot_compile"]


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
    assert _left(root) == sorted([COMPILE_B, "torch_aot_compile", AOT])  # the dead prune's leftover is gone


def test_prune_refuses_a_root_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="is not a directory; pass --vllm-root DIR"):
        vc.prune(tmp_path / "file", older_than=0)
    assert vc.prune(tmp_path / "absent", older_than=0) == [] and not (tmp_path / "absent").exists()


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
    assert _left(root) == ["torch_aot_compile"]


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
