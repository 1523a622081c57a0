"""``warmgraph cache ls|show|prune --vllm``: vLLM's own torch.compile cache, which vLLM has no tool for.

The bodies of the ``--vllm`` forms of ``cache.py``'s commands. The root is ``--vllm-root``, else
vLLM's ``VLLM_CACHE_ROOT`` rule; reading never creates it and a missing one is an empty cache.
``ls`` and ``show`` only read; ``prune`` removes whole hash directories, oldest first. The age of
an entry is the time since anything in it was written: vLLM records no use of its entries.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from warmgraph.cli.cache import human_age, human_size
from warmgraph.cli.output import emit_json, table
from warmgraph.graph_cache import vllm as vc


def _root(vllm_root: Path | None, warmgraph_dir: Path | None) -> Path:
    if warmgraph_dir is not None:
        raise click.UsageError("--dir is warmgraph's cache root; for vLLM's cache give --vllm-root DIR")
    return vllm_root if vllm_root is not None else vc.default_vllm_root()


def _ranges(entry: vc.VllmCacheEntry) -> str:
    """``1-8192,4,8``: a compile range as start-end, a single compile size as one number."""
    return ",".join(str(s) if s == e else f"{s}-{e}" for s, e in entry.ranges) or "-"


def _note(entry: vc.VllmCacheEntry) -> str:
    if not entry.damaged:
        return ""
    more = f" (+{len(entry.damaged) - 1} more)" if len(entry.damaged) > 1 else ""
    return f"damaged: {entry.damaged[0]}{more}"


def ls(vllm_root: Path | None, warmgraph_dir: Path | None, as_json: bool) -> None:
    """Every entry, oldest first, with what its files say."""
    root = _root(vllm_root, warmgraph_dir)
    entries = vc.scan(root)
    if as_json:
        emit_json({"root": str(root), "entries": [e.to_json() for e in entries]})
        return
    if not entries:
        click.echo(f"vLLM's compile cache at {root} is empty")
        return
    now = time.time()
    click.echo(table(
        ["hash", "kind", "ranks", "prefixes", "compiler", "ranges", "graphs", "artifacts", "dtype", "size", "age",
         "note"],
        [[e.hash[:12], e.kind, ",".join(r.removeprefix("rank_") for r in e.ranks) or "-", ",".join(e.prefixes) or "-",
          ",".join(e.compilers) or "-", _ranges(e), e.graphs, e.artifacts, e.dtype or "-", human_size(e.size),
          human_age(e.mtime, now) if e.mtime else "-", _note(e)] for e in entries],
    ))
    damaged = sum(1 for e in entries if e.damaged)
    click.echo(f"{len(entries)} entries, {human_size(sum(e.size for e in entries))} in {root / vc.COMPILE_DIR}"
               + (f"; {damaged} damaged (see 'warmgraph cache show --vllm HASH')" if damaged else ""))


def contents(path: Path) -> list[dict[str, Any]]:
    """Bytes and files per part of an entry: files down to ``rank/prefix/name``, and below that (an
    unpacked artifact) or inside ``inductor_cache``/``triton_cache`` one total per directory."""
    parts: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes": 0, "files": 0})
    for top, _, files in os.walk(path):
        for name in files:
            rel = Path(top, name).relative_to(path).parts
            cut = next((i + 1 for i, p in enumerate(rel[:-1]) if p in vc.SHARED_DIRS), min(len(rel), 3))
            key = "/".join(rel[:cut]) + ("/" if cut < len(rel) else "")
            try:
                parts[key]["bytes"] += os.lstat(os.path.join(top, name)).st_size
            except FileNotFoundError:  # removed while we walked
                continue
            parts[key]["files"] += 1
    return [{"path": k, **v} for k, v in sorted(parts.items())]


def show(key: str, vllm_root: Path | None, warmgraph_dir: Path | None, as_json: bool) -> None:
    """One entry: where it is, what its factors and cache file say, and its files."""
    root = _root(vllm_root, warmgraph_dir)
    if not key.strip():
        raise click.UsageError("KEY is empty; give a hash or a unique prefix, as 'warmgraph cache ls --vllm' shows")
    e = vc.find(root, key)
    parts = contents(e.path) if not e.path.is_symlink() else []
    if as_json:
        emit_json({"root": str(root), "entry": e.to_json(env=True), "contents": parts})
        return
    parses = {None: "absent", True: "parses", False: "DOES NOT PARSE"}[e.cache_file_parses]
    f = e.factors
    click.echo(f"hash      {e.hash}")
    click.echo(f"kind      {e.kind}   path {e.path}")
    click.echo(f"size      {human_size(e.size)}, last written "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.mtime))} ({human_age(e.mtime)} ago)")
    click.echo(f"ranks     {', '.join(e.ranks) or '-'}   prefixes {', '.join(e.prefixes) or '-'}   "
               f"dtype {e.dtype or '-'}")
    if e.kind == "compile":
        click.echo(f"compiled  {', '.join(e.compilers) or '-'}: {e.graphs} graphs, ranges {_ranges(e)}, "
                   f"{e.artifacts} artifacts, {vc.CACHE_FILE} {parses}")
        click.echo(f"factors   config {f.get('config_hash', '-')}, code {f.get('code_hash', '-')}, "
                   f"compiler {f.get('compiler_hash', '-')}, {len(f.get('env', {}))} env factors (--json shows them)")
    else:
        click.echo(f"compiled  {e.artifacts} rank_*/model artifacts")
    for why in e.damaged:
        click.echo(f"damaged   {why}")
    click.echo(f"files ({sum(p['files'] for p in parts)}):")
    click.echo(table(["path", "bytes", "files"], [[p["path"], p["bytes"], p["files"]] for p in parts]))


def prune(older_than: float | None, max_size: int | None, keep_last: int | None, dry_run: bool,
          vllm_root: Path | None, warmgraph_dir: Path | None, as_json: bool) -> None:
    """Remove whole entries, oldest first, or with ``dry_run`` only say which."""
    if keep_last is not None:
        raise click.UsageError("--keep-last does not apply to --vllm (vLLM records no use); "
                               "give --older-than (e.g. 7d) or --max-size (e.g. 2G)")
    if older_than is None and max_size is None:
        raise click.UsageError("prune --vllm needs --older-than (e.g. 7d) or --max-size (e.g. 2G)")
    root = _root(vllm_root, warmgraph_dir)
    removed = vc.prune(root, older_than=older_than, max_size=max_size, dry_run=dry_run)
    freed = sum(e.size for e in removed)
    if as_json:
        emit_json({"root": str(root), "removed": [e.hash for e in removed], "bytes_freed": freed, "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    now = time.time()
    for e in removed:
        click.echo(f"{verb} {e.hash[:12]} ({e.kind}, {human_size(e.size)}, written {human_age(e.mtime, now)} ago)")
    click.echo(f"prune --vllm: {verb} {len(removed)} entries, {human_size(freed)} in {root / vc.COMPILE_DIR}"
               + ("; nothing was removed (--dry-run)" if dry_run else ""))
