"""Files a cache can trust: private ownership checks, checksums, durable renames, live writers."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from warmgraph.errors import CacheSecurityError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_private(path: Path, what: str) -> None:
    """Owned by this user and writable by nobody else, or CacheSecurityError with the fix."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise CacheSecurityError(f"{what} {path} is a symbolic link; warmgraph loads native code only from real "
                                 "directories it owns. Point --cache-dir (or WARMGRAPH_CACHE_DIR) at the real path")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CacheSecurityError(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()}); "
                                 f"use a cache directory you own (--cache-dir or WARMGRAPH_CACHE_DIR) or chown it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheSecurityError(f"{what} {path} is writable by group or others, so anyone could plant code "
                                 f"in it; run: chmod go-w {path}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) answers kill(0) but will never finish its write
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
