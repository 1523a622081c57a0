"""Capture sizes: vLLM's default list and the vllm-ascend graph budget."""

from __future__ import annotations

import numpy as np
import pytest

from warmgraph.bucketing.capture_sizes import default_capture_sizes, fit_graph_budget, max_capture_size, padding_of
from warmgraph.errors import ConfigError


def test_vllm_default_is_51_sizes() -> None:
    sizes = default_capture_sizes(256, 2048)
    assert len(sizes) == 51
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 512
    assert sizes == [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)]
    assert default_capture_sizes(1024, 8192) == sizes


def test_small_limits() -> None:
    assert max_capture_size(4, 2048) == 8
    assert default_capture_sizes(4, 2048) == [1, 2, 4, 8]
    assert max_capture_size(4, 2048, ascend=True) == 4
    assert default_capture_sizes(64, 100) == [1, 2, 4, *range(8, 100, 8), 100]  # token budget is a size
    assert max_capture_size(100, 4096, num_speculative_tokens=1) == 400


def test_budget_without_trace_keeps_ends() -> None:
    sizes = default_capture_sizes(256, 2048)
    plan = fit_graph_budget(sizes, num_layers=94, graph_budget=1800)
    assert plan.graphs_per_size == 95 and len(plan.sizes) == 1800 // 95
    assert plan.sizes[0] == 1 and plan.sizes[-1] == 512
    assert plan.total_graphs <= 1800
    assert sorted(plan.sizes + plan.dropped) == sizes


def test_budget_with_trace_pads_less_than_even_sampling() -> None:
    rng = np.random.default_rng(1)
    trace = np.clip(rng.gamma(2.0, 12.0, 5000).astype(int) + 1, 1, 512)
    sizes = default_capture_sizes(256, 2048)
    even = fit_graph_budget(sizes, 94, 1800)
    fitted = fit_graph_budget(sizes, 94, 1800, trace=trace)
    assert len(fitted.sizes) == len(even.sizes) and fitted.sizes[-1] == 512
    assert set(fitted.sizes) <= set(sizes)
    assert padding_of(fitted.sizes, trace) < padding_of(even.sizes, trace)


def test_budget_errors() -> None:
    with pytest.raises(ConfigError, match="cannot hold one size"):
        fit_graph_budget([1, 2], num_layers=100, graph_budget=50)
    with pytest.raises(ConfigError, match="num_layers"):
        fit_graph_budget([1, 2], num_layers=0)
    with pytest.raises(ConfigError, match="max_num_seqs"):
        default_capture_sizes(0, 10)
