"""Cache archives: carry compiled graphs to a container image or another machine of the same platform.

An archive is a ``.tar.gz`` holding ``warmgraph-archive.json`` (the index: archive format,
warmgraph version, creation time, platform, keys) and, per entry, ``entries/<key>/manifest.json``
and the artifact files the manifest lists. ``usage.json`` is left out: hits and last use
belong to the machine that recorded them, and it is not checksummed.

This module writes archives (``export_archive``); ``archive_import.py`` reads them back,
checking every member before anything is written (see its docstring).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import platform
import tarfile
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import IO

from warmgraph._version import __version__
from warmgraph.errors import CacheError, CacheSecurityError, CacheWriteError
from warmgraph.graph_cache.archive_format import ARCHIVE_FORMAT, INDEX
from warmgraph.graph_cache.archive_import import import_archive
from warmgraph.graph_cache.files import fsync_dir
from warmgraph.graph_cache.key import FORMAT_VERSION
from warmgraph.graph_cache.store import MANIFEST, Entry, GraphCache

# -- export ----------------------------------------------------------------------------------


def select_entries(
    cache: GraphCache,
    *,
    graph_name: str | None = None,
    fingerprint: str | None = None,
    backend: str | None = None,
    keys: list[str] | None = None,
) -> list[Entry]:
    """The entries matching every filter given; CacheError when none match.

    With no filter, every entry except those that hold model weights (manifest
    ``"holds_weights": true``, such as vLLM's recovered layer weights): an archive of graphs is
    meant to be shared, weights are large and under their model's licence, so they go only when
    a filter names them. ``fingerprint`` is a key-hash prefix; each of ``keys`` is a unique key
    prefix (the store's errors for unknown or ambiguous ones).
    """
    chosen = cache.entries()
    if graph_name is None and fingerprint is None and backend is None and keys is None:
        chosen = [e for e in chosen if not e.manifest.get("holds_weights")]
    if keys is not None:
        wanted = {cache.get(k).key for k in keys}
        chosen = [e for e in chosen if e.key in wanted]
    if graph_name is not None:
        chosen = [e for e in chosen if e.manifest.get("graph_name") == graph_name]
    if fingerprint is not None:
        chosen = [e for e in chosen if e.key.startswith(fingerprint.lower())]
    if backend is not None:
        chosen = [e for e in chosen if e.manifest.get("backend") == backend]
    if not chosen:
        filters = [f"{what} {value!r}" for what, value in
                   (("graph", graph_name), ("key prefix", fingerprint), ("backend", backend)) if value is not None]
        if keys is not None:
            filters.append(f"keys {keys}")
        which = "matches " + ", ".join(filters) if filters else "exists"
        raise CacheError(f"nothing to export: no cache entry in {cache.root} {which}; see 'warmgraph cache ls'")
    return chosen


class _HashingReader:
    """A file wrapper that hashes what tarfile reads, so export verifies in the same pass it copies."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = bytes(self._data[self._pos:end])
        self._pos += len(chunk)
        return chunk


def _tarinfo(name: str, size: int = 0, directory: bool = False, mtime: float | None = None) -> tarfile.TarInfo:
    # Our own headers: no owner names, uids or loose modes from this machine leak into the archive.
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o700 if directory else 0o600
    info.size = 0 if directory else size
    info.mtime = int(mtime if mtime is not None else time.time())
    return info


def _add_entry(tar: tarfile.TarFile, cache: GraphCache, entry: Entry) -> None:
    """Write one entry, checking every file's size and sha256 as it is copied."""
    try:
        # Presence, regular files, privacy and sizes first: cheap, and a clear message.
        cache.check(entry, full=False)
        manifest_bytes = (entry.path / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
    except CacheSecurityError:
        raise
    except (CacheError, ValueError) as exc:
        raise CacheError(f"cannot export entry {entry.key[:12]}: {exc}; "
                         "run 'warmgraph cache verify --repair' and export again") from None
    if manifest != entry.manifest:
        raise CacheError(f"cannot export entry {entry.key[:12]}: it changed while exporting; export again")
    created = manifest.get("created")
    base = f"entries/{entry.key}"
    tar.addfile(_tarinfo(base, directory=True, mtime=created))
    info = _tarinfo(f"{base}/{MANIFEST}", len(manifest_bytes), mtime=created)
    tar.addfile(info, _BytesReader(manifest_bytes))
    for name, meta in sorted(manifest["files"].items()):
        with open(entry.path / name, "rb") as fh:
            reader = _HashingReader(fh)
            tar.addfile(_tarinfo(f"{base}/{name}", int(meta["size"]), mtime=created), reader)
        if reader.count != meta["size"] or reader.sha.hexdigest() != meta["sha256"]:
            raise CacheError(f"cannot export entry {entry.key[:12]}: {name} does not match its checksum "
                             "(corrupted or altered); run 'warmgraph cache verify --repair' and export again")


def export_archive(
    cache: GraphCache,
    out: Path,
    *,
    graph_name: str | None = None,
    fingerprint: str | None = None,
    backend: str | None = None,
    keys: list[str] | None = None,
) -> list[str]:
    """Write the selected entries to the ``.tar.gz`` at ``out``; returns their keys.

    Selection as :func:`select_entries`. Every file is checked against its size and sha256
    while it is copied; a bad entry refuses the export (CacheError naming it). The archive is
    written to a temporary name beside ``out`` and renamed, so ``out`` is either the whole
    archive or untouched; any OSError (a full disk included) is a CacheWriteError.
    """
    out = Path(out)
    chosen = select_entries(cache, graph_name=graph_name, fingerprint=fingerprint, backend=backend, keys=keys)
    index = {"format": ARCHIVE_FORMAT, "cache_format": FORMAT_VERSION, "warmgraph": __version__,
             "created": time.time(), "platform": f"{platform.system()}-{platform.machine()}",
             "keys": [e.key for e in chosen]}
    index_bytes = json.dumps(index, indent=1).encode()
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as raw:
            # GzipFile ourselves: given the raw file, tarfile would record the temporary name in the gzip header.
            with gzip.GzipFile(filename=out.name, mode="wb", fileobj=raw) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_tarinfo(INDEX, len(index_bytes), mtime=index["created"]), _BytesReader(index_bytes))
                for entry in chosen:
                    _add_entry(tar, cache, entry)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        _unlink(tmp)
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CacheWriteError(f"could not write archive {out}: {reason}; free space or choose another --out") from None
    except BaseException:
        _unlink(tmp)
        raise
    return [e.key for e in chosen]


def _unlink(path: Path) -> None:
    with suppress(OSError):  # cleaning up after a failure must not hide the failure
        path.unlink(missing_ok=True)

__all__ = ["ARCHIVE_FORMAT", "INDEX", "export_archive", "import_archive", "select_entries"]
