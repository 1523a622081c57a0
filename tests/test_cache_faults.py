"""The graph cache under faults, with real parts: the real aot backend, real processes, real kill -9.

1. kill -9 of a cold warmup: once the moment ``tmp/`` shows an entry being written, then at
   spread random moments; after every kill ``verify()`` finds nothing bad, and a last run
   succeeds, matches eager and leaves every entry verified and ``tmp/`` swept.
2. concurrency: 2, then 8 processes released together on one empty cache compile each key
   once between them; the others load it; all match eager.
3. a flipped byte in an artifact: detected before loading, recompiled, stored again.
4. a full disk (ENOSPC while the entry is written): warmup goes on with in-memory graphs,
   warns, counts no write and leaves nothing partial.
5. security: a group- or world-writable root, entry directory or artifact is refused with
   the ``chmod go-w`` fix, before anything is loaded or compiled.

The processes are ``tests/cache_worker.py``: one warmup, one JSON line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import warmgraph
from warmgraph.compiler.aot import META, PACKAGE
from warmgraph.errors import CacheSecurityError
from warmgraph.graph_cache import GraphCache
from warmgraph.models.toy import MLP

WORKER = Path(__file__).resolve().with_name("cache_worker.py")
KILL_BUCKETS = "1,2,4"
# One worker's cold warmup of KILL_BUCKETS, start to exit, on the 2-core reference machine
# (2 s startup + 3 compiles of ~11 s): random kills spread over this window land in startup,
# in compilation, in a store, or after the process is done.
FULL_WARMUP_S = 36.0
RUN_TIMEOUT_S = 240.0


# -- worker processes ----------------------------------------------------------------------------


def spawn(cache: Path, buckets: str, log: Path, *extra: str) -> subprocess.Popen[str]:
    """Start a worker in its own session, so kill -9 reaches Inductor's compiler children too."""
    with open(log, "a") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKER), "--cache", str(cache), "--buckets", buckets, "--backend", "aot", *extra],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
        )


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the worker and everything it started, and reap it (a zombie still looks alive to the sweep)."""
    with contextlib.suppress(ProcessLookupError):  # the whole group already exited
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def finish(proc: subprocess.Popen[str], log: Path, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The worker's JSON line once it exits 0; a failure shows the end of its stderr."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError(f"worker {proc.pid} ran past {timeout}s:\n{log.read_text()[-3000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"worker {proc.pid} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def assert_nothing_bad(cache: Path, context: str) -> list[str]:
    """Every directory in entries/ is a whole, verified entry; returns their keys."""
    ok, bad = GraphCache(cache).verify()
    assert bad == [], f"{context}: bad entries {bad}"
    on_disk = sorted(p.name for p in (cache / "entries").iterdir()) if (cache / "entries").is_dir() else []
    assert on_disk == sorted(ok), f"{context}: entries/ holds {on_disk}, verified {ok}"
    return ok


def tmp_names(cache: Path) -> list[str]:
    try:
        return os.listdir(cache / "tmp")
    except FileNotFoundError:
        return []


# -- 1. kill -9 ----------------------------------------------------------------------------------


def kill_while_writing(cache: Path, log: Path, store_delay: float) -> tuple[bool, str]:
    """Run a worker and kill -9 it the moment tmp/ shows an entry being written.

    A natural store keeps its tmp/ directory for 10-90 ms here (copy, fsync, sha256,
    manifest, rename), and tmp/ is polled every millisecond. Returns whether a leftover
    remained in tmp/ (the kill landed mid-write) and what happened.
    """
    extra = ("--store-delay", str(store_delay)) if store_delay else ()
    proc = spawn(cache, KILL_BUCKETS, log, *extra)
    start = time.monotonic()
    seen: list[str] = []
    while proc.poll() is None and time.monotonic() - start < RUN_TIMEOUT_S:
        seen = [n for n in tmp_names(cache) if ".rm" not in n]  # an entry being written, not one being removed
        if seen:
            break
        time.sleep(0.001)
    exited = proc.poll() is not None
    kill9(proc)
    left = tmp_names(cache)
    return bool(seen) and bool(left), (f"store_delay={store_delay}: saw {seen} after {time.monotonic() - start:.1f}s, "
                                       f"{'exited before the kill' if exited else 'killed'}, tmp/ left {left}")


def test_kill9_during_cold_warmup_leaves_no_bad_entry(tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "workers.log"
    history: list[str] = []

    # Once right inside a store. If the poll misses the natural window, a second worker
    # (it loads what the first stored and compiles the next bucket) holds its tmp/ dir for 2 s.
    caught = False
    for store_delay in (0.0, 2.0):
        caught, what = kill_while_writing(cache, log, store_delay)
        history.append(what)
        assert_nothing_bad(cache, what)
        if caught:
            break
    assert caught, f"no kill landed while an entry was being written: {history}"

    # Then at random moments, one in each fifth of a full warmup (in shuffled order), so some
    # land in startup, some in compilation, some in or after a store.
    rng = random.Random(1234)
    strata = FULL_WARMUP_S - 1.0
    delays = [1.0 + strata * (i + rng.random()) / 5 for i in range(5)]
    rng.shuffle(delays)
    for delay in delays:
        proc = spawn(cache, KILL_BUCKETS, log)
        try:
            proc.wait(timeout=delay)
            outcome = f"exited {proc.returncode} before {delay:.1f}s"
            assert proc.returncode == 0, f"{outcome}:\n{log.read_text()[-3000:]}"
            proc.communicate()
        except subprocess.TimeoutExpired:
            left = tmp_names(cache)
            kill9(proc)
            outcome = f"killed at {delay:.1f}s, tmp/ {left}"
        ok = assert_nothing_bad(cache, outcome)
        history.append(f"{outcome}, {len(ok)} entries verified")

    final = finish(spawn(cache, KILL_BUCKETS, log), log)
    history.append(f"final run: compiled {final['compiled']}, loaded {final['loaded']}")
    assert final["ok"] and final["max_abs_err"] < 1e-4, history
    assert final["compiled"] + final["loaded"] == 3, history
    assert final["counters"]["cache_hits"] == final["loaded"], history
    ok = assert_nothing_bad(cache, "after the final run")
    assert len(ok) == 3, history
    assert tmp_names(cache) == [], f"dead writers' leftovers were not swept: {tmp_names(cache)}; {history}"
    print("\n".join(history))


# -- 2. concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [2, 8])
def test_concurrent_cold_warmups_compile_each_key_once(tmp_path: Path, processes: int) -> None:
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    buckets = [1, 2]
    logs = [tmp_path / f"worker{i}.log" for i in range(processes)]
    procs = [spawn(cache, ",".join(map(str, buckets)), log, "--barrier", str(barrier), "--parties", str(processes))
             for log in logs]
    results = [finish(p, log) for p, log in zip(procs, logs)]

    summary = [(r["pid"], r["counters"]["compiles"], r["counters"]["cache_hits"]) for r in results]
    assert len({r["pid"] for r in results}) == processes
    assert sum(r["counters"]["compiles"] for r in results) == len(buckets), summary
    assert sum(r["counters"]["cache_writes"] for r in results) == len(buckets), summary
    assert sum(r["counters"]["cache_misses"] for r in results) == len(buckets), summary
    for r in results:
        c = r["counters"]
        assert r["ok"] and r["max_abs_err"] < 1e-4, r
        # Every bucket is either compiled here or loaded from what a peer stored.
        assert c["compiles"] + c["cache_hits"] == len(buckets) == r["compiled"] + r["loaded"], r
    assert sum(r["counters"]["cache_hits"] for r in results) == len(buckets) * (processes - 1), summary
    assert len(assert_nothing_bad(cache, "after the concurrent warmups")) == len(buckets)
    assert tmp_names(cache) == []


# -- in-process tests on one stored entry --------------------------------------------------------


def mlp_runner(cache: Path) -> tuple[MLP, warmgraph.GraphRunner]:
    torch.manual_seed(0)
    model = MLP().eval()
    runner = warmgraph.compile(model, buckets=[1], example_inputs=(torch.randn(1, 64),), backend="aot", cache=cache)
    return model, runner


def assert_matches_eager(model: MLP, runner: warmgraph.GraphRunner) -> None:
    x = torch.randn(1, 64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(runner(x), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the aot graph of the MLP's bucket 1 (compiled once for the module)."""
    cache = tmp_path_factory.mktemp("stored") / "cache"
    model, runner = mlp_runner(cache)
    assert runner.warmup().compiled == 1 and runner.counters["cache_writes"] == 1
    assert_matches_eager(model, runner)
    return cache


