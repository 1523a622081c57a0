"""The ``--plot`` picture of ``buckets simulate``: where the lengths fall, where the buckets are,
and which buckets waste the most padding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from warmgraph.errors import ConfigError


def check_plot_path(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a plot path matplotlib cannot write: an unknown image type
    (it would fail only after the simulation) or a directory that does not exist; or matplotlib
    missing (an optional extra: serving does not need it)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which warmgraph installs only as an extra; "
                          "pip install 'warmgraph[plot]' (or matplotlib), or leave out --plot") from None

    p = Path(path)
    kinds = FigureCanvasBase.get_supported_filetypes()
    if p.suffix.lower().lstrip(".") not in kinds:
        raise ConfigError(f"--plot {p}: {p.suffix or 'no extension'} is not an image type; "
                          f"name a .png file (or one of: {', '.join('.' + k for k in sorted(kinds))})")
    if not p.parent.is_dir():
        raise ConfigError(f"--plot {p}: directory {p.parent} does not exist; create it or choose another path")


def plot_results(path: str | os.PathLike[str], results: list[dict[str, Any]], values: np.ndarray | None,
                 decode: bool) -> None:
    """Write a PNG with two panels: histogram with bucket edges, and padding per bucket."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; never pick an interactive backend
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = results[0]
    if decode or values is None:
        _decode_panels(top, bottom, results, colors)
    else:
        top.hist(values, bins=200, color="0.75")
        for i, r in enumerate(results):
            for j, edge in enumerate(r["buckets"]):
                label = f"{r['strategy']} ({r['num_buckets']} buckets, waste {100 * r['padding_waste']:.1f}%)"
                top.axvline(edge, color=colors[i % len(colors)], lw=1, alpha=0.8, label=label if j == 0 else None)
        top.set_xlim(0, 1.03 * max(max(r["buckets"]) for r in results))  # outliers past every bucket are misses
        top.set_xlabel("length (tokens)")
        top.set_ylabel("requests")
        top.set_title("lengths and bucket edges")
        top.legend(fontsize=8)
        edges = np.array(first["buckets"])
        covered = values[values <= edges[-1]]
        idx = np.searchsorted(edges, covered, side="left")
        waste = np.bincount(idx, weights=edges[idx] - covered, minlength=len(edges))
        bottom.bar(range(len(edges)), waste / max(waste.sum(), 1), color=colors[0])
        bottom.set_xticks(range(len(edges)), [str(e) for e in edges], rotation=60, fontsize=7)
        bottom.set_xlabel(f"{first['strategy']} bucket")
        bottom.set_ylabel("share of padded tokens")
        bottom.set_title("where the padding goes")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _decode_panels(top: Any, bottom: Any, results: list[dict[str, Any]], colors: list[str]) -> None:
    names = [r["strategy"] for r in results]
    top.bar(names, [100 * r["padding_waste"] for r in results], color=colors[: len(names)])
    top.set_ylabel("padding waste (%)")
    top.set_title("decode buckets: waste at each strategy's bucket count")
    for i, r in enumerate(results):
        b = np.array(r["buckets"])
        bottom.scatter(b[:, 0], b[:, 1], s=12, color=colors[i % len(colors)], label=f"{r['strategy']} ({len(b)})")
    bottom.set_xlabel("batch")
    bottom.set_ylabel("blocks")
    bottom.set_yscale("log")
    bottom.set_xscale("log")
    bottom.legend(fontsize=8)
    bottom.set_title("decode buckets (batch, blocks)")
