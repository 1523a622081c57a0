"""The graph cache: compiled graphs on disk, keyed by everything that makes them valid.

``graph_cache`` stores bytes and files; it does not know how a backend serializes.
"""

from warmgraph.graph_cache.key import CacheKey, make_key
from warmgraph.graph_cache.store import Entry, GraphCache, default_root

__all__ = ["CacheKey", "Entry", "GraphCache", "default_root", "make_key"]