@pytest.fixture
def cache_copy(stored: Path, tmp_path: Path) -> Path:
    """A private copy of ``stored`` (copytree keeps the 0700/0600 modes the checks require)."""
    return Path(shutil.copytree(stored, tmp_path / "cache"))


def only_entry(cache: Path) -> Path:
    (entry,) = (cache / "entries").iterdir()
    return entry


# -- 3. a flipped byte ---------------------------------------------------------------------------


def test_flipped_byte_is_detected_recompiled_and_stored_again(cache_copy: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    entry = only_entry(cache_copy)
    package = entry / PACKAGE
    data = bytearray(package.read_bytes())
    pos = random.Random(7).randrange(len(data))
    data[pos] ^= 0xFF  # same size: only the checksum can tell
    package.write_bytes(bytes(data))
    ok, bad = GraphCache(cache_copy).verify()
    assert ok == [] and [k for k, _ in bad] == [entry.name] and "checksum" in bad[0][1]

    model, runner = mlp_runner(cache_copy)
    with caplog.at_level(logging.WARNING, logger="warmgraph"):
        report = runner.warmup()
    c = runner.counters
    assert (report.compiled, report.loaded) == (1, 0)
    assert (c["cache_hits"], c["cache_misses"], c["compiles"], c["cache_writes"]) == (0, 1, 1, 1), dict(c)
    assert any("checksum" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_matches_eager(model, runner)

    ok, bad = GraphCache(cache_copy).verify()
    assert bad == [] and ok == [entry.name]  # the same key, rewritten whole
    model, again = mlp_runner(cache_copy)
    assert again.warmup().loaded == 1 and again.counters["cache_hits"] == 1
    assert_matches_eager(model, again)


# -- 4. a full disk ------------------------------------------------------------------------------


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("where", ["save", "fsync"])
def test_full_disk_keeps_in_memory_graph_and_leaves_nothing(tmp_path: Path, where: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """``save``: the disk fills halfway through copying the package (a partial file in tmp/).
    ``fsync``: the files are written but the filesystem reports ENOSPC when flushing them
    (delayed allocation: where ext4, XFS and NFS really report it); other paths are unaffected."""
    cache = tmp_path / "cache"
    model, runner = mlp_runner(cache)
    backend = runner.backend
    real_save, real_fsync = backend.save, os.fsync

    def save_until_full(graph: Any, directory: Path) -> list[str]:
        real_save(graph, directory)
        package = Path(directory) / PACKAGE
        package.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
        (Path(directory) / META).unlink()
        raise _enospc(package)

    def fsync_full_under_cache(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(cache.resolve())):
            raise _enospc(target)
        real_fsync(fd)

    with monkeypatch.context() as m:
        if where == "save":
            m.setattr(backend, "save", save_until_full)
        else:
            m.setattr(os, "fsync", fsync_full_under_cache)
        with caplog.at_level(logging.WARNING, logger="warmgraph"):
            report = runner.warmup()

    c = runner.counters
    assert report.compiled == 1
    assert (c["cache_misses"], c["compiles"], c["cache_writes"], c["cache_hits"]) == (1, 1, 0, 0), dict(c)
    messages = [r.getMessage() for r in caplog.records]
    assert any("no space left on device" in m.lower() for m in messages), messages
    assert_matches_eager(model, runner)  # the in-memory graph serves
    assert c["replays"] == 1 and c["eager_fallbacks"] == 0
    assert list((cache / "entries").iterdir()) == [] and tmp_names(cache) == []
    assert GraphCache(cache).verify() == ([], [])


# -- 5. security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o777], ids=["0o770", "0o777"])
def test_shared_writable_root_is_refused(tmp_path: Path, mode: int) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, mode)
    _, runner = mlp_runner(cache)
    with pytest.raises(CacheSecurityError, match="chmod go-w"):
        runner.warmup()
    assert runner.counters["compiles"] == 0  # refused before any work


@pytest.mark.parametrize("target", ["entry directory", "artifact file"])
def test_shared_writable_entry_is_refused_at_lookup(cache_copy: Path, target: str) -> None:
    entry = only_entry(cache_copy)
    if target == "entry directory":
        os.chmod(entry, 0o770)
    else:
        os.chmod(entry / PACKAGE, 0o660)
    _, runner = mlp_runner(cache_copy)
    with pytest.raises(CacheSecurityError, match="chmod go-w"):
        GraphCache(cache_copy).lookup(runner.builder.key((1,), runner.example_for((1,))))
    with pytest.raises(CacheSecurityError, match="chmod go-w"):
        runner.warmup()
    c = runner.counters
    assert (c["cache_hits"], c["compiles"]) == (0, 0)
    assert entry.is_dir()  # refused and left for its owner to inspect, not silently deleted
