"""Cache archives: export/import round trips, selection, and every way a hostile or broken archive is refused.

The caches are real (``GraphCache.store`` on tmp_path) but hold a few small files instead of
compiled graphs, so nothing is compiled. A refused archive must leave the target cache
exactly as it was: same entries, same bytes, nothing left in ``tmp/``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from warmgraph.errors import CacheError, CacheWriteError
from warmgraph.graph_cache import archive as archive_mod
from warmgraph.graph_cache import archive_import as import_mod
from warmgraph.graph_cache.archive import INDEX, export_archive, import_archive
from warmgraph.graph_cache.key import CacheKey, make_key
from warmgraph.graph_cache.store import GraphCache

Member = tuple[tarfile.TarInfo, bytes]


def key_of(name: str, bucket: tuple[int, ...], backend: str = "aot") -> CacheKey:
    return make_key(graph={"name": name, "code": "0" * 8}, bucket=bucket, backend={"backend": backend},
                    device={"type": "cpu"})


def add(cache: GraphCache, key: CacheKey, payload: bytes = b"graph") -> str:
    def write(d: Path) -> list[str]:
        (d / "graph.bin").write_bytes(payload * 10)
        (d / "meta.json").write_text(json.dumps({"bucket": list(key.bucket)}))
        return ["graph.bin", "meta.json"]

    with cache.lock(key.hash):
        cache.store(key, write, 0.01)
    return key.hash


@pytest.fixture
def source(tmp_path: Path) -> tuple[GraphCache, dict[str, str]]:
    """Four entries: two graphs, two backends."""
    cache = GraphCache(tmp_path / "src")
    keys = {
        "dec1": add(cache, key_of("decode", (1, 128)), b"a"),
        "dec8": add(cache, key_of("decode", (8, 128)), b"b"),
        "pre": add(cache, key_of("prefill", (1, 512)), b"c"),
        "pre_ind": add(cache, key_of("prefill", (1, 512), "inductor"), b"d"),
    }
    return cache, keys


@pytest.fixture
def target(tmp_path: Path) -> GraphCache:
    cache = GraphCache(tmp_path / "dst")
    cache.ensure()
    return cache


@pytest.fixture
def good_archive(source: tuple[GraphCache, dict[str, str]], tmp_path: Path) -> Path:
    out = tmp_path / "good.tar.gz"
    export_archive(source[0], out)
    return out


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` with its mode and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        out[str(p.relative_to(root))] = (st.st_mode, digest)
    return out


def read_members(path: Path) -> list[Member]:
    with tarfile.open(path, "r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


def write_members(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def file_member(name: str, data: bytes) -> Member:
    return tarfile.TarInfo(name), data


def first_entry(members: list[Member]) -> str:
    return next(m.name for m, _ in members if m.name.startswith("entries/") and m.isdir())


# -- round trip and selection ----------------------------------------------------------------


def test_round_trip(source: tuple[GraphCache, dict[str, str]], target: GraphCache, good_archive: Path) -> None:
    src, keys = source
    imported = import_archive(target, good_archive)
    assert sorted(imported) == sorted(keys.values())
    ok, bad = target.verify()
    assert sorted(ok) == sorted(keys.values()) and bad == []
    for k in keys.values():
        a, b = src.get(k), target.get(k)
        assert a.manifest == b.manifest
        for name in a.manifest["files"]:
            assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
            assert stat.S_IMODE((b.path / name).stat().st_mode) == 0o600
        assert stat.S_IMODE(b.path.stat().st_mode) == 0o700
        assert b.usage()["hits"] == 0
    assert list((target.root / "tmp").iterdir()) == []
    # Again: every key is present and intact, so nothing is imported and nothing changes.
    before = snapshot(target.root / "entries")
    assert import_archive(target, good_archive) == []
    assert snapshot(target.root / "entries") == before


def test_archive_layout_leaks_nothing_local(good_archive: Path, source: tuple[GraphCache, dict[str, str]]) -> None:
    members = read_members(good_archive)
    names = [m.name for m, _ in members]
    assert names[0] == INDEX
    index = json.loads(members[0][1])
    assert sorted(index["keys"]) == sorted(source[1].values()) and index["format"] == 1
    assert not any(n.endswith("/usage.json") for n in names)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m, _ in members)
    assert {stat.S_IMODE(m.mode) for m, _ in members} <= {0o600, 0o700}


def test_import_creates_a_missing_root(good_archive: Path, tmp_path: Path) -> None:
    cache = GraphCache(tmp_path / "new" / "cache")
    assert len(import_archive(cache, good_archive)) == 4
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700


def test_import_replaces_a_damaged_entry(source: tuple[GraphCache, dict[str, str]], target: GraphCache,
                                         good_archive: Path) -> None:
    import_archive(target, good_archive)
    damaged = target.get(source[1]["dec1"])
    (damaged.path / "graph.bin").write_bytes(b"z" * 10)
    assert import_archive(target, good_archive) == [source[1]["dec1"]]
    assert target.verify()[1] == []


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({"graph_name": "decode"}, ["dec1", "dec8"]),
        ({"backend": "inductor"}, ["pre_ind"]),
        ({"graph_name": "prefill", "backend": "aot"}, ["pre"]),
        ({"keys": ["dec8"]}, ["dec8"]),
    ],
)
def test_selection(source: tuple[GraphCache, dict[str, str]], tmp_path: Path, selection: dict,
                   expected: list[str]) -> None:
    src, keys = source
    if "keys" in selection:
        selection = {"keys": [keys[k][:16] for k in selection["keys"]]}
    out = tmp_path / "sel.tar.gz"
    assert sorted(export_archive(src, out, **selection)) == sorted(keys[k] for k in expected)
    assert sorted(import_archive(GraphCache(tmp_path / "sel"), out)) == sorted(keys[k] for k in expected)


def test_selection_by_key_prefix(source: tuple[GraphCache, dict[str, str]], tmp_path: Path) -> None:
    src, keys = source
    out = tmp_path / "one.tar.gz"
    assert export_archive(src, out, fingerprint=keys["pre"][:10]) == [keys["pre"]]


def test_weight_entries_go_only_when_named(source: tuple[GraphCache, dict[str, str]], tmp_path: Path) -> None:
    src, keys = source
    key = key_of("vllm-weights", ())

    def write(d: Path) -> list[str]:
        (d / "weights.safetensors").write_bytes(b"w" * 100)
        return ["weights.safetensors"]

    with src.lock(key.hash):
        src.store(key, write, 0.01, extra={"holds_weights": True})
    assert sorted(export_archive(src, tmp_path / "all.tar.gz")) == sorted(keys.values())
    assert export_archive(src, tmp_path / "w.tar.gz", graph_name="vllm-weights") == [key.hash]
    assert export_archive(src, tmp_path / "k.tar.gz", keys=[key.hash[:12]]) == [key.hash]


def test_empty_selection_is_refused(source: tuple[GraphCache, dict[str, str]], tmp_path: Path) -> None:
    out = tmp_path / "none.tar.gz"
    with pytest.raises(CacheError, match=r"nothing to export.*graph 'nope'"):
        export_archive(source[0], out, graph_name="nope")
    with pytest.raises(CacheError, match="nothing to export"):
        export_archive(GraphCache(tmp_path / "absent"), out)
    assert not out.exists() and not (tmp_path / "absent").exists()


def test_export_refuses_a_corrupted_entry(source: tuple[GraphCache, dict[str, str]], tmp_path: Path) -> None:
    src, keys = source
    f = src.get(keys["dec8"]).path / "graph.bin"
    data = bytearray(f.read_bytes())
    data[3] ^= 0x01
    f.write_bytes(bytes(data))
    out = tmp_path / "bad.tar.gz"
    with pytest.raises(CacheError, match=f"entry {keys['dec8'][:12]}.*checksum"):
        export_archive(src, out)
    assert list(tmp_path.glob("*.tar.gz*")) == [] and list(tmp_path.glob(".bad*")) == []
    # The other entries still export.
    assert keys["dec8"] not in export_archive(src, out, backend="inductor")


def test_export_enospc_leaves_nothing(source: tuple[GraphCache, dict[str, str]], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "full.tar.gz"
    out.write_bytes(b"the previous archive")
    real = archive_mod._add_entry
    calls = []

    def add_then_fill_disk(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # part of the archive is already on disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(*args)

    monkeypatch.setattr(archive_mod, "_add_entry", add_then_fill_disk)
    with pytest.raises(CacheWriteError, match="no space left on device"):
        export_archive(source[0], out)
    assert out.read_bytes() == b"the previous archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.tar.gz", "src"]


def test_export_to_a_missing_directory(source: tuple[GraphCache, dict[str, str]], tmp_path: Path) -> None:
    with pytest.raises(CacheWriteError, match="could not write archive"):
        export_archive(source[0], tmp_path / "no" / "such" / "dir.tar.gz")


def test_import_enospc_leaves_nothing(good_archive: Path, target: GraphCache,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(target.root)
    real = import_mod._write_file
    calls = []

    def write_then_fill_disk(src: object, dest: Path) -> str:
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dest)

    monkeypatch.setattr(import_mod, "_write_file", write_then_fill_disk)
    with pytest.raises(CacheWriteError, match="no space left on device; nothing was imported"):
        import_archive(target, good_archive)
    assert snapshot(target.root) == before


# -- refused archives ------------------------------------------------------------------------


def _add_member(member: Member) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [*ms, member]


def _in_entry(name: str, kind: bytes, link: str = "", data: bytes = b"") -> Callable[[list[Member]], list[Member]]:
    def edit(ms: list[Member]) -> list[Member]:
        info = tarfile.TarInfo(f"{first_entry(ms)}/{name}")
        info.type = kind
        info.linkname = link
        return [*ms, (info, data)]

    return edit


def _edit_file(suffix: str, change: Callable[[bytes], bytes]) -> Callable[[list[Member]], list[Member]]:
    def edit(ms: list[Member]) -> list[Member]:
        entry = first_entry(ms)
        return [(m, change(d) if m.name == f"{entry}/{suffix}" else d) for m, d in ms]

    return edit


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def _manifest_key(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["key"] = "f" * 64
    return json.dumps(manifest).encode()


def _drop(suffix: str) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [(m, d) for m, d in ms if not m.name.endswith(suffix)]


def _index(change: Callable[[dict], dict]) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [(m, json.dumps(change(json.loads(d))).encode() if m.name == INDEX else d) for m, d in ms]


REFUSED = {
    "dotdot": (_add_member(file_member("entries/../../evil.so", b"x")), "'..' component"),
    "dotdot_inside": (lambda ms: [*ms, file_member(f"{first_entry(ms)}/../../../evil", b"x")], "'..' component"),
    "absolute": (_add_member(file_member("/tmp/warmgraph-evil.so", b"x")), "absolute path"),
    "symlink": (_in_entry("graph.so", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink": (_in_entry("hard.so", tarfile.LNKTYPE, "warmgraph-archive.json"), "hard link"),
    "fifo": (_in_entry("pipe", tarfile.FIFOTYPE), "fifo"),
    "device": (_in_entry("dev", tarfile.CHRTYPE), "device"),
    "checksum": (_edit_file("graph.bin", _flip), "does not match its sha256"),
    "size": (_edit_file("graph.bin", lambda d: d + b"!"), "bytes, the manifest says"),
    "unlisted": (_in_entry("extra.so", tarfile.REGTYPE, data=b"payload"), "not listed in the entry's manifest"),
    "usage_file": (_in_entry("usage.json", tarfile.REGTYPE, data=b"{}"), "not listed in the entry's manifest"),
    "missing_file": (_drop("/meta.json"), "listed in the manifest but missing"),
    "manifest_key": (_edit_file("manifest.json", _manifest_key), "not its directory"),
    "manifest_json": (_edit_file("manifest.json", lambda d: b"{not json"), "not valid JSON"),
    "manifest_format": (_edit_file("manifest.json", lambda d: d.replace(b'"format": 1', b'"format": 99')),
                        "cache format 99"),
    "no_manifest": (_drop("/manifest.json"), "has no manifest.json"),
    "outside_entries": (_add_member(file_member("bin/evil.so", b"x")), "is not under entries/"),
    "bad_key_dir": (_add_member(file_member("entries/abc/graph.bin", b"x")), "is not under entries/"),
    "nested_dir": (lambda ms: [*ms, file_member(f"{first_entry(ms)}/sub/x.so", b"x")], "is not under entries/"),
    "duplicate": (lambda ms: [*ms, file_member(f"{first_entry(ms)}/graph.bin", b"x")], "appears twice"),
    "no_index": (_drop(INDEX), "is missing"),
    "index_keys": (_index(lambda i: {**i, "keys": i["keys"][1:]}), "lists keys that differ"),
    "index_format": (_index(lambda i: {**i, "format": 7}), "archive format 7"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_archive_changes_nothing(case: str, good_archive: Path, target: GraphCache, tmp_path: Path,
                                         source: tuple[GraphCache, dict[str, str]]) -> None:
    add(target, key_of("already", (2,)))  # a cache with something in it, to show it is left alone
    before = snapshot(target.root)
    edit, fragment = REFUSED[case]
    bad = write_members(tmp_path / f"{case}.tar.gz", edit(read_members(good_archive)))
    with pytest.raises(CacheError, match="refusing archive") as info:
        import_archive(target, bad)
    assert fragment in str(info.value) and "nothing was imported" in str(info.value)
    assert snapshot(target.root) == before
    assert list((target.root / "tmp").iterdir()) == []
    assert not (tmp_path / "evil.so").exists() and not Path("/tmp/warmgraph-evil.so").exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"this is plain text, not gzip", "not a readable gzip-compressed tar"),
        (b"", "not a readable gzip-compressed tar"),
    ],
)
def test_not_an_archive(tmp_path: Path, target: GraphCache, content: bytes, fragment: str) -> None:
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(content)
    before = snapshot(target.root)
    with pytest.raises(CacheError, match=fragment):
        import_archive(target, path)
    assert snapshot(target.root) == before


def test_truncated_archive(good_archive: Path, target: GraphCache, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good_archive.read_bytes()[: good_archive.stat().st_size // 2])
    before = snapshot(target.root)
    with pytest.raises(CacheError, match="truncated"):
        import_archive(target, cut)
    assert snapshot(target.root) == before


def test_missing_archive(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path / "never")
    with pytest.raises(CacheError, match="does not exist; give the path of a file written by 'warmgraph cache export'"):
        import_archive(cache, tmp_path / "nope.tar.gz")
    with pytest.raises(CacheError, match="is a directory"):
        import_archive(cache, tmp_path)
    assert not cache.root.exists()
