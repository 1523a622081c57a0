"""``warmgraph cache ...``: list, inspect, verify, prune, remove, export and import cached graphs.

Every subcommand takes ``--dir`` (the cache root; default ``$WARMGRAPH_CACHE_DIR``, else
``$XDG_CACHE_HOME/warmgraph``, else ``~/.cache/warmgraph``) and ``--json`` (one JSON object on
stdout, nothing else). A root that does not exist is an empty cache: reading commands never
create it. One that exists is checked like the store checks it before loading (owned by you,
writable by nobody else), so an unsafe root is a one-line error with the fix.

Sizes are in bytes with K, M, G, T as powers of 1024, both in what is shown and in ``--max-size``.

``ls``, ``show`` and ``prune`` also take ``--vllm`` (or ``--vllm-root DIR``): the same view of
vLLM's own torch.compile cache; their bodies are in ``cache_vllm.py``.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from warmgraph.cli.output import emit_json, table
from warmgraph.graph_cache.archive import export_archive, import_archive
from warmgraph.graph_cache.store import Entry, GraphCache

JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
DIR = click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
                   help="Cache root [WARMGRAPH_CACHE_DIR, else $XDG_CACHE_HOME/warmgraph, else ~/.cache/warmgraph].")
VLLM = click.option("--vllm", is_flag=True, help="vLLM's own torch.compile cache instead of warmgraph's.")
VLLM_ROOT = click.option("--vllm-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="vLLM's cache root, implies --vllm [VLLM_CACHE_ROOT, else $XDG_CACHE_HOME/vllm, "
                              "else ~/.cache/vllm].")

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# -- parsing and formatting ------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` (also ``s``) in seconds; ValueError with an example otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration; use a number and a unit s, m, h, d or w, e.g. 30m, 12h, 7d")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def parse_size(text: str) -> int:
    """``500MB``, ``2G``, ``1.5GiB``, ``4096`` in bytes (K, M, G, T are powers of 1024); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a size; use a number and a unit, e.g. 500MB or 2G "
                         "(K, M, G, T are powers of 1024)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class _Parsed(click.ParamType):
    """A click type around a parse function, so a bad value is click's one-line usage error."""

    def __init__(self, name: str, parse: Any) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Parsed("duration", parse_duration)
SIZE = _Parsed("size", parse_size)


