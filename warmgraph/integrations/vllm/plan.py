"""Which token counts get a graph of their own when vLLM runs through warmgraph.

vLLM's CPU runner calls the model at each step's real token count, so only an exact count
reaches a per-size graph; every other count goes to the dynamic graph. Decode steps are the
hot path and their counts are the batch sizes. Each size costs a cold start one more
AOTInductor compile (17-24 s for a small model on 2 cores here, about what vLLM's own single
dynamic compile costs), and the dynamic graph serves every count from 1 up, so on CPU the
plan is empty by default: one graph, compiled once. On CUDA the counts are vLLM's cudagraph
capture sizes, which it pads to. ``WARMGRAPH_VLLM_SIZES=1,2,4,8`` sets the plan.
"""

from __future__ import annotations

import os
from typing import Any

from warmgraph.errors import WarmgraphError

# The dynamic graph's upper bound: at least this many tokens, whatever max_num_batched_tokens is,
# so that configurations differing only there (vLLM's LLM class defaults to 8192 on CPU, its
# server to 2048) share one dynamic graph.
DYNAMIC_MAX_TOKENS = 16384


def dynamic_max(max_num_batched_tokens: int) -> int:
    """The dynamic graph's largest token count for a vLLM config's ``max_num_batched_tokens``."""
    return max(int(max_num_batched_tokens), DYNAMIC_MAX_TOKENS)


def parse_sizes(text: str, source: str = "WARMGRAPH_VLLM_SIZES") -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; WarmgraphError naming ``source`` and the fix for anything else."""
    try:
        sizes = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise WarmgraphError(f"{source}={text!r} is not a list of token counts; "
                             "use positive integers separated by commas, e.g. 1,2,4,8")
    return sizes


def plan_sizes(vllm_config: Any, env: dict[str, str] | None = None) -> list[int]:
    """The token counts to build a graph of their own for (see the module docstring)."""
    env = os.environ if env is None else env
    max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
    if env.get("WARMGRAPH_VLLM_SIZES"):
        sizes = parse_sizes(env["WARMGRAPH_VLLM_SIZES"])
    else:
        sizes = list(vllm_config.compilation_config.cudagraph_capture_sizes or [])
    return sorted({s for s in sizes if s <= max_tokens})


def switch(env: dict[str, str] | None, name: str, on: str, off: str) -> bool:
    """A yes/no setting, on by default; WarmgraphError naming both meanings for another value."""
    env = os.environ if env is None else env
    value = env.get(name, "1").strip().lower()
    if value in ("1", "true", "on", "yes", ""):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise WarmgraphError(f"{name}={value!r} is not understood; use 1 to {on} (the default) or 0 to {off}")


def cut_graph(env: dict[str, str] | None = None) -> bool:
    """``WARMGRAPH_VLLM_CUT``: whether the backend cuts vLLM's graph at its attention ops (1, the
    default: each distinct piece compiled once, a fraction of the cold start) or compiles it
    whole (0: one graph, fused across the attention boundaries). WarmgraphError for another value."""
    return switch(env, "WARMGRAPH_VLLM_CUT", "cut vLLM's graph at its attention ops", "compile it whole")


def stream_one(env: dict[str, str] | None = None) -> bool:
    """``WARMGRAPH_VLLM_STREAM``: whether one-token calls on a CPU run a graph that streams the
    layer weights (``stream``; 1, the default) or vLLM's oneDNN products (0). WarmgraphError
    for another value."""
    return switch(env, "WARMGRAPH_VLLM_STREAM", "stream the weights in one-token calls",
                   "keep vLLM's oneDNN products")
