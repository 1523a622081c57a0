"""Model directories written all at once: a temporary directory beside the target, renamed in one step.

A crash or an error leaves either the finished directory or nothing under the target's name;
``build_once`` adds a file lock so concurrent processes create a shared directory (the default
models in the cache root) once and the others reuse it. ``make_parents``/``remove_created`` and
``remove_dead_leftovers`` let a caller without the lock (``convert-gguf``'s OUT_DIR) also leave
nothing behind: no parent directory it made for a conversion that failed, and no temporary
directory of a writer that was killed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

from warmgraph.errors import WarmgraphError
from warmgraph.graph_cache.files import pid_alive


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
    and rename it to ``target``, which must not exist (FileExistsError if it does). The
    temporary directory is removed whatever happens; errors from ``build`` propagate unchanged."""
    tmp = target.parent / f".{target.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # as _TMP matches
    try:
        tmp.mkdir(mode=0o700 if private else 0o777)
        if private:
            os.chmod(tmp, 0o700)
        build(tmp)
        _fsync_tree(tmp)
        # rename(2) silently replaces an empty directory, and that directory may be the user's
        # working directory or a mount point, so never rename onto anything. (Python has no
        # portable rename-without-replace; checking last leaves only a microsecond window.)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def make_parents(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return the directories this call created,
    deepest first, for ``remove_created`` to take back if what they were for fails."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    created = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another process made it meanwhile: theirs, not ours to remove
            continue
        created.append(directory)
    return created[::-1]


def remove_created(created: Sequence[Path]) -> None:
    """Remove the directories ``make_parents`` created (deepest first), each only if still empty:
    something another process put there since is kept, with the directories above it."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return


# The temporary directories write_directory makes: .{name}.tmp.{pid}.{8 hex digits}. The pid is
# at most 9 digits so os.kill cannot overflow on a stray name.
_TMP = re.compile(r"\.(?P<name>.+)\.tmp\.(?P<pid>\d{1,9})\.[0-9a-f]{8}")


def remove_dead_leftovers(target: Path) -> list[Path]:
    """Remove the temporary directories beside ``target`` that a killed writer left (SIGKILL
    and power loss skip write_directory's cleanup), keeping those of live processes, which may
    still be writing; return what was removed. Pids are this machine's: OUT_DIR on a filesystem
    that writers on several machines share is not supported."""
    removed = []
    try:
        candidates = list(target.parent.iterdir())
    except OSError:  # no parent yet, or unreadable: nothing to clean, and the write will say why
        return removed
    for path in candidates:
        match = _TMP.fullmatch(path.name)
        if match and match["name"] == target.name and path.is_dir() and not path.is_symlink() \
                and not pid_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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
