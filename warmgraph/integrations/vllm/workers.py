"""Cold compiles of vLLM's graphs in parallel: forked workers fill the graph cache, one key each.

AOTInductor compiles one graph on one core, and a cold start has several to compile (the planned
sizes and the dynamic graph). The workers are forked from the process vLLM is compiling in, so
they already hold vLLM's graph, its custom ops and the example tensors: a fresh interpreter
would spend 13-16 s importing vLLM first (measured here). Each worker builds one graph through
the same ``GraphBuilder`` (per-key lock, look again, compile, store), reports each graph on a
pipe and exits; the parent then loads every graph from the cache. A worker that fails leaves
complete cache entries or none (the cache writes atomically), and the parent compiles whatever
is still missing itself; if the parent fails, it kills its workers first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
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


def _all_cores() -> int:
    return os.cpu_count() or 1


def default_workers(env: dict[str, str] | None = None) -> int:
    """``$WARMGRAPH_VLLM_WORKERS``, else the machine's cores: not this process's affinity, since
    vLLM's CPU worker binds itself to its serving cores (one core on a 2-core machine)."""
    env = os.environ if env is None else env
    text = env.get("WARMGRAPH_VLLM_WORKERS", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            from warmgraph.errors import WarmgraphError

            raise WarmgraphError(f"WARMGRAPH_VLLM_WORKERS={text!r} is not a count; use a positive integer, e.g. 2")
        return int(text)
    return _all_cores()


def _child(jobs: list[tuple[int, Job]], write_fd: int) -> None:
    """A forked worker: build ``jobs`` (index, job) one after another, report each on the pipe by
    its index, never return."""
    code = 1
    try:
        if hasattr(os, "sched_setaffinity"):
            # A fork keeps the parent's binding (vLLM's worker pins itself to its serving cores): a
            # compile worker may use every core, else all workers would share the parent's one.
            with contextlib.suppress(OSError):  # a cpuset that does not allow it: keep the inherited cores
                os.sched_setaffinity(0, range(_all_cores()))
        with os.fdopen(write_fd, "w") as pipe:
            for index, job in jobs:
                result = job.builder.build(job.bucket, job.example)
                pipe.write(json.dumps([index, result.source, result.seconds]) + "\n")
                pipe.flush()
        code = 0
    except BaseException:  # a worker never unwinds into its parent's code (it is a copy of vLLM)
        log.exception("warmgraph: a compile worker failed")
    finally:
        os._exit(code)


def compile_missing(jobs: Sequence[Job], workers: int,
                    on_done: Callable[[int, str, float], None] | None = None) -> int:
    """Build the jobs whose graphs the cache lacks in up to ``workers`` forked processes.

    ``on_done(index, source, seconds)`` is called as each finishes, ``index`` into ``jobs``.
    Returns how many graphs the workers compiled. Does nothing (returns 0) when fewer than two
    are missing, when one worker is asked for, or where there is no ``fork``: the caller's own
    builds then compile them one after another. Plain ``os.fork``, not ``multiprocessing``:
    vLLM runs the model in a daemonic process, which multiprocessing forbids to have children.
    """
    missing = [(i, job) for i, job in enumerate(jobs) if not job.builder.cached(job.bucket, job.example)]
    workers = min(workers, len(missing))
    if workers < 2 or not hasattr(os, "fork"):
        return 0
    children = []
    for w in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(missing[w::workers], write_fd)
        os.close(write_fd)
        children.append((pid, read_fd))
    compiled = 0
    running = {pid for pid, _ in children}
    unread = {fd for _, fd in children}
    try:
        for pid, read_fd in children:
            unread.discard(read_fd)
            with os.fdopen(read_fd) as pipe:
                for line in pipe:
                    index, source, seconds = json.loads(line)
                    compiled += source == "compiled"
                    if on_done is not None:
                        on_done(index, source, seconds)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            running.discard(pid)
            if code != 0:  # what it finished is in the cache; the caller compiles the rest
                log.warning("warmgraph: a compile worker exited with code %d; compiling what it left here", code)
    finally:  # on any error here (or Ctrl-C) no worker is left compiling, or unwaited
        for pid in running:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for read_fd in unread:
            os.close(read_fd)
    return compiled
