"""Cold compiles of vLLM's graphs in parallel: forked workers fill the graph cache, one key each.

AOTInductor compiles one graph on one core, and a cold start has several to compile (the planned
sizes and the dynamic graph). The workers are forked from the process vLLM is compiling in, so
they already hold vLLM's graph, its custom ops and the example tensors: a fresh interpreter
would spend 13-16 s importing vLLM first (measured here). Each worker builds one graph through
the same ``GraphBuilder`` (per-key lock, look again, compile, store) and exits; the parent then
loads every graph from the cache. A worker that fails costs nothing but time: the parent
compiles whatever is still missing itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from warmgraph.runtime.builder import GraphBuilder

log = logging.getLogger("vllm.warmgraph")  # under "vllm": printed by vLLM's own log handler


@dataclass(frozen=True)
class Job:
    """One graph to build: a builder, its bucket and the example inputs to build with."""

    builder: GraphBuilder
    bucket: tuple[int, ...]
    example: Sequence[Any]


_JOBS: list[Job] = []  # read by forked workers (inherited memory, never pickled)


def default_workers(env: dict[str, str] | None = None) -> int:
    """``$WARMGRAPH_VLLM_WORKERS``, else the cores this process may use."""
    env = os.environ if env is None else env
    text = env.get("WARMGRAPH_VLLM_WORKERS", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            from warmgraph.errors import WarmgraphError

            raise WarmgraphError(f"WARMGRAPH_VLLM_WORKERS={text!r} is not a count; use a positive integer, e.g. 2")
        return int(text)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run(index: int) -> tuple[int, str, float]:
    job = _JOBS[index]
    result = job.builder.build(job.bucket, job.example)
    return index, result.source, result.seconds


def compile_missing(jobs: Sequence[Job], workers: int,
                    on_done: Callable[[Job, str, float], None] | None = None) -> int:
    """Build the jobs whose graphs the cache lacks in up to ``workers`` forked processes.

    Returns how many graphs the workers compiled. Does nothing (returns 0) when fewer than two
    are missing, when one worker is asked for, or where ``fork`` is not available: the caller's
    own builds then compile them one after another.
    """
    missing = [job for job in jobs if not job.builder.cached(job.bucket, job.example)]
    workers = min(workers, len(missing))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    _JOBS[:] = missing
    compiled = 0
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for index, source, seconds in pool.imap_unordered(_run, range(len(missing))):
                compiled += source == "compiled"
                if on_done is not None:
                    on_done(missing[index], source, seconds)
    except Exception as exc:  # a worker that dies leaves complete entries or none: build the rest here
        log.warning("warmgraph: parallel compile stopped (%s); compiling the rest in this process", exc)
    finally:
        _JOBS.clear()
    return compiled
