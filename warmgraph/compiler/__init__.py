"""Compiler backends: turn a model step into one graph per bucket, behind one interface.

Heavy imports (torch._inductor, torch_npu, habana_frameworks, vllm) happen only when a
backend is chosen; ``import warmgraph`` never triggers them.
"""

from warmgraph.compiler.base import Backend, CompiledGraph
from warmgraph.compiler.registry import BACKENDS, detect_device, get_backend, resolve_auto

__all__ = ["BACKENDS", "Backend", "CompiledGraph", "detect_device", "get_backend", "resolve_auto"]
