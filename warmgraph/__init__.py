"""warmgraph: choose bucket shapes, compile one graph per bucket, keep graphs on disk, run through them.

``import warmgraph`` stays light: it never imports torch, torch_npu, habana_frameworks or
vllm. ``warmgraph.compile``, ``GraphRunner`` and ``Dims`` import torch on first use.
"""

from __future__ import annotations

from typing import Any

from warmgraph._version import __version__
from warmgraph.bucketing import BucketSet, MissPolicy
from warmgraph.errors import WarmgraphError

__all__ = ["BucketSet", "Dims", "GraphRunner", "MissPolicy", "WarmgraphError", "__version__", "compile"]

_LAZY = {"compile", "GraphRunner", "Dims"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from warmgraph import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'warmgraph' has no attribute {name!r}")
