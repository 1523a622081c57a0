"""A read-only view of vLLM's own torch.compile cache, and a safe prune of whole entries.

Layout under ``VLLM_CACHE_ROOT``, as vLLM 0.32.0 writes it (``compilation/backends.py``,
``decorators.py``, ``compiler_interface.py``); ``R`` is ``torch_compile_cache/<hash10>/rank_{r}_{dp}``::

    R/<prefix>/cache_key_factors.json   {"env": {...}, "config_hash", "code_hash", "compiler_hash"}
    R/<prefix>/computation_graph.py     the split graph, print_readable
    R/<prefix>/vllm_compile_cache.py    {((start, end), graph_index, compiler): {"graph_handle": (a, b), ...}};
                                        absent when nothing was stored (eager, mega AOT artifact, cache off)
    R/<prefix>/artifact_compile_range_{s}_{e}_subgraph_{i}   inductor_standalone (file, or dir if unpacked)
    R/inductor_cache/, R/triton_cache/  the inductor adaptor's caches
    torch_compile_cache/torch_aot_compile/<sha256>/rank_{r}_{dp}/model, .../<sha256>/inductor_cache/

vLLM records neither its version nor the model nor the dtype there; the dtype is read from the
input annotations in ``computation_graph.py``. Only files are read (no vLLM, no torch); links are not followed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from warmgraph.errors import CacheError
from warmgraph.graph_cache.files import pid_alive

COMPILE_DIR = "torch_compile_cache"
AOT_DIR = "torch_aot_compile"
FACTORS = "cache_key_factors.json"
CACHE_FILE = "vllm_compile_cache.py"
AOT_MODEL = "model"
SHARED_DIRS = ("inductor_cache", "triton_cache")  # Inductor's and Triton's caches, not model prefixes
_TRASH = ".warmgraph-prune-"  # <name>-<pid>-<random>: an entry renamed away, being deleted
_RANK = re.compile(r"rank_\d+_\d+")
_ARTIFACT = re.compile(r"artifact_compile_range_\d+_\d+_subgraph_\d+")
_ANNOTATION = re.compile(r'"([a-z]+[0-9][0-9a-z]*)\[')  # "bf16[s72, 2048]" in print_readable output


def default_vllm_root() -> Path:
    """``VLLM_CACHE_ROOT``, else ``$XDG_CACHE_HOME/vllm``, else ``~/.cache/vllm``: vLLM's own rule (``envs.py``)."""
    xdg = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(os.path.expanduser(os.getenv("VLLM_CACHE_ROOT", os.path.join(xdg, "vllm"))))


