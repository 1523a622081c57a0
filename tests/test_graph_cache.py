"""The graph cache: keys, the store's guarantees, and the runner loading hits / storing misses."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_devices import FakeCudaModule

import warmgraph
from warmgraph.compiler.devices import CudaGraphAPI
from warmgraph.compiler.fingerprint import MAX_HASHED_BYTES, fingerprint
from warmgraph.compiler.registry import get_backend
from warmgraph.errors import CacheError, CacheSecurityError
from warmgraph.graph_cache import GraphCache, default_root, make_key
from warmgraph.models.toy import MLP


class FileBackend:
    """A cheap persistable backend: 'compiling' is free, saving writes one small file."""

    name = "filetest"
    can_persist = True
    captures = False

    def __init__(self) -> None:
        self.compiled = 0
        self.loaded = 0

    def compile(self, fn: Any, example_inputs: Any) -> Any:
        self.compiled += 1
        return fn

    def save(self, graph: Any, directory: Path) -> list[str]:
        (directory / "program.bin").write_bytes(b"\x7fWG" * 100)
        return ["program.bin"]

    def load(self, directory: Path, fn: Any, example_inputs: Any) -> Any:
        assert (directory / "program.bin").read_bytes() == b"\x7fWG" * 100
        self.loaded += 1
        return fn

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name}


def key(bucket: int = 1, **graph: Any):  # type: ignore[no-untyped-def]
    return make_key(graph={"name": "g", **graph}, bucket=(bucket,), backend={"backend": "filetest"},
                    device={"type": "cpu"})


def write(d: Path) -> list[str]:
    (d / "a.bin").write_bytes(os.urandom(256))
    return ["a.bin"]


def test_default_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WARMGRAPH_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_root() == Path.home() / ".cache" / "warmgraph"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "warmgraph"
    monkeypatch.setenv("WARMGRAPH_CACHE_DIR", str(tmp_path / "wg"))
    assert default_root() == tmp_path / "wg"


def test_root_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        cache = GraphCache(tmp_path / "c")
        cache.ensure()
    finally:
        os.umask(old)
    for p in (cache.root, cache.root / "entries", cache.root / "tmp", cache.root / "locks"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700


def test_store_lookup_round_trip_and_usage(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path)
    k = key()
    assert cache.lookup(k) is None
    entry = cache.store(k, write, compile_seconds=1.5)
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["key"] == k.hash and manifest["factors"] == json.loads(json.dumps(k.factors))
    assert manifest["files"]["a.bin"]["size"] == 256 and len(manifest["files"]["a.bin"]["sha256"]) == 64
    assert stat.S_IMODE((entry.path / "a.bin").stat().st_mode) == 0o600
    found = cache.lookup(k)
    assert found is not None and found.key == k.hash
    cache.touch(found)
    cache.touch(found)
    assert found.usage()["hits"] == 2
    assert list((tmp_path / "tmp").iterdir()) == []


def test_key_factors() -> None:
    assert key().hash == key().hash
    assert len({key().hash, key(bucket=2).hash, key(code="other").hash}) == 3
    a = make_key(graph={"name": "g"}, bucket=(1,), backend={"backend": "aot"}, device={"type": "cpu"}, env={})
    b = make_key(graph={"name": "g"}, bucket=(1,), backend={"backend": "aot"}, device={"type": "cpu"},
                 env={"TORCHINDUCTOR_MAX_AUTOTUNE": "1", "TORCHINDUCTOR_CACHE_DIR": "/x"})
    c = make_key(graph={"name": "g"}, bucket=(1,), backend={"backend": "aot"}, device={"type": "cpu"},
                 env={"TORCHINDUCTOR_CACHE_DIR": "/elsewhere"})
    assert a.hash != b.hash and a.hash == c.hash  # codegen settings count, cache locations do not


def _closing_over(seed: int) -> Any:
    table = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    model = MLP()

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return model(x) * table

    return scaled


def test_fingerprint_of_a_callable_hashes_what_it_closes_over() -> None:
    x = (torch.randn(4, 64),)
    torch.manual_seed(0)
    a = fingerprint(_closing_over(1), x)
    torch.manual_seed(0)
    assert a.persistable and fingerprint(_closing_over(1), x) == a
    torch.manual_seed(0)
    assert fingerprint(_closing_over(2), x) != a  # another closed-over table: another graph
    # The closed-over module's weights are baked into such graphs too, so they count.
    torch.manual_seed(0)
    one = fingerprint(_closing_over(1), x)
    torch.manual_seed(1)
    assert fingerprint(_closing_over(1), x) != one
    big = torch.zeros(MAX_HASHED_BYTES // 4 + 1)
    huge = fingerprint(lambda t: t + big, x)
    assert not huge.persistable and "not cached" in (huge.reason or "") and "MB of tensors" in (huge.reason or "")


def test_a_closure_never_loads_another_functions_graph(tmp_path: Path) -> None:
    # aot bakes what a plain callable closes over into its package; a cached entry compiled
    # for seed-1 values must not serve the same code closing over seed-2 values.
    x = torch.randn(2, 64)
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        fn = _closing_over(seed)
        runner = warmgraph.compile(fn, buckets=[2], example_inputs=(x,), backend="aot", cache=tmp_path)
        runner.warmup()
        results.append((runner.counters["cache_hits"], runner.counters["compiles"]))
        torch.testing.assert_close(runner(x), fn(x).detach(), rtol=1e-4, atol=1e-5)
    assert results == [(0, 1), (0, 1)]
    assert len(GraphCache(tmp_path).entries()) == 2


def test_corrupt_entries_are_misses_logged_once_and_removed(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cache = GraphCache(tmp_path)
    k = key()
    entry = cache.store(k, write, 0.1)
    data = bytearray((entry.path / "a.bin").read_bytes())
    data[17] ^= 0xFF
    (entry.path / "a.bin").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="warmgraph"):
        assert cache.lookup(k) is None
        assert cache.lookup(k) is None
    assert sum("does not match its checksum" in r.message for r in caplog.records) == 1
    assert not entry.path.exists()
    entry = cache.store(k, write, 0.1)
    (entry.path / "manifest.json").write_text("{not json")
    assert cache.lookup(k) is None and not entry.path.exists()


def test_lru_cap_prune_and_sweep(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path, max_bytes=3 * 256)
    entries = []
    for b in range(1, 4):
        entries.append(cache.store(key(b), write, 0.1))
        time.sleep(0.01)
    cache.touch(entries[0])  # bucket 1 used most recently now
    cache.store(key(4), write, 0.1)  # over the cap: the least recently used (bucket 2) goes
    kept = {tuple(e.manifest["bucket"]) for e in cache.entries()}
    assert kept == {(1,), (3,), (4,)}
    assert cache.prune(keep_last=1) and len(cache.entries()) == 1
    assert cache.prune(older_than=-1) and cache.entries() == []
    dead = tmp_path / "tmp" / f"{'0' * 64}.999999999.abcd"
    mine = tmp_path / "tmp" / f"{'0' * 64}.{os.getpid()}.abcd"
    dead.mkdir()
    mine.mkdir()
    assert cache.sweep() == 1 and not dead.exists() and mine.exists()


def test_get_by_prefix(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path)
    hashes = [cache.store(key(b), write, 0.1).key for b in range(1, 40)]
    assert cache.get(hashes[0][:20]).key == hashes[0]
    with pytest.raises(CacheError, match="no cache entry has a key starting with 'zz'"):
        cache.get("zz")
    shared = next(h[0] for h in hashes if sum(x[0] == h[0] for x in hashes) > 1)
    with pytest.raises(CacheError, match="ambiguous"):
        cache.get(shared)


def test_unsafe_root_and_entry_are_refused(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path / "c")
    k = key()
    entry = cache.store(k, write, 0.1)
    os.chmod(entry.path, 0o770)
    with pytest.raises(CacheSecurityError, match=r"writable by group or others.*chmod go-w"):
        cache.lookup(k)
    os.chmod(entry.path, 0o700)
    os.chmod(cache.root, 0o775)
    with pytest.raises(CacheSecurityError, match="chmod go-w"):
        GraphCache(cache.root).lookup(k)


def test_runner_second_start_loads_everything(tmp_path: Path) -> None:
    backend = FileBackend()
    model = MLP().eval()
    first = warmgraph.compile(model, buckets=[1, 2, 4], example_inputs=(torch.randn(4, 64),), backend=backend,
                              cache=tmp_path)
    report = first.warmup()
    assert (report.compiled, report.loaded) == (3, 0)
    assert {k: first.counters[k] for k in ("compiles", "cache_misses", "cache_writes", "cache_hits")} == {
        "compiles": 3, "cache_misses": 3, "cache_writes": 3, "cache_hits": 0}
    second = warmgraph.compile(model, buckets=[1, 2, 4], example_inputs=(torch.randn(4, 64),), backend=backend,
                               cache=GraphCache(tmp_path))
    report = second.warmup()
    assert (report.compiled, report.loaded) == (0, 3)
    assert second.counters["compiles"] == 0 and second.counters["cache_hits"] == 3
    assert second.counters["bytes_loaded"] == 3 * 300
    assert backend.compiled == 3 and backend.loaded == 3


def test_capture_backend_caches_its_inner_graph_and_recaptures(tmp_path: Path) -> None:
    inner = FileBackend()
    fake = FakeCudaModule()
    with fake.placement():
        model = MLP().eval().to(fake.device_type)

        def runner() -> warmgraph.GraphRunner:
            backend = get_backend("cuda_graph", api=CudaGraphAPI(fake, device_type=fake.device_type), inner=inner)
            return warmgraph.compile(model, buckets=[2, 4], example_inputs=(torch.randn(4, 64, device="cpu"),),
                                     backend=backend, cache=tmp_path)

        cold = runner()
        cold.warmup()
        warm = runner()
        warm.warmup()
        assert cold.counters["compiles"] == 2 and cold.counters["captures"] == 2
        assert warm.counters["compiles"] == 0 and warm.counters["cache_hits"] == 2 and warm.counters["captures"] == 2
        x = torch.randn(3, 64)
        torch.testing.assert_close(warm(x), model(x).detach())


def test_aot_fine_tune_reuses_entries_and_binds_new_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = MLP().eval()
    example = (torch.randn(2, 64),)
    cold = warmgraph.compile(base, buckets=[2], example_inputs=example, backend="aot", cache=tmp_path)
    cold.warmup()
    torch.manual_seed(7)
    tuned = MLP().eval()  # same architecture, other weights
    warm = warmgraph.compile(tuned, buckets=[2], example_inputs=example, backend="aot", cache=tmp_path)
    assert warm.warmup().loaded == 1 and warm.counters["compiles"] == 0
    x = torch.randn(2, 64)
    torch.testing.assert_close(warm(x), tuned(x).detach(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        tuned.down.bias.add_(1.0)  # bound, not copied: an in-place change is seen
    torch.testing.assert_close(warm(x), tuned(x).detach(), rtol=1e-4, atol=1e-5)
    assert len(GraphCache(tmp_path).entries()) == 1


def test_an_unusable_cache_costs_the_cache_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backend = FileBackend()
    runner = warmgraph.compile(MLP().eval(), buckets=[2, 4], example_inputs=(torch.randn(4, 64),), backend=backend,
                               cache=blocker / "cache")  # cannot be created: its parent is a file
    with caplog.at_level(logging.WARNING, logger="warmgraph"):
        report = runner.warmup()
    assert report.compiled == 2 and runner.counters["cache_writes"] == 0
    assert sum("continuing with in-memory graphs" in r.message for r in caplog.records) == 1
    x = torch.randn(3, 64)
    torch.testing.assert_close(runner(x), runner.fn(x).detach())


def test_lock_failure_is_a_cache_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import warmgraph.graph_cache.store as store_mod
    from warmgraph.errors import CacheWriteError

    cache = GraphCache(tmp_path)
    cache.ensure()

    class Full:
        def __init__(self, *a: Any, **k: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "FileLock", Full)
    with pytest.raises(CacheWriteError, match="No space left on device"), cache.lock("ab" * 32):
        pass


def test_a_root_another_process_creates_meanwhile_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cold processes race to create the root: the loser's mkdir finds it there. That is
    not a write failure (it once sent one process to in-memory graphs, compiling twice)."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)  # the winner's mkdir
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == root else real_exists(self))
    cache = GraphCache(root)
    cache.ensure()  # our check saw no root; our mkdir raises FileExistsError
    assert (root / "entries").is_dir() and (root / "locks").is_dir()


def test_aot_kernels_take_the_thread_count_at_run_time(tmp_path: Path) -> None:
    """A graph compiled with one thread (as warmup workers compile) must still use every thread a
    later process is given, and never more: its kernels' parallel regions name no thread count."""
    import re
    import zipfile

    class Rows(torch.nn.Module):
        def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return (x.unsqueeze(-2) * w).sum(-1)  # a reduction over 4096 rows: worth splitting

    backend = get_backend("aot")  # held: its work directory holds the package until it goes
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        graph = backend.compile(Rows(), (torch.randn(1, 256), torch.randn(4096, 256)))
    finally:
        torch.set_num_threads(before)
    with zipfile.ZipFile(graph.package) as package:
        source = "".join(package.read(n).decode() for n in package.namelist() if n.endswith("kernel.cpp"))
    pragmas = re.findall(r"^\s*#pragma omp parallel.*$", source, flags=re.MULTILINE)
    assert pragmas, "the kernel has no parallel region: it was fixed to the compiling process's one thread"
    assert not any("num_threads" in p for p in pragmas), pragmas
