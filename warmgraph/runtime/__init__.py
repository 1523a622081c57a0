"""Runtime: run every call through the right bucket's graph, and count what happened."""

from warmgraph.runtime.counters import Counters
from warmgraph.runtime.dims import Dims
from warmgraph.runtime.report import WarmupReport
from warmgraph.runtime.runner import GraphRunner, compile

__all__ = ["Counters", "Dims", "GraphRunner", "WarmupReport", "compile"]
