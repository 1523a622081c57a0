"""Buckets from a file: vllm-gaudi's text format and warmgraph's YAML.

vllm-gaudi (``VLLM_BUCKETING_FROM_FILE``): one tuple per line, ``#`` starts a comment line.
Each element is an int, a list of ints or ``range(a, b[, c])``; the Cartesian product of the
elements is taken. A 3-tuple with query length 1 is a decode bucket, any other a prompt
bucket. ``range`` excludes its stop value, as in Python (the upstream docs say otherwise;
the upstream code agrees with Python).

warmgraph YAML (what ``warmgraph buckets fit --out`` writes)::

    format: warmgraph-buckets/1
    dims: [size]
    buckets: [128, 256, 512]
    meta: {strategy: fitted, trace: conv.csv, ...}   # free-form, for people

A YAML file may instead hold ``prompt:`` and ``decode:`` lists of 3-lists, for plans.

A file may expand to at most ``limits.MAX_PLAN_BUCKETS`` buckets in all (one line such as
``(range(1000), range(1000), range(1000))`` would otherwise ask for a billion); the count
is checked before a line is expanded.
"""

from __future__ import annotations

import ast
import itertools
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.limits import MAX_PLAN_BUCKETS, TooManyBucketsError
from warmgraph.errors import BucketFileError

FORMAT = "warmgraph-buckets/1"
_MAX_RANGE = 10_000  # upstream's cap on one expanded range
_RANGE = re.compile(r"range\(\s*([^()]*?)\s*\)")


def _expand_range(match: re.Match[str], where: str) -> str:
    try:
        args = [int(a) for a in match.group(1).split(",")]
    except ValueError:
        raise BucketFileError(f"{where}: {match.group(0)} needs integer arguments") from None
    if not 1 <= len(args) <= 3 or (len(args) == 3 and args[2] == 0):
        raise BucketFileError(f"{where}: {match.group(0)} must be range(stop), range(start, stop[, step != 0])")
    values = range(*args)
    try:
        count = len(values)
    except OverflowError:  # more values than a list can hold
        count = (values.stop - values.start) // values.step
    if count > _MAX_RANGE:
        raise BucketFileError(f"{where}: {match.group(0)} expands to {count} values; at most {_MAX_RANGE}")
    return repr(list(values))


def parse_gaudi_text(text: str, source: str = "<text>") -> list[tuple[int, ...]]:
    """Every bucket a vllm-gaudi bucket file describes, in file order, products expanded."""
    out: list[tuple[int, ...]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        expanded = _RANGE.sub(lambda m, w=where: _expand_range(m, w), line)
        try:
            value = ast.literal_eval(expanded)
        except (ValueError, SyntaxError):
            raise BucketFileError(
                f"{where}: cannot parse {line!r}; write a tuple such as (1, [128, 256], range(0, 8, 2))"
            ) from None
        if not isinstance(value, tuple) or len(value) != 3:
            raise BucketFileError(f"{where}: {line!r} is not a 3-tuple (batch, query_len, blocks)")
        axes = []
        for element in value:
            items = element if isinstance(element, list) else [element]
            if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in items):
                raise BucketFileError(f"{where}: {line!r} has an element that is not an int >= 0 or a list of them")
            axes.append(items)
        count = math.prod(len(a) for a in axes)
        if len(out) + count > MAX_PLAN_BUCKETS:
            raise TooManyBucketsError(
                f"{where}: {line!r} expands to {count:,} buckets ({len(out) + count:,} so far in the file), above "
                f"the cap of {MAX_PLAN_BUCKETS:,} per file; use fewer or shorter lists and ranges",
                len(out) + count, MAX_PLAN_BUCKETS,
            )
        out.extend(itertools.product(*axes))
    if not out:
        raise BucketFileError(f"{source}: no buckets found; add lines such as (1, 128, 0)")
    return out


def split_phases(buckets: Sequence[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(prompt, decode) as vllm-gaudi splits them: query length 1 means decode."""
    prompt = [b for b in buckets if b[1] != 1]
    decode = [b for b in buckets if b[1] == 1]
    return prompt, decode


def _read_text(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    if p.is_dir():
        raise BucketFileError(f"bucket file {p} is a directory; give the path of a bucket file (.txt or .yaml)")
    if not p.exists():
        raise BucketFileError(f"bucket file {p} does not exist; check the path")
    if not p.is_file():
        raise BucketFileError(f"bucket file {p} is not a regular file; give the path of a bucket file")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        kind = exc.__class__.__name__
        raise BucketFileError(f"bucket file {p} cannot be read ({kind}); give a UTF-8 text file") from None


def _is_yaml(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def _load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise BucketFileError(f"bucket file {path} is not valid YAML{at}; fix the syntax") from None
    if not isinstance(data, dict):
        raise BucketFileError(f"bucket file {path} must be a YAML mapping with 'buckets' or 'prompt'/'decode'")
    return data


def _yaml_buckets(data: dict[str, Any], key: str, path: str | os.PathLike[str]) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise BucketFileError(f"bucket file {path}: '{key}' must be a non-empty list of buckets")
    return value


def load_buckets(path: str | os.PathLike[str]) -> BucketSet:
    """One BucketSet from a file: YAML ``buckets`` (any dims) or a vllm-gaudi text file (3-D)."""
    if _is_yaml(path):
        data = _load_yaml(path)
        if data.get("format", FORMAT) != FORMAT:
            raise BucketFileError(f"bucket file {path} has format {data.get('format')!r}; expected {FORMAT}")
        dims = data.get("dims")
        try:
            return BucketSet(_yaml_buckets(data, "buckets", path), dims=dims)
        except BucketFileError:
            raise
        except ValueError as exc:
            raise BucketFileError(f"bucket file {path}: {exc}") from None
    return BucketSet(parse_gaudi_text(_read_text(path), str(path)))


def load_phases(path: str | os.PathLike[str]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(prompt, decode) 3-D buckets from a vllm-gaudi text file or a YAML with prompt/decode."""
    if not _is_yaml(path):
        return split_phases(parse_gaudi_text(_read_text(path), str(path)))
    data = _load_yaml(path)
    if "prompt" not in data and "decode" not in data:
        flat = [tuple(b) if isinstance(b, list) else b for b in _yaml_buckets(data, "buckets", path)]
        if any(not isinstance(b, tuple) or len(b) != 3 for b in flat):
            raise BucketFileError(f"bucket file {path}: a plan needs 3-D buckets [batch, query_len, blocks]")
        return split_phases(flat)
    phases = []
    for key in ("prompt", "decode"):
        items = data.get(key) or []
        if any(not isinstance(b, list) or len(b) != 3 for b in items):
            raise BucketFileError(f"bucket file {path}: every '{key}' bucket must be [batch, query_len, blocks]")
        phases.append([tuple(b) for b in items])
    return phases[0], phases[1]


def write_yaml(path: str | os.PathLike[str], buckets: BucketSet, meta: dict[str, Any] | None = None) -> None:
    """Write ``buckets`` as warmgraph YAML, atomically: a reader never sees half a file."""
    doc = {"format": FORMAT, "dims": list(buckets.dims), "buckets": buckets.to_list(), "meta": meta or {}}
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise BucketFileError(f"cannot write {target}: directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    except OSError as exc:
        raise BucketFileError(f"cannot write {target} ({exc.strerror or exc}); choose a writable directory") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False, default_flow_style=None)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            why = exc.strerror or exc
            raise BucketFileError(f"cannot write {target} ({why}); check the path and free space") from None
        raise
