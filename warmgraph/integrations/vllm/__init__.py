"""warmgraph inside vLLM: ``vllm serve`` and ``LLM()`` running warmgraph's cached graphs.

Use it as vLLM's compile backend in mode 2 (DYNAMO_TRACE_ONCE)::

    LLM(model, compilation_config={"mode": 2, "backend": "warmgraph.integrations.vllm.backend"})

or set ``WARMGRAPH_VLLM=1`` and let the general plugin (``integrations.vllm.plugin``) turn it on
for ``vllm serve MODEL`` as users type it. Nothing here imports vLLM until vLLM calls in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BACKEND = "warmgraph.integrations.vllm.backend"
PIECEWISE = "warmgraph.integrations.vllm.piecewise.WarmgraphCompiler"  # mode 3: the CompilerInterface
# Inductor settings for our graphs: vLLM's own (``enable_auto_functionalized_v2`` off, always) and
# on CPU those its CPU platform gives its Inductor graphs (platforms/cpu.py), so both are compiled
# alike. Fixed here rather than read from the config, so that LLM(compilation_config={"mode": 2,
# ...}) and WARMGRAPH_VLLM=1 (where the platform added them) build the same keys.
INDUCTOR_CONFIGS: dict[str, Any] = {"enable_auto_functionalized_v2": False}
CPU_INDUCTOR_CONFIGS: dict[str, Any] = {**INDUCTOR_CONFIGS, "dce": True, "size_asserts": False,
                                        "nan_asserts": False, "epilogue_fusion": True, "cpp.dynamic_threads": True}


def backend(gm: Any, example_inputs: Sequence[Any]) -> Any:
    """vLLM's compile backend: builds a ``WarmgraphFunction`` for vLLM's whole-model graph.

    Called once per process by Dynamo with vLLM's graph (weights as inputs, a SymInt token
    count). Cuts it at the attention ops (``regions``), plans the sizes from the current vLLM
    config (``plan.plan_sizes``); the graphs are loaded or compiled on the first call. Raises
    WarmgraphError for a graph it cannot serve.
    """
    from warmgraph.integrations.vllm.function import WarmgraphFunction, vllm_factors
    from warmgraph.integrations.vllm.plan import cut_graph, dynamic_max, plan_sizes, stream_one
    from warmgraph.integrations.vllm.profile_run import skips_profile
    from warmgraph.integrations.vllm.regions import Regions

    config = current_config()
    regions = Regions.split(gm, example_inputs, cut=cut_graph())
    on_cpu = all(a.device.type == "cpu" for a in example_inputs if hasattr(a, "device"))
    inductor = CPU_INDUCTOR_CONFIGS if on_cpu else INDUCTOR_CONFIGS
    max_tokens = dynamic_max(config.scheduler_config.max_num_batched_tokens)
    # Streaming replaces vLLM's CPU GEMM (``stream``): only where the graph runs on a CPU.
    streams = stream_one() and on_cpu
    return WarmgraphFunction(regions, plan_sizes(config), max_tokens, inductor, vllm_factors(), streams,
                             skips_profile(config))


def current_config() -> Any:
    """The vLLM config of the model being compiled.

    vLLM calls a mode-2 backend outside its ``set_current_vllm_config`` context (0.32), so when
    that is unset the config is read from the compiling model itself: the decorated model's
    ``__call__`` is on the stack, and its ``self.vllm_config`` is the config.
    """
    import sys

    from vllm.config import VllmConfig, get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    frame = sys._getframe(1)
    while config is None and frame is not None:
        owner = frame.f_locals.get("self")
        candidate = getattr(owner, "vllm_config", None)
        if isinstance(candidate, VllmConfig):
            config = candidate
        frame = frame.f_back
    if config is None:
        from warmgraph.errors import WarmgraphError

        raise WarmgraphError("warmgraph's vLLM backend was called outside a vLLM model; use it as "
                             f"compilation_config={{'mode': 2, 'backend': '{BACKEND}'}}")
    return config
