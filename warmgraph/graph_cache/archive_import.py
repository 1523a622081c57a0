"""Cache archive import: validate the whole archive, then write its entries atomically.

An entry holds native code that loading runs, so an import reads the whole archive once
without writing anything and refuses it as a whole, naming the member and the reason, unless
every member is a regular file or directory at ``entries/<64 hex>/<file>`` (or the index),
every entry's manifest parses and matches its directory and this cache format, and every
file the manifest lists is present with its size and sha256 and nothing else is. Only then
are the files written (0600, directories 0700) into ``tmp/`` of the cache, hashed again as
they are written, and each entry is renamed into ``entries/`` under its key's lock. The
checks stop corrupted, truncated and path-trick archives; they cannot make the code of a
malicious archive safe, so import only archives you made or trust. The format is
``archive.py``'s.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from warmgraph.errors import CacheError, CacheSecurityError, CacheWriteError
from warmgraph.graph_cache.archive_format import ARCHIVE_FORMAT, BLOCK, INDEX, KEY_RE, SMALL_LIMIT
from warmgraph.graph_cache.files import fsync_dir
from warmgraph.graph_cache.key import FORMAT_VERSION
from warmgraph.graph_cache.store import MANIFEST, USAGE, GraphCache


@dataclass
class _Scan:
    """What the validating pass saw: every file's size and sha256, and the small files' bytes."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)


def _refuse(archive: Path, member: str, reason: str) -> CacheError:
    return CacheError(f"refusing archive {archive}: member {member!r} {reason}; nothing was imported")


def _place(name: str) -> tuple[str, str | None] | None:
    """(key, file or None for the directory) for a path inside ``entries/``; None for a bad path."""
    parts = name.split("/")
    if parts[0] != "entries" or len(parts) > 3 or (len(parts) >= 2 and not KEY_RE.match(parts[1])):
        return None
    if len(parts) == 1:
        return ("", None)
    return (parts[1], parts[2] if len(parts) == 3 else None)


def _check_member(archive: Path, m: tarfile.TarInfo) -> tuple[str, str | None] | None:
    """Refuse a member that is not a plain file or directory at an allowed path; its place otherwise."""
    name = m.name
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        kind = ("a symbolic link" if m.issym() else "a hard link" if m.islnk() else "a device" if m.isdev()
                else "a fifo" if m.isfifo() else f"of tar type {m.type!r}")
        raise _refuse(archive, name, f"is {kind}; only regular files and directories are allowed")
    if name.startswith("/") or name.startswith("\\"):
        raise _refuse(archive, name, "is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise _refuse(archive, name, "has a '..' component")
    if any(p in ("", ".") for p in parts):
        raise _refuse(archive, name, "has an empty or '.' path component")
    if name == INDEX:
        if m.isdir():
            raise _refuse(archive, name, "must be a file")
        return None
    place = _place(name)
    if place is None:
        raise _refuse(archive, name, f"is not under entries/<64 hex digits>/ (nor the index {INDEX})")
    file = place[1]
    if file is not None and m.isdir():
        raise _refuse(archive, name, "is a directory inside an entry; entries hold files only")
    if file is None and not m.isdir():
        raise _refuse(archive, name, "must be a directory")
    if file == USAGE:  # per-machine and unchecksummed: export never writes it
        raise _refuse(archive, name, "is not listed in the entry's manifest")
    return place


@contextmanager
def _open_stream(archive: Path) -> Iterator[tarfile.TarFile]:
    """The archive as a forward-only stream: one pass, no seeking back through the gzip data."""
    try:
        # Opened apart from the tar so a missing file and a bad archive get their own messages.
        fh = open(archive, "rb")  # noqa: SIM115 - closed by the with statement below
    except FileNotFoundError:
        raise CacheError(f"archive {archive} does not exist; give the path of a file written by "
                         "'warmgraph cache export'") from None
    except IsADirectoryError:
        raise CacheError(f"archive {archive} is a directory; give the .tar.gz file written by "
                         "'warmgraph cache export'") from None
    except OSError as exc:
        raise CacheError(f"cannot read archive {archive}: {exc.strerror}; check its permissions") from None
    try:
        with fh, tarfile.open(fileobj=fh, mode="r|gz") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CacheError(f"archive {archive} is not a readable gzip-compressed tar file ({exc}); it may be "
                         "truncated or not an archive at all: export it again with 'warmgraph cache export'") from None


def _scan(archive: Path) -> _Scan:
    """The validating pass: reads every member, writes nothing."""
    scan = _Scan()
    seen: set[str] = set()
    with _open_stream(archive) as tar:
        for m in tar:
            if m.name in seen:
                raise _refuse(archive, m.name, "appears twice")
            seen.add(m.name)
            place = _check_member(archive, m)
            if place is not None and place[0]:
                scan.keys.add(place[0])
            if m.isdir():
                continue
            small = m.name == INDEX or (place is not None and place[1] == MANIFEST)
            if small and m.size > SMALL_LIMIT:
                raise _refuse(archive, m.name, f"is {m.size} bytes, too large for a manifest or index")
            src = tar.extractfile(m)
            assert src is not None  # a regular file always has data
            sha, data, count = hashlib.sha256(), bytearray(), 0
            while block := src.read(BLOCK):
                sha.update(block)
                count += len(block)
                if small:
                    data += block
            scan.files[m.name] = (count, sha.hexdigest())
            if small:
                scan.small[m.name] = bytes(data)
    _check_contents(archive, scan)
    return scan


def _check_contents(archive: Path, scan: _Scan) -> None:
    """Every manifest parses and matches its directory; the files are exactly those listed."""
    if INDEX not in scan.small:
        raise _refuse(archive, INDEX, "is missing, so this is not an archive written by 'warmgraph cache export'")
    try:
        index = json.loads(scan.small[INDEX])
    except ValueError:
        raise _refuse(archive, INDEX, "is not valid JSON") from None
    if not isinstance(index, dict) or index.get("format") != ARCHIVE_FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise _refuse(archive, INDEX, f"has archive format {found}, this warmgraph reads {ARCHIVE_FORMAT}")
    listed = index.get("keys")
    if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed) or set(listed) != scan.keys:
        raise _refuse(archive, INDEX, "lists keys that differ from the entries in the archive")
    for key in sorted(scan.keys):
        base = f"entries/{key}"
        mpath = f"{base}/{MANIFEST}"
        if mpath not in scan.small:
            raise _refuse(archive, base, f"has no {MANIFEST}")
        try:
            manifest = json.loads(scan.small[mpath])
        except ValueError:
            raise _refuse(archive, mpath, "is not valid JSON") from None
        if not isinstance(manifest, dict):
            raise _refuse(archive, mpath, "is not a JSON object")
        if manifest.get("format") != FORMAT_VERSION:
            raise _refuse(archive, mpath, f"has cache format {manifest.get('format')}, this warmgraph uses "
                                          f"{FORMAT_VERSION}; export it with the same warmgraph version")
        if manifest.get("key") != key:
            raise _refuse(archive, mpath, f"names key {str(manifest.get('key'))[:12]}, not its directory {key[:12]}")
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise _refuse(archive, mpath, "has no 'files' table")
        for name, meta in files.items():
            where = f"{base}/{name}"
            if not isinstance(name, str) or "/" in name or name in ("", ".", "..", MANIFEST, USAGE):
                raise _refuse(archive, mpath, f"lists an invalid file name {name!r}")
            if (not isinstance(meta, dict) or not isinstance(meta.get("size"), int)
                    or not isinstance(meta.get("sha256"), str)):
                raise _refuse(archive, mpath, f"has no size and sha256 for {name!r}")
            if where not in scan.files:
                raise _refuse(archive, where, "is listed in the manifest but missing")
            size, sha = scan.files[where]
            if size != meta["size"]:
                raise _refuse(archive, where, f"has {size} bytes, the manifest says {meta['size']}")
            if sha != meta["sha256"]:
                raise _refuse(archive, where, "does not match its sha256 in the manifest (corrupted or altered)")
        for where in scan.files:
            if where.startswith(base + "/") and where != mpath and where[len(base) + 1:] not in files:
                raise _refuse(archive, where, "is not listed in the entry's manifest")


