"""What a runner did, as numbers tests and dashboards can assert on (never timings)."""

from __future__ import annotations

KEYS = (
    "compiles",  # graphs built without help from the graph cache (compiled, or captured from scratch)
    "captures",  # device graphs captured (capture backends re-capture at every start)
    "late_builds",  # buckets built after warmup sealed the runner (only the 'compile' miss policy does)
    "replays",  # calls served by a compiled graph
    "eager_fallbacks",  # calls no bucket covered, run uncompiled (miss policy eager)
    "recompiles",  # compiles a graph needed after warmup (inductor guard failures)
    "cache_hits",  # graphs loaded from the graph cache
    "cache_misses",  # graphs the cache did not have
    "cache_writes",  # graphs stored in the graph cache
    "bytes_loaded",  # bytes read from the graph cache
    "padded_elements",  # input elements added by padding, summed over calls
)


class Counters(dict[str, int]):
    """A dict with every counter present from the start, all zero."""

    def __init__(self) -> None:
        super().__init__(dict.fromkeys(KEYS, 0))

    def reset(self) -> None:
        for key in self:
            self[key] = 0
