"""The on-disk graph store: atomic writes, per-key locks, verified reads, LRU size cap.

Layout under the root (private, 0700)::

    entries/<key hash>/manifest.json   every key factor; each file's size and sha256
    entries/<key hash>/usage.json      last used, hits (rewritten on use; not checksummed)
    entries/<key hash>/<artifacts>     what the backend's save wrote
    tmp/<key hash>.<pid>.<random>/     an entry being written
    locks/<key hash>.lock              one writer per key

Safety: an entry is written into ``tmp/`` and renamed into ``entries/`` in one step, so a
crash at any moment leaves either the whole entry or nothing that loads; leftovers of dead
writers are swept. A per-key file lock makes concurrent processes compile a key once while
the others wait and then load it. Loading runs native code, so before anything is loaded the
root and the entry must be owned by this user and writable by nobody else, and every file
must match its size and sha256 in the manifest. A bad entry is a miss (logged once and
removed), never a crash and never wrong output.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from warmgraph.errors import CacheError, CacheSecurityError, CacheWriteError, ConfigError
from warmgraph.graph_cache.files import check_private, fsync_dir, pid_alive, sha256_file
from warmgraph.graph_cache.key import FORMAT_VERSION, CacheKey

log = logging.getLogger("warmgraph")

MANIFEST = "manifest.json"
USAGE = "usage.json"
DEFAULT_MAX_BYTES = 20 * 2**30  # 20 GiB; WARMGRAPH_CACHE_MAX_BYTES or max_bytes= override


def default_root() -> Path:
    """``$WARMGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/warmgraph``, else ``~/.cache/warmgraph``."""
    if os.environ.get("WARMGRAPH_CACHE_DIR"):
        return Path(os.environ["WARMGRAPH_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "warmgraph"
    return Path.home() / ".cache" / "warmgraph"


@dataclass(frozen=True)
class Entry:
    """One cached graph: its directory and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())

    def usage(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / USAGE).read_text())
        except (OSError, ValueError):
            return {"last_used": self.manifest.get("created", 0), "hits": 0}