def _write_file(src: IO[bytes], dest: Path) -> str:
    """Copy to a new private file (never through a link); fsync; return its sha256."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    sha = hashlib.sha256()
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # the umask may have filtered the mode
        while block := src.read(BLOCK):
            sha.update(block)
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    return sha.hexdigest()


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)


def _extract(archive: Path, scan: _Scan, staging: Path) -> None:
    """The writing pass into ``staging/<key>/``; every file hashed again against the validating pass."""
    for key in scan.keys:
        _private_dir(staging / key)
    changed = CacheError(f"archive {archive} changed while it was being imported; nothing was imported, try again")
    written = {INDEX}
    with _open_stream(archive) as tar:
        for m in tar:
            # The same checks again: the file on disk may have been replaced since the first pass.
            place = _check_member(archive, m)
            if m.isdir() or place is None:
                continue
            key, file = place
            if m.name not in scan.files or m.name in written or file is None:
                raise changed
            src = tar.extractfile(m)
            assert src is not None  # a regular file always has data
            if _write_file(src, staging / key / file) != scan.files[m.name][1]:
                raise changed
            written.add(m.name)
    if written != set(scan.files) | {INDEX}:
        raise changed
    now = time.time()
    for key in scan.keys:
        # A fresh record of use: the source machine's hits mean nothing here, and an entry
        # without one would look as old as its creation and be evicted first.
        with open(staging / key / USAGE, "w") as fh:
            json.dump({"last_used": now, "hits": 0}, fh)
        os.chmod(staging / key / USAGE, 0o600)
        fsync_dir(staging / key)


def _present_and_good(cache: GraphCache, path: Path) -> bool:
    try:
        # The store's own reader and checks (same package): an entry counts as present only if it would load.
        cache.check(cache._read_entry(path), full=True)
        return True
    except CacheSecurityError:
        raise
    except CacheError:
        return False


def import_archive(cache: GraphCache, archive: Path) -> list[str]:
    """Import the entries of an archive written by :func:`export_archive`; returns the keys added.

    The whole archive is validated first (see the module docstring) and refused as a whole
    with CacheError naming the member and reason; nothing is written then. A key already
    present and intact is skipped (not in the result); a damaged one is replaced. A failed
    write (a full disk included) is a CacheWriteError and leaves no entry behind.
    """
    archive = Path(archive)
    scan = _scan(archive)
    cache.ensure()
    staging = cache.root / "tmp" / f"import.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    imported: list[str] = []
    try:
        _private_dir(staging)
        _extract(archive, scan, staging)
        for key in sorted(scan.keys):
            with cache.lock(key):
                target = cache.root / "entries" / key
                if target.exists():
                    if _present_and_good(cache, target):
                        continue
                    cache._remove_path(target)
                try:
                    os.rename(staging / key, target)
                except OSError as exc:
                    # Another writer put it there between our look and the rename: theirs stands.
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue
                    raise
                fsync_dir(target.parent)
                imported.append(key)
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        done = f"; {len(imported)} entries were imported before it" if imported else "; nothing was imported"
        raise CacheWriteError(f"could not import {archive} into {cache.root}: {reason}{done}; "
                              "free space or point --cache-dir (or WARMGRAPH_CACHE_DIR) elsewhere") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return imported
