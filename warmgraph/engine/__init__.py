"""The reference engine: a real model through warmgraph's cached graphs, with continuous batching.

``Engine`` imports torch on first use, so the CLI can read the engine's defaults (``config``)
without paying for it.
"""

from __future__ import annotations

from typing import Any

from warmgraph.engine.config import EngineConfig, SamplingParams, serving_limits

__all__ = ["Engine", "EngineConfig", "SamplingParams", "serving_limits"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from warmgraph.engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'warmgraph.engine' has no attribute {name!r}")