def human_size(n: float) -> str:
    """``512 B``, ``1.5 KB``, ``15 MB``, ``150 GB`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"


def human_age(since: float, now: float | None = None) -> str:
    """Time elapsed since ``since``: ``12s``, ``3m``, ``2h``, ``5d``."""
    seconds = max(0.0, (time.time() if now is None else now) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _bucket(entry: Entry) -> str:
    return ",".join(str(b) for b in entry.manifest.get("bucket", []))


def _open(root: Path | None) -> GraphCache:
    """The cache; an existing root is checked for safety, a missing one is left missing (an empty cache)."""
    cache = GraphCache(root)
    if cache.root.exists():
        cache.ensure()  # raises CacheSecurityError with the fix for a root others can write
    return cache


def _key(key: str) -> str:
    """A KEY argument, lower-cased; an empty one is refused rather than read as 'any key'."""
    if not key.strip():
        raise click.UsageError("KEY is empty; give a key or a unique prefix, as 'warmgraph cache ls' lists them")
    return key.strip().lower()


def _removed(cache: GraphCache, keys: list[str], sizes: dict[str, int], as_json: bool, what: str) -> None:
    freed = sum(sizes.get(k, 0) for k in keys)
    if as_json:
        emit_json({"root": str(cache.root), "removed": keys, "bytes_freed": freed})
        return
    for k in keys:
        click.echo(f"removed {k[:12]}")
    click.echo(f"{what}: removed {len(keys)} entries, freed {human_size(freed)} in {cache.root}")


# -- commands --------------------------------------------------------------------------------


@click.group()
def cache() -> None:
    """Inspect and manage compiled graphs on disk; carry them elsewhere as archives."""


@cache.command("ls")
@DIR
@VLLM
@VLLM_ROOT
@JSON
def ls_cmd(root: Path | None, vllm: bool, vllm_root: Path | None, as_json: bool) -> None:
    """List cached graphs with their size, age and use (--vllm: vLLM's compile cache entries)."""
    if vllm or vllm_root:
        from warmgraph.cli import cache_vllm
        return cache_vllm.ls(vllm_root, root, as_json)
    store = _open(root)
    entries = sorted(store.entries(), key=lambda e: (str(e.manifest.get("graph_name")), str(e.manifest.get("backend")),
                                                     str(e.manifest.get("bucket")), e.key))
    rows = []
    for e in entries:
        usage = e.usage()
        rows.append({"key": e.key, "graph_name": e.manifest.get("graph_name"), "backend": e.manifest.get("backend"),
                     "bucket": e.manifest.get("bucket"), "device": e.manifest.get("device"), "size": e.size,
                     "created": e.manifest.get("created"), "last_used": usage.get("last_used"),
                     "hits": int(usage.get("hits", 0))})
    if as_json:
        emit_json({"root": str(store.root), "entries": rows})
        return
    if not rows:
        click.echo(f"the cache at {store.root} is empty")
        return
    now = time.time()
    click.echo(table(
        ["key", "graph", "backend", "bucket", "device", "size", "age", "last used", "hits"],
        [[r["key"][:12], r["graph_name"], r["backend"], _bucket(e), r["device"], human_size(r["size"]),
          human_age(r["created"] or 0, now), human_age(r["last_used"] or 0, now) if r["hits"] else "never", r["hits"]]
         for r, e in zip(rows, entries)],
    ))
    total = sum(r["size"] for r in rows)
    click.echo(f"{len(rows)} entries, {human_size(total)} in {store.root}")
    bad = store.bad_paths()
    if bad:
        click.echo(f"{len(bad)} unreadable entries not shown; run 'warmgraph cache verify --repair'")


def _pretty(value: Any, indent: int = 2) -> list[str]:
    """Nested factors as indented ``name: value`` lines; short lists of scalars stay on one line."""
    pad = " " * indent
    lines: list[str] = []
    for k, v in (value.items() if isinstance(value, dict) else enumerate(value)):
        label = f"{pad}{k}:" if isinstance(value, dict) else f"{pad}-"
        nested = (isinstance(v, dict) and v) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v))
        if nested:
            lines += [label, *_pretty(v, indent + 2)]
        elif isinstance(v, list):
            lines.append(f"{label} [{', '.join(str(x) for x in v)}]")
        else:
            lines.append(f"{label} {'{}' if v == {} else v}")
    return lines


@cache.command("show")
@click.argument("key")
@DIR
@VLLM
@VLLM_ROOT
@JSON
def show_cmd(key: str, root: Path | None, vllm: bool, vllm_root: Path | None, as_json: bool) -> None:
    """One entry's key factors and files; KEY may be a unique prefix (--vllm: of a vLLM hash)."""
    if vllm or vllm_root:
        from warmgraph.cli import cache_vllm
        return cache_vllm.show(key, vllm_root, root, as_json)
    store = _open(root)
    entry = store.get(_key(key))
    usage = entry.usage()
    if as_json:
        emit_json({"root": str(store.root), "path": str(entry.path), "manifest": entry.manifest, "usage": usage})
        return
    m = entry.manifest
    created = m.get("created") or 0
    click.echo(f"key       {entry.key}")
    click.echo(f"path      {entry.path}")
    click.echo(f"graph     {m.get('graph_name')}   backend {m.get('backend')}   bucket {_bucket(entry)}   "
               f"device {m.get('device')}")
    click.echo(f"created   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))} ({human_age(created)} ago), "
               f"compile {m.get('compile_seconds')} s, warmgraph {m.get('warmgraph')}, torch {m.get('torch')}")
    last = f"last used {human_age(usage.get('last_used') or 0)} ago" if usage.get("hits") else "never used"
    click.echo(f"usage     {usage.get('hits', 0)} hits, {last}")
    click.echo("factors:")
    click.echo("\n".join(_pretty(m.get("factors", {}))))
    files = m.get("files", {})
    click.echo(f"files ({len(files)}, {human_size(entry.size)}):")
    click.echo(table(["file", "bytes", "sha256"], [[n, int(f["size"]), f["sha256"]] for n, f in sorted(files.items())]))


