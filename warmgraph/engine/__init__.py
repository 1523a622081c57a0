"""The reference engine: a real model through warmgraph's cached graphs, with continuous batching."""

from warmgraph.engine.config import EngineConfig, SamplingParams, serving_limits
from warmgraph.engine.engine import Engine

__all__ = ["Engine", "EngineConfig", "SamplingParams", "serving_limits"]
