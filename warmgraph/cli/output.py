"""Printing for the CLI: one JSON object for scripts, plain aligned tables for people.

Also ``default_of``: option defaults are read from the config dataclasses, so the CLI and
the Python API cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import click


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (an option's default, shown by ``--help``)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default")
    return field.default


def emit_json(obj: dict[str, Any]) -> None:
    """Exactly one JSON object on stdout, nothing else."""
    click.echo(json.dumps(obj, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def pct(x: float) -> str:
    """A share as a percentage; never rounds a near miss up to 100% or a trace of waste down to 0%."""
    text = f"{100 * x:.1f}%"
    if (text == "100.0%" and x < 1) or (text == "0.0%" and x > 0):
        text = f"{100 * x:.3g}%" if x < 0.5 else f"{100 * x:.3f}%"
    return text


def wrap_values(values: Sequence[Any], indent: str = "  ", width: int = 100) -> str:
    """Values on as many lines as needed, each under ``width`` characters."""
    lines, current = [], indent
    for v in values:
        piece = str(v)
        if len(current) + len(piece) + 1 > width and current.strip():
            lines.append(current.rstrip())
            current = indent
        current += piece + " "
    if current.strip():
        lines.append(current.rstrip())
    return "\n".join(lines)
