"""Capture-size plans: which batch sizes get a captured device graph.

vLLM captures one CUDA graph per size in ``cudagraph_capture_sizes``; by default
``[1, 2, 4]``, multiples of 8 below 256, then multiples of 16, up to
``max_cudagraph_capture_size = min(max_num_seqs * (1 + spec) * 2, 512)`` capped at
``max_num_batched_tokens`` (``VllmConfig._set_cudagraph_sizes``). vllm-ascend drops the
``* 2`` for its default maximum.

On Ascend in piecewise mode every size costs ``num_layers + 1`` graphs (one per piece), and
the graphs a device can hold were once bounded (1800, from 2048 streams less a reserve).
``fit_graph_budget`` drops sizes until the total fits: without a trace it samples evenly,
keeping the first and the last size, as vllm-ascend's legacy ``update_aclgraph_sizes``
did; with a trace of batch sizes it keeps the subset that pads that trace least (exact,
by ``fit_1d`` restricted to the configured sizes; the largest size is always kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from warmgraph.errors import ConfigError

ASCEND_LEGACY_GRAPH_BUDGET = 1800


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} is {value!r}; it must be a positive integer")


def max_capture_size(
    max_num_seqs: int, max_num_batched_tokens: int, num_speculative_tokens: int = 0, *, ascend: bool = False
) -> int:
    """vLLM's default ``max_cudagraph_capture_size`` (vllm-ascend's with ``ascend=True``)."""
    _positive("max_num_seqs", max_num_seqs)
    _positive("max_num_batched_tokens", max_num_batched_tokens)
    if isinstance(num_speculative_tokens, bool) or not isinstance(num_speculative_tokens, int) or (
        num_speculative_tokens < 0
    ):
        raise ConfigError(f"num_speculative_tokens is {num_speculative_tokens!r}; give 0 or more")
    factor = 1 if ascend else 2
    return min(max_num_batched_tokens, min(max_num_seqs * (1 + num_speculative_tokens) * factor, 512))


def default_capture_sizes(
    max_num_seqs: int, max_num_batched_tokens: int, num_speculative_tokens: int = 0, *, ascend: bool = False
) -> list[int]:
    """vLLM's default ``cudagraph_capture_sizes`` for these limits, sorted ascending."""
    top = max_capture_size(max_num_seqs, max_num_batched_tokens, num_speculative_tokens, ascend=ascend)
    sizes = [s for s in (1, 2, 4) if s <= top]
    if top >= 8:
        sizes += list(range(8, min(top + 1, 256), 8))
    if top >= 256:
        sizes += list(range(256, top + 1, 16))
    if max_num_batched_tokens <= top and max_num_batched_tokens not in sizes:
        sizes.append(max_num_batched_tokens)
    return sorted(set(sizes))


@dataclass(frozen=True)
class CapturePlan:
    """Sizes kept under a graph budget, and what they cost."""

    sizes: list[int]
    dropped: list[int]
    graphs_per_size: int
    total_graphs: int
    budget: int

    def to_dict(self) -> dict[str, object]:
        return {
            "sizes": self.sizes,
            "dropped": self.dropped,
            "graphs_per_size": self.graphs_per_size,
            "total_graphs": self.total_graphs,
            "budget": self.budget,
        }


def fit_graph_budget(
    sizes: Sequence[int],
    num_layers: int,
    graph_budget: int = ASCEND_LEGACY_GRAPH_BUDGET,
    trace: Sequence[int] | np.ndarray | None = None,
) -> CapturePlan:
    """Keep as many of ``sizes`` as ``graph_budget`` allows at ``num_layers + 1`` graphs each.

    With ``trace`` (batch sizes seen in serving), the kept subset is the one with the least
    padded work on it; without, sizes are sampled evenly keeping the first and last.
    """
    _positive("num_layers", num_layers)
    _positive("graph_budget", graph_budget)
    ordered = sorted(set(int(s) for s in sizes))
    if not ordered or ordered[0] < 1:
        raise ConfigError("capture sizes must be a non-empty list of positive ints")
    per_size = num_layers + 1
    fits = graph_budget // per_size
    if fits < 1:
        raise ConfigError(
            f"a graph budget of {graph_budget} cannot hold one size of {per_size} graphs; "
            "raise the budget or capture fewer pieces"
        )
    if fits >= len(ordered):
        kept = ordered
    elif trace is not None and len(trace) > 0:
        from warmgraph.bucketing.fitted import fit_1d

        values = np.minimum(np.asarray(trace, dtype=np.int64), ordered[-1])
        kept = fit_1d(values, 1, ordered[-1], max_buckets=fits, candidates=ordered)
    elif fits == 1:
        kept = [ordered[-1]]
    else:
        picks = {round(i * (len(ordered) - 1) / (fits - 1)) for i in range(fits)}
        kept = [ordered[i] for i in sorted(picks)]
    dropped = [s for s in ordered if s not in kept]
    return CapturePlan(sorted(kept), dropped, per_size, per_size * len(kept), graph_budget)


def padding_of(sizes: Sequence[int], trace: Sequence[int] | np.ndarray) -> float:
    """Padding waste of ``trace`` batch sizes run at the next size up (sizes beyond the top are skipped)."""
    ordered = np.array(sorted(set(sizes)), dtype=np.int64)
    values = np.asarray(trace, dtype=np.int64)
    values = values[values <= ordered[-1]]
    if values.size == 0 or values.sum() == 0:
        return 0.0
    padded = ordered[np.searchsorted(ordered, values, side="left")]
    return float(padded.sum() / values.sum() - 1.0) if not math.isclose(values.sum(), 0) else 0.0
