"""vLLM's memory-profile run on a CPU, answered without computing it when it measures nothing.

Before it sizes the KV cache, vLLM runs the model once at its largest token count with no KV
cache and no attention metadata (``profile_run``: a "dummy run" whose output it discards). In a
compiled mode the CPU worker runs it as its "warming up model for the compilation" step; in
eager mode the CPU worker skips it when the KV cache size is explicit (``VLLM_CPU_KVCACHE_SPACE``,
``kv_cache_memory_bytes``), since then it neither compiles nor measures anything. Through
warmgraph the graphs are built on that first call, so what is left of the run is the arithmetic
of a 2048-token (or larger) forward pass whose result is thrown away: 6 s of a warm engine start
for SmolLM2-135M on one core, minutes for an 8B model on a CPU.

So on a CPU, when the KV cache size is explicit and the call is that run
(``is_memory_profile_run``: attention metadata absent and every attention layer's KV cache
still empty), the function builds its graphs as always and returns zeros of the traced output
shapes (``OutputSpec``) instead of running them. With an automatic KV size the run is what
measures the activations' memory, and it runs. On CUDA it always runs: there the profile run
also sizes workspaces (MoE kernels) and communication buffers that later steps rely on.
``WARMGRAPH_VLLM_SKIP_PROFILE=0`` always runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from warmgraph.integrations.vllm.plan import switch


@dataclass(frozen=True)
class OutputSpec:
    """The outputs of vLLM's graph for any token count: the pytree they form and each tensor's
    shape (``None`` where the token count goes), dtype and device."""

    treespec: str  # ``pytree.treespec_dumps`` of the outputs' structure
    leaves: tuple[tuple[tuple[int | None, ...], str, str], ...]  # (shape, dtype, device)

    def blank(self, tokens: int) -> Any:
        """Zeros shaped as the graph's outputs for ``tokens`` tokens (zeros, not garbage: vLLM
        runs its sampler on them)."""
        tensors = [torch.zeros([tokens if d is None else d for d in shape], dtype=getattr(torch, dtype),
                               device=device) for shape, dtype, device in self.leaves]
        return pytree.tree_unflatten(tensors, pytree.treespec_loads(self.treespec))


def output_spec(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], source: tuple[int, int]) -> OutputSpec | None:
    """The ``OutputSpec`` of ``gm`` (a graph vLLM handed its backend, metadata intact), whose
    token count is at ``source`` (``regions.token_source``); None when an output is not a tensor
    or has a size that depends on the token count other than as one whole dimension."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    index, dim = source
    token = _value(placeholders[index]) if index < len(placeholders) else None
    if token is None:
        token = example_inputs[index]
    if dim >= 0:
        token = token.shape[dim]
    if not isinstance(token, torch.SymInt):
        return None
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    nodes, spec = pytree.tree_flatten(output.args[0])
    leaves = []
    for node in nodes:
        value = _value(node) if isinstance(node, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor):
            return None
        shape: list[int | None] = []
        for size in value.shape:
            if isinstance(size, torch.SymInt):
                if str(size.node.expr) != str(token.node.expr):
                    return None
                shape.append(None)
            else:
                shape.append(int(size))
        leaves.append((tuple(shape), str(value.dtype).removeprefix("torch."), value.device.type))
    return OutputSpec(pytree.treespec_dumps(spec), tuple(leaves))


def _value(node: torch.fx.Node) -> Any:
    return node.meta.get("val", node.meta.get("example_value"))


def skips_profile(vllm_config: Any, env: dict[str, str] | None = None) -> bool:
    """Whether this configuration answers the memory-profile run with zeros: the model runs on
    a CPU, its KV cache size is explicit (as the CPU worker judges it), and
    ``WARMGRAPH_VLLM_SKIP_PROFILE`` is not 0. WarmgraphError for a value of that which is
    neither, whatever the configuration."""
    wanted = switch(env, "WARMGRAPH_VLLM_SKIP_PROFILE", "skip vLLM's memory-profile run on a CPU when the "
                    "KV cache size is explicit", "always run it")
    on_cpu = getattr(vllm_config.device_config, "device_type", None) == "cpu"
    explicit = getattr(vllm_config.cache_config, "kv_cache_memory_bytes", None) is not None
    return wanted and on_cpu and explicit


def is_memory_profile_run() -> bool:
    """Whether the current forward pass is vLLM's memory-profile run: a forward context with no
    attention metadata (vLLM's dummy runs; a real step always has it) while every layer that
    holds a KV cache holds an empty one (before ``initialize_kv_cache``, when no real step can
    run). False for a model with no such layer."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return False
    context = get_forward_context()
    if context.attn_metadata is not None:
        return False
    caches = [getattr(layer, "kv_cache", None) for layer in context.no_compile_layers.values()]
    caches = [c for c in caches if c is not None]
    return bool(caches) and all(_empty(c) for c in caches)


def _empty(cache: Any) -> bool:
    if isinstance(cache, torch.Tensor):
        return cache.numel() == 0
    if isinstance(cache, (list, tuple)):
        return all(_empty(c) for c in cache)
    return False