class GraphCache:
    """A cache root on disk. See the module docstring for the layout and the guarantees."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        env_cap = os.environ.get("WARMGRAPH_CACHE_MAX_BYTES")
        if max_bytes is None and env_cap:
            try:
                max_bytes = int(env_cap)
            except ValueError:
                raise ConfigError(f"WARMGRAPH_CACHE_MAX_BYTES={env_cap} is not an integer number of bytes") from None
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        self._ready = False
        self._warned: set[str] = set()

    # -- the root ----------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the root private (0700) if it is missing; refuse an unsafe one."""
        if self._ready:
            return
        try:
            if not self.root.exists():
                try:
                    self.root.mkdir(mode=0o700, parents=True)
                    os.chmod(self.root, 0o700)  # mkdir's mode is filtered by the umask
                except FileExistsError:
                    pass  # another process created it between the check and mkdir; vetted below
            for sub in ("entries", "tmp", "locks"):
                (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CacheWriteError(f"cannot create cache directory {self.root}: {exc.strerror}; "
                                  "point --cache-dir (or WARMGRAPH_CACHE_DIR) at a writable place") from None
        check_private(self.root, "cache root")
        for sub in ("entries", "tmp", "locks"):
            check_private(self.root / sub, "cache directory")
        self._ready = True
        self.sweep()

    def exists(self) -> bool:
        return (self.root / "entries").is_dir()

    # -- reading -----------------------------------------------------------------------------

    def _entry_dir(self, key_hash: str) -> Path:
        return self.root / "entries" / key_hash

    def _read_entry(self, path: Path) -> Entry:
        """The entry at ``path`` if its manifest parses; CacheError otherwise (no checksums)."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"entry {path.name}: manifest unreadable ({exc.__class__.__name__})") from None
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != FORMAT_VERSION:
            raise CacheError(f"entry {path.name}: cache format {found} is not {FORMAT_VERSION}")
        if manifest.get("key") != path.name or not isinstance(manifest.get("files"), dict):
            raise CacheError(f"entry {path.name}: manifest does not match its directory")
        return Entry(path, manifest)

    def check(self, entry: Entry, full: bool = True) -> None:
        """Raise CacheError unless every file is present, private, the right size and (``full``) checksum."""
        check_private(entry.path, "cache entry")
        for name, meta in entry.manifest["files"].items():
            if "/" in name or name in ("", ".", "..", MANIFEST, USAGE):
                raise CacheError(f"entry {entry.key[:12]}: manifest names an invalid file {name!r}")
            f = entry.path / name
            try:
                st = f.lstat()
            except OSError:
                raise CacheError(f"entry {entry.key[:12]}: file {name} is missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise CacheError(f"entry {entry.key[:12]}: {name} is not a regular file")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise CacheSecurityError(f"cache file {f} is writable by group or others; run: chmod go-w {f}")
            if st.st_size != meta["size"]:
                raise CacheError(f"entry {entry.key[:12]}: {name} has {st.st_size} bytes, manifest says {meta['size']}")
            if full and sha256_file(f) != meta["sha256"]:
                raise CacheError(f"entry {entry.key[:12]}: {name} does not match its checksum (corrupted or altered)")

    def lookup(self, key: CacheKey) -> Entry | None:
        """The verified entry for ``key``, or None. A bad entry is logged once and removed."""
        self.ensure()
        path = self._entry_dir(key.hash)
        if not path.is_dir():
            return None
        try:
            entry = self._read_entry(path)
            # Full checksums before loading: the files hold native code that loading runs.
            self.check(entry, full=True)
            return entry
        except CacheSecurityError:
            raise
        except CacheError as exc:
            self._warn_once(key.hash, f"warmgraph: ignoring cache entry: {exc}; it will be compiled again")
            self._remove_path(path)
            return None

    def touch(self, entry: Entry) -> None:
        """Record a use (for LRU eviction and ``cache ls``); best effort, never fatal."""
        usage = entry.usage()
        usage = {"last_used": time.time(), "hits": int(usage.get("hits", 0)) + 1}
        tmp = entry.path / f".{USAGE}.{uuid.uuid4().hex}"
        try:
            tmp.write_text(json.dumps(usage))
            os.replace(tmp, entry.path / USAGE)
        except OSError:
            tmp.unlink(missing_ok=True)

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def lock(self, key_hash: str) -> Iterator[None]:
        """Hold the per-key lock: one process compiles a key while the others wait."""
        self.ensure()
        try:
            lock = FileLock(str(self.root / "locks" / f"{key_hash}.lock"))
            lock.acquire()
        except OSError as exc:  # a full disk, no inodes, a read-only volume
            raise CacheWriteError(f"cannot lock cache key {key_hash[:12]} in {self.root}: "
                                  f"{exc.strerror or exc}; free space or point --cache-dir (or "
                                  "WARMGRAPH_CACHE_DIR) elsewhere") from None
        try:
            yield
        finally:
            lock.release()

    def store(self, key: CacheKey, write: Callable[[Path], list[str]], compile_seconds: float,
              extra: dict[str, Any] | None = None) -> Entry:
        """Write an entry atomically: ``write(tmpdir)`` saves the files and returns their names.

        On any failure (a full disk included) nothing is left behind and CacheWriteError is
        raised; the caller keeps its in-memory graph. Call under ``lock(key.hash)``.
        """
        self.ensure()
        tmp = self.root / "tmp" / f"{key.hash}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(mode=0o700)
            names = write(tmp)
            files = {}
            for name in names:
                f = tmp / name
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(f, 0o600)
                files[name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
            manifest = {
                "format": FORMAT_VERSION, "key": key.hash, "graph_name": key.graph_name, "backend": key.backend,
                "bucket": list(key.bucket), "device": key.device, "factors": key.factors, "files": files,
                "created": time.time(), "compile_seconds": round(compile_seconds, 4),
                "warmgraph": key.factors.get("warmgraph"), "torch": key.factors.get("torch"), **(extra or {}),
            }
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=1, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            (tmp / USAGE).write_text(json.dumps({"last_used": manifest["created"], "hits": 0}))
            fsync_dir(tmp)
            target = self._entry_dir(key.hash)
            if target.exists():  # a stale or bad entry under our lock: replace it
                self._remove_path(target)
            os.rename(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise CacheWriteError(f"could not write cache entry {key.hash[:12]} in {self.root}: {reason}; "
                                  "free space or point --cache-dir (or WARMGRAPH_CACHE_DIR) elsewhere") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = Entry(target, manifest)
        self.evict(keep=key.hash)
        return entry

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove what dead writers left in ``tmp/``; returns how many were removed."""
        removed = 0
        tmp_root = self.root / "tmp"
        for leftover in tmp_root.iterdir() if tmp_root.is_dir() else ():
            parts = leftover.name.split(".")
            pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else -1
            if pid != os.getpid() and (pid < 0 or not pid_alive(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
                removed += 1
        return removed

    def entries(self) -> list[Entry]:
        """Every entry whose manifest parses, oldest first (unreadable ones are skipped)."""
        if not self.exists():
            return []
        out = []
        for path in sorted((self.root / "entries").iterdir()):
            try:
                out.append(self._read_entry(path))
            except CacheError:
                continue
        return sorted(out, key=lambda e: e.manifest.get("created", 0))

    def bad_paths(self) -> list[Path]:
        """Entry directories whose manifest does not even parse."""
        if not self.exists():
            return []
        good = {e.path for e in self.entries()}
        return [p for p in sorted((self.root / "entries").iterdir()) if p not in good]

    def get(self, prefix: str) -> Entry:
        """The entry whose key starts with ``prefix``; CacheError if none or several do."""
        matches = [e for e in self.entries() if e.key.startswith(prefix)]
        if not prefix or not matches:
            raise CacheError(f"no cache entry has a key starting with {prefix!r}; see 'warmgraph cache ls'")
        if len(matches) > 1:
            shown = ", ".join(e.key[:12] for e in matches[:5])
            raise CacheError(f"key prefix {prefix!r} is ambiguous ({len(matches)} entries: {shown}); give more of it")
        return matches[0]

    def remove(self, entry: Entry) -> None:
        self._remove_path(entry.path)

    def _remove_path(self, path: Path) -> None:
        # Rename first so a reader never sees a half-deleted entry under its real name.
        doomed = self.root / "tmp" / f"{path.name}.{os.getpid()}.rm{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)

    def clear(self) -> int:
        entries = self.entries() + [Entry(p, {}) for p in self.bad_paths()]
        for e in entries:
            self._remove_path(e.path)
        return len(entries)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits ``max_bytes``."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed: list[str] = []
        for e in sorted(entries, key=lambda e: e.usage().get("last_used", 0)):
            if total <= self.max_bytes:
                break
            if e.key == keep:
                continue
            self.remove(e)
            total -= e.size
            removed.append(e.key)
        return removed

    def prune(self, older_than: float | None = None, keep_last: int | None = None) -> list[str]:
        """Remove entries unused for ``older_than`` seconds, and all but the ``keep_last`` most recently used."""
        entries = sorted(self.entries(), key=lambda e: e.usage().get("last_used", 0), reverse=True)
        now = time.time()
        removed = []
        for i, e in enumerate(entries):
            too_old = older_than is not None and now - e.usage().get("last_used", 0) > older_than
            too_many = keep_last is not None and i >= keep_last
            if too_old or too_many:
                self.remove(e)
                removed.append(e.key)
        return removed

    def verify(self, repair: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
        """Full checksums of every entry: (ok keys, [(bad key, reason)]); ``repair`` removes the bad."""
        ok, bad = [], []
        for path in self.bad_paths():
            bad.append((path.name, "manifest unreadable"))
            if repair:
                self._remove_path(path)
        for e in self.entries():
            try:
                self.check(e, full=True)
                ok.append(e.key)
            except CacheError as exc:
                bad.append((e.key, str(exc)))
                if repair:
                    self.remove(e)
        return ok, bad

    def _warn_once(self, tag: str, message: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning(message)