@dataclass(frozen=True)
class VllmCacheEntry:
    """One hash directory: ``kind`` "compile" (``<hash10>``) or "aot" (``torch_aot_compile/<sha256>``).

    ``size``: bytes of every file below ``path`` (links as links); ``mtime``: the newest mtime in
    it. ``compilers``, ``ranges``, ``graphs`` (handles, over every rank and prefix) come from
    ``vllm_compile_cache.py``; ``cache_file_parses`` is None where there is none. ``artifacts``:
    ``artifact_compile_range_*`` (compile) or ``rank_*/model`` files (aot). ``factors``: the first
    readable ``cache_key_factors.json``. ``damaged``: why vLLM may not load it; () when sound.
    """

    kind: str
    hash: str
    path: Path
    size: int = 0
    mtime: float = 0.0
    ranks: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    compilers: tuple[str, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    graphs: int = 0
    artifacts: int = 0
    cache_file_parses: bool | None = None
    dtype: str | None = None
    factors: dict[str, Any] = field(default_factory=dict)
    damaged: tuple[str, ...] = ()

    def age(self, now: float | None = None) -> float:
        """Seconds since anything in the entry was last modified (never negative)."""
        return max(0.0, (time.time() if now is None else now) - self.mtime)

    def to_json(self, env: bool = False) -> dict[str, Any]:
        """Plain JSON values; the raw env factors only with ``env``, else their count."""
        data = asdict(self)
        data.update(path=str(self.path), ranges=[list(r) for r in self.ranges], age_seconds=self.age())
        if not env and "env" in self.factors:
            data["factors"] = {k: v for k, v in self.factors.items() if k != "env"}
            data["factors"]["env_factors"] = len(self.factors["env"])
        return data


def scan(root: Path) -> list[VllmCacheEntry]:
    """Every entry under ``root`` (a ``VLLM_CACHE_ROOT``), oldest first: the order prune removes them.

    A missing root, or one without ``torch_compile_cache``, is an empty cache; nothing is
    created. A root that is not a directory, or a cache directory that is a link leading out
    of the root, is a CacheError. A damaged entry is listed with its reasons, never raised.
    """
    entries = []
    for kind, parent in _parents(root):
        for path in sorted(parent.iterdir()):
            if path.name.startswith(".") or (kind == "compile" and path.name == AOT_DIR):
                continue
            if path.is_symlink():
                entries.append(VllmCacheEntry(kind, path.name, path, damaged=("a symbolic link; not followed",)))
            elif path.is_dir():
                try:
                    entries.append(_read(kind, path))
                except OSError as exc:  # one gone meanwhile (a concurrent prune) is not listed
                    if path.exists():
                        entries.append(VllmCacheEntry(kind, path.name, path, damaged=(f"cannot read: {_why(exc)}",)))
    return sorted(entries, key=lambda e: (e.mtime, e.kind, e.hash))


def find(root: Path, hash_prefix: str) -> VllmCacheEntry:
    """The entry whose hash starts with ``hash_prefix`` (case-insensitive); CacheError if none or several do."""
    prefix = hash_prefix.strip().lower()
    matches = [e for e in scan(root) if prefix and e.hash.lower().startswith(prefix)]
    if not matches:
        raise CacheError(f"no vLLM cache entry has a hash starting with {hash_prefix!r} in {root}; "
                         "see 'warmgraph cache ls --vllm'")
    if len(matches) > 1:
        shown = ", ".join(e.hash[:12] for e in matches[:5])
        raise CacheError(f"hash prefix {hash_prefix!r} is ambiguous ({len(matches)} vLLM entries: {shown}); "
                         "give more of it")
    return matches[0]


def prune(root: Path, older_than: float | None = None, max_size: int | None = None,
          dry_run: bool = False, now: float | None = None) -> list[VllmCacheEntry]:
    """Remove whole entries, oldest first: those unmodified for ``older_than`` seconds, then more until
    the rest is at most ``max_size`` bytes. Returns what was (``dry_run``: would be) removed.

    Each entry is renamed to a hidden name in its own directory, then deleted, so a reader sees
    the whole entry or none of it. Links are never followed (a linked entry is not removed);
    leftovers of prunes that died midway are deleted. A missing root prunes nothing.
    """
    if older_than is None and max_size is None:
        raise CacheError("prune needs older_than or max_size")
    now = time.time() if now is None else now
    candidates = [e for e in scan(root) if not e.path.is_symlink()]  # oldest first
    old = [older_than is not None and e.age(now) > older_than for e in candidates]
    total = sum(e.size for e, o in zip(candidates, old) if not o)
    doomed = []
    for e, o in zip(candidates, old):
        if o or (max_size is not None and total > max_size):
            doomed.append(e)
            total -= 0 if o else e.size
    if dry_run:
        return doomed
    for _, parent in _parents(root):  # first the leftovers of prunes that died midway
        for p in parent.glob(f"{_TRASH}*"):
            if (pid := p.name.rsplit("-", 2)[-2]).isdigit() and not pid_alive(int(pid)):
                _remove(p)
    return [e for e in doomed if _remove(e.path)]


def _parents(root: Path) -> list[tuple[str, Path]]:
    """The directories holding entries, by kind; CacheError for a bad root or a link out of it."""
    if not root.exists():
        return []
    if not root.is_dir():
        raise CacheError(f"vLLM cache root {root} is not a directory; pass --vllm-root DIR or set VLLM_CACHE_ROOT")
    out, real = [], root.resolve()
    for kind, rel in (("compile", Path(COMPILE_DIR)), ("aot", Path(COMPILE_DIR) / AOT_DIR)):
        path = root / rel
        if path.is_symlink() and not path.resolve().is_relative_to(real):
            raise CacheError(f"{path} is a symbolic link out of {root} (to {path.resolve()}); not followed")
        if path.is_dir():
            out.append((kind, path))
    return out


def _read(kind: str, path: Path) -> VllmCacheEntry:
    """Read one hash directory; every problem becomes a ``damaged`` reason."""
    damaged: list[str] = []
    size, mtime = _du(path, damaged)
    ranks = sorted(p.name for p in _dirs(path) if _RANK.fullmatch(p.name))
    info: dict[str, Any] = {"kind": kind, "hash": path.name, "path": path, "size": size, "mtime": mtime,
                            "ranks": tuple(ranks)}
    if not ranks:
        damaged.append("no rank_{r}_{dp} directory")
    if kind == "aot":
        info["artifacts"] = sum((path / r / AOT_MODEL).is_file() for r in ranks)
        if ranks and not info["artifacts"]:
            damaged.append(f"no rank_*/{AOT_MODEL} file (the compile did not finish, or its save failed)")
        return VllmCacheEntry(**info, damaged=tuple(damaged))
    prefixes, compilers, ranges, graphs, artifacts, parses = set(), set(), set(), 0, 0, []
    factors: dict[str, Any] = {}
    dtype = None
    for rank in ranks:
        found = [p for p in _dirs(path / rank) if p.name not in SHARED_DIRS]
        if not found:
            damaged.append(f"{rank} has no prefix directory")
        for pdir in found:
            where = f"{rank}/{pdir.name}"
            prefixes.add(pdir.name)
            artifacts += sum(1 for p in pdir.iterdir() if _ARTIFACT.fullmatch(p.name))
            got = _factors(pdir / FACTORS, where, damaged)
            factors = factors or got
            dtype = dtype or _dtype(pdir / "computation_graph.py")
            if (pdir / CACHE_FILE).exists():
                table = _cache_file(pdir, where, damaged)
                parses.append(table is not None)
                compilers.update(k[2] for k in table or {})
                ranges.update(k[0] for k in table or {})
                graphs += len(table or {})
    info.update(prefixes=tuple(sorted(prefixes)), compilers=tuple(sorted(compilers)), ranges=tuple(sorted(ranges)),
                graphs=graphs, artifacts=artifacts, cache_file_parses=all(parses) if parses else None,
                dtype=dtype, factors=factors)
    return VllmCacheEntry(**info, damaged=tuple(damaged))


def _dirs(path: Path) -> list[Path]:
    """Real subdirectories (links excluded), sorted; none for an unreadable directory."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def _du(path: Path, damaged: list[str]) -> tuple[int, float]:
    """Bytes of every file below ``path`` and the newest mtime, by lstat: links are not followed."""
    size, newest = 0, path.lstat().st_mtime
    for top, dirs, files in os.walk(path, onerror=lambda e: damaged.append(f"cannot read {e.filename}: {e.strerror}")):
        for i, name in enumerate(dirs + files):
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:  # removed while we walked
                continue
            newest = max(newest, st.st_mtime)
            size += st.st_size if i >= len(dirs) else 0
    return size, newest


def _factors(path: Path, where: str, damaged: list[str]) -> dict[str, Any]:
    """``cache_key_factors.json`` as vLLM writes it, or {} with a reason in ``damaged``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        missing = isinstance(exc, FileNotFoundError)
        damaged.append(f"{where}/{FACTORS} " + ("is missing" if missing else f"does not parse ({_why(exc)})"))
        return {}
    missing = [k for k in ("env", "config_hash", "code_hash", "compiler_hash") if not isinstance(data, dict)
               or k not in data]
    if missing or not isinstance(data["env"], dict):
        damaged.append(f"{where}/{FACTORS} lacks {', '.join(missing) or 'an env object'}")
        return {}
    return dict(data)


def _cache_file(pdir: Path, where: str, damaged: list[str]) -> dict[tuple[tuple[int, int], int, str], Any] | None:
    """``vllm_compile_cache.py`` checked as vLLM's ``CompilerManager`` reads it; None if it does not parse."""
    try:
        table = ast.literal_eval((pdir / CACHE_FILE).read_text())
        if not isinstance(table, dict):
            raise ValueError("not a dict")
        for (start, end), index, compiler in table:
            if not all(isinstance(x, int) for x in (start, end, index)) or not isinstance(compiler, str):
                raise ValueError(f"bad key (({start!r}, {end!r}), {index!r}, {compiler!r})")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        damaged.append(f"{where}/{CACHE_FILE} does not parse ({_why(exc)})")
        return None
    for key, value in table.items():
        handle = value.get("graph_handle") if isinstance(value, dict) else None
        if not (isinstance(handle, tuple) and len(handle) == 2 and all(isinstance(h, str) for h in handle)):
            damaged.append(f"{where}/{CACHE_FILE}: {key!r} has no graph_handle pair")
        elif key[2] == "inductor_standalone" and not (pdir / handle[0]).exists():
            damaged.append(f"{where}/{handle[0]} is missing (listed in {CACHE_FILE})")
    return table


def _why(exc: BaseException) -> str:  # one line, without ast's "<ast.Call object at 0x7f...>" addresses
    return re.sub(r" at 0x[0-9a-f]+", "", (str(exc).splitlines() or [type(exc).__name__])[0])


def _dtype(path: Path) -> str | None:
    """The most common floating dtype among the inputs of the graph's first ``forward`` (weights dominate)."""
    try:
        line = next((ln for ln in path.read_text(errors="replace").splitlines() if "def forward(" in ln), "")
    except OSError:
        return None
    floats = Counter(d for d in _ANNOTATION.findall(line) if d.startswith(("f", "bf")))
    return floats.most_common(1)[0][0] if floats else None


def _remove(path: Path) -> bool:
    """Rename ``path`` to a hidden name beside it, then delete it; False if it was already gone."""
    trash = path.parent / f"{_TRASH}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    if trash.is_symlink():  # swapped for a link since the scan: remove the link, not its target
        trash.unlink()
    shutil.rmtree(trash, ignore_errors=True)  # unlinks the links inside, never follows them
    return True