@cache.command("verify")
@click.option("--repair", is_flag=True, help="Remove the bad entries.")
@DIR
@JSON
def verify_cmd(repair: bool, root: Path | None, as_json: bool) -> None:
    """Check every file against its sha256 (exit code 1 if any is bad)."""
    store = _open(root)
    ok, bad = store.verify(repair=repair)
    if as_json:
        emit_json({"root": str(store.root), "ok": len(ok), "bad": [k for k, _ in bad],
                   "reasons": dict(bad), "repaired": repair})
    else:
        click.echo(f"{len(ok)} ok, {len(bad)} bad in {store.root}")
        for k, reason in bad:
            click.echo(f"bad {k[:12]}: {reason}" + ("  (removed)" if repair else ""))
        if bad and not repair:
            click.echo("run 'warmgraph cache verify --repair' to remove the bad entries")
    if bad:
        # A bad entry was found (even if repaired): scripts and CI should notice. SystemExit, not
        # ctx.exit(1): click returns ctx.exit's code from main() in non-standalone mode, and
        # warmgraph's main() runs it that way and ignores the return value.
        raise SystemExit(1)


@cache.command("du")
@DIR
@JSON
def du_cmd(root: Path | None, as_json: bool) -> None:
    """Disk use by graph name, by backend, and in total."""
    store = _open(root)
    by: dict[str, dict[str, dict[str, int]]] = {"graph": defaultdict(lambda: {"entries": 0, "bytes": 0}),
                                                "backend": defaultdict(lambda: {"entries": 0, "bytes": 0})}
    entries = store.entries()
    for e in entries:
        for what, field in (("graph", "graph_name"), ("backend", "backend")):
            slot = by[what][str(e.manifest.get(field))]
            slot["entries"] += 1
            slot["bytes"] += e.size
    total = {"entries": len(entries), "bytes": sum(e.size for e in entries)}
    if as_json:
        emit_json({"root": str(store.root), "total": total, "by_graph": dict(sorted(by["graph"].items())),
                   "by_backend": dict(sorted(by["backend"].items()))})
        return
    if not entries:
        click.echo(f"the cache at {store.root} is empty")
        return
    for what in ("graph", "backend"):
        click.echo(table([what, "entries", "size"],
                         [[name, s["entries"], human_size(s["bytes"])] for name, s in sorted(by[what].items())]))
        click.echo()
    click.echo(f"total: {total['entries']} entries, {human_size(total['bytes'])} in {store.root}")


@cache.command("prune")
@click.option("--older-than", type=DURATION, help="Remove entries unused for this long: 30m, 12h, 7d, 2w.")
@click.option("--keep-last", type=click.IntRange(min=0), help="Keep only the N most recently used entries.")
@click.option("--max-size", type=SIZE, help="Remove least recently used entries down to this size: 500MB, 2G.")
@click.option("--dry-run", is_flag=True, help="With --vllm: only list what would be removed.")
@DIR
@VLLM
@VLLM_ROOT
@JSON
def prune_cmd(older_than: float | None, keep_last: int | None, max_size: int | None, dry_run: bool,
              root: Path | None, vllm: bool, vllm_root: Path | None, as_json: bool) -> None:
    """Remove old or least recently used entries (at least one option); --vllm: whole vLLM entries, oldest first."""
    if vllm or vllm_root:
        from warmgraph.cli import cache_vllm
        return cache_vllm.prune(older_than, max_size, keep_last, dry_run, vllm_root, root, as_json)
    if dry_run:
        raise click.UsageError("--dry-run works with --vllm only; 'warmgraph cache ls' shows the entries and ages")
    if older_than is None and keep_last is None and max_size is None:
        raise click.UsageError("give at least one of --older-than (e.g. 7d), --keep-last N, --max-size (e.g. 2G)")
    store = _open(root)
    sizes = {e.key: e.size for e in store.entries()}
    removed: list[str] = []
    if sizes and (older_than is not None or keep_last is not None):
        removed += store.prune(older_than=older_than, keep_last=keep_last)
    if sizes and max_size is not None:
        removed += GraphCache(store.root, max_bytes=max_size).evict()
    _removed(store, removed, sizes, as_json, "prune")


