"""Model directories written all at once: a temporary directory beside the target, renamed in one step.

A crash or an error leaves either the finished directory or nothing under the target's name;
``build_once`` adds a file lock so concurrent processes create a shared directory (the default
models in the cache root) once and the others reuse it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from warmgraph.errors import WarmgraphError


def mkdir_private(path: Path) -> None:
    """Create ``path`` and its parents as 0700 (the umask filters mkdir's mode, so chmod after)."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)


def _fsync_tree(path: Path) -> None:
    for item in [*sorted(path.iterdir()), path]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_directory(target: Path, build: Callable[[Path], None], private: bool = False) -> None:
    """Run ``build(tmp)`` on an empty temporary directory beside ``target``, fsync what it wrote
    and rename it to ``target`` (which must not exist or be an empty directory). The temporary
    directory is removed whatever happens; errors from ``build`` propagate unchanged."""
    tmp = target.parent / f".{target.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(mode=0o700 if private else 0o777)
        if private:
            os.chmod(tmp, 0o700)
        build(tmp)
        _fsync_tree(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, created by ``build`` on first use under a lock beside it (0700 directories).

    Only a finished directory is ever renamed to ``target``, so its existence means it is
    complete. Temporary directories a dead writer left are removed. OSError becomes a one-line
    WarmgraphError naming the directory and the fix.
    """
    if target.is_dir():
        return target
    parent = target.parent
    try:
        mkdir_private(parent)
        with FileLock(str(parent / f".{target.name}.lock")):
            if target.is_dir():
                return target
            # Writers work only under this lock, so any temporary directory here belongs to a dead one.
            for leftover in parent.glob(f".{target.name}.tmp.*"):
                shutil.rmtree(leftover, ignore_errors=True)
            write_directory(target, build, private=True)
    except OSError as exc:
        raise WarmgraphError(f"cannot write {target}: {exc.strerror or exc}; point --cache-dir (or "
                             "WARMGRAPH_CACHE_DIR) at a writable directory") from None
    return target
