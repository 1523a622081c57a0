"""Which token counts get a graph of their own when vLLM runs through warmgraph.

vLLM's CPU runner calls the model at each step's real token count, so only an exact count
reaches a per-size graph; every other count goes to the dynamic graph. Decode steps are the
hot path and their counts are the batch sizes. Each size costs a cold start one more
AOTInductor compile (17-24 s on 2 cores here, about what vLLM's own single dynamic compile
costs), so by default the plan is batch 1 only, the latency-critical step (and the dynamic
graph starts at 2, since export specialises sizes 0 and 1). On CUDA the counts are vLLM's
cudagraph capture sizes, which it pads to. ``WARMGRAPH_VLLM_SIZES=1,2,4,8`` sets the plan.
"""

from __future__ import annotations

import os
from typing import Any

from warmgraph.errors import WarmgraphError

DEFAULT_DECODE_SIZES = 1


def parse_sizes(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; WarmgraphError naming the fix for anything else."""
    try:
        sizes = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise WarmgraphError(f"WARMGRAPH_VLLM_SIZES={text!r} is not a list of token counts; "
                             "use positive integers separated by commas, e.g. 1,2,4,8")
    return sizes


def plan_sizes(vllm_config: Any, env: dict[str, str] | None = None) -> list[int]:
    """The token counts to build a graph for (see the module docstring); always includes 1."""
    env = os.environ if env is None else env
    max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
    if env.get("WARMGRAPH_VLLM_SIZES"):
        sizes = parse_sizes(env["WARMGRAPH_VLLM_SIZES"])
    elif vllm_config.compilation_config.cudagraph_capture_sizes:
        sizes = list(vllm_config.compilation_config.cudagraph_capture_sizes)
    else:
        sizes = list(range(1, min(vllm_config.scheduler_config.max_num_seqs, DEFAULT_DECODE_SIZES) + 1))
    return sorted({1, *(s for s in sizes if s <= max_tokens)})