@cache.command("rm")
@click.argument("key")
@DIR
@JSON
def rm_cmd(key: str, root: Path | None, as_json: bool) -> None:
    """Remove one entry; KEY may be a unique prefix."""
    store = _open(root)
    entry = store.get(_key(key))
    with store.lock(entry.key):  # not while a writer of the same key is mid-store
        store.remove(entry)
    _removed(store, [entry.key], {entry.key: entry.size}, as_json, "rm")


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stdin is not a person
        return False


@cache.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@DIR
@JSON
def clear_cmd(yes: bool, root: Path | None, as_json: bool) -> None:
    """Remove every entry."""
    store = _open(root)
    entries = store.entries()
    sizes = {e.key: e.size for e in entries}
    doomed = [e.key for e in entries] + [p.name for p in store.bad_paths()]
    if doomed and not yes:
        if not _interactive():
            raise click.UsageError(f"refusing to clear {store.root} without confirmation; pass --yes")
        # The prompt goes to stderr so --json still prints exactly one object on stdout.
        if not click.confirm(f"remove all {len(doomed)} entries ({human_size(sum(sizes.values()))}) "
                             f"from {store.root}?", err=True):
            click.echo("warmgraph: nothing removed", err=True)
            raise click.exceptions.Exit(130)
    if doomed:
        store.clear()
    _removed(store, doomed, sizes, as_json, "clear")


@cache.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Archive to write.")
@click.option("--graph", "graph_name", help="Only entries of this graph name.")
@click.option("--key", "fingerprint", help="Only entries whose key starts with this prefix.")
@click.option("--backend", help="Only entries of this backend.")
@DIR
@JSON
def export_cmd(out: Path, graph_name: str | None, fingerprint: str | None, backend: str | None,
               root: Path | None, as_json: bool) -> None:
    """Write entries to a .tar.gz archive (all, or those selected).

    Every file is checked against its sha256 as it is written. Entries that hold model weights
    (vLLM's recovered layer weights, graph vllm-weights) go only when a filter names them.

    Example: warmgraph cache export --out graphs.tar.gz --backend aot
    """
    if not out.parent.is_dir():
        raise click.UsageError(f"--out {out}: directory {out.parent} does not exist; create it or choose another path")
    store = _open(root)
    keys = export_archive(store, out, graph_name=graph_name, fingerprint=fingerprint, backend=backend)
    size = out.stat().st_size
    if as_json:
        emit_json({"root": str(store.root), "out": str(out), "keys": keys, "bytes": size})
        return
    click.echo(f"exported {len(keys)} entries to {out} ({human_size(size)})")


@cache.command("import")
@click.argument("archive", type=click.Path(path_type=Path))
@DIR
@JSON
def import_cmd(archive: Path, root: Path | None, as_json: bool) -> None:
    """Add the entries of an archive made by 'cache export'.

    The whole archive is validated first and refused as a whole if anything is wrong. Keys
    already in the cache are kept as they are. Import only archives you trust: entries hold
    native code.
    """
    store = _open(root)  # import_archive creates a missing root, after the archive passed every check
    keys = import_archive(store, archive)
    if as_json:
        emit_json({"root": str(store.root), "archive": str(archive), "imported": keys})
        return
    for k in keys:
        click.echo(f"imported {k[:12]}")
    click.echo(f"imported {len(keys)} new entries into {store.root} (keys already present are kept as they are)")
