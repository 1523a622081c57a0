"""The callable warmgraph's backend gives vLLM: per-size AOTInductor graphs and one dynamic graph.

vLLM calls it with the same arguments as its graph, at the real token count of each step (the
CPU runner does not pad, and attention metadata is sized to the real count, so nothing can be
padded here). A count with its own graph runs it (``replays``); any other count runs the
dynamic-shape graph (``dynamic_calls``); a count outside the dynamic graph's range runs vLLM's
graph eagerly (``eager_fallbacks``). All three are counted, the last two logged once per count.

Graphs are built on the first call, from its real arguments: loaded from warmgraph's graph
cache, or compiled (then stored) on a miss, through the runtime's ``GraphBuilder``, so per-key
locks keep concurrent processes from compiling a key twice and a damaged entry is recompiled.

It is a torch ``SerializableCallable``: vLLM's AOT path (on by default with torch >= 2.10)
saves it in its own artifact, and a warm start loads it without running Dynamo. The artifact
holds vLLM's graph (pickled with vLLM's own graph pickler), the input layout and the plan, never
compiled code: the graphs stay in warmgraph's cache, where ``warmgraph cache`` sees them.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch._dynamo.aot_compile_types import SerializableCallable

from warmgraph.compiler.aot import AOTBackend
from warmgraph.compiler.fingerprint import Fingerprint
from warmgraph.graph_cache.store import GraphCache
from warmgraph.integrations.vllm.graph import Slot, VllmGraph
from warmgraph.integrations.vllm.layer_names import restore_twins
from warmgraph.integrations.vllm.workers import Job, compile_missing, default_workers
from warmgraph.runtime.builder import BuildResult, GraphBuilder
from warmgraph.runtime.counters import Counters

log = logging.getLogger("vllm.warmgraph")  # under "vllm": printed by vLLM's own log handler
STATE_VERSION = 2
# vLLM settings about its own caching and process layout: they never change the graph's code.
_ENV_IGNORED = frozenset({
    "VLLM_USE_AOT_COMPILE", "VLLM_USE_BYTECODE_HOOK", "VLLM_USE_MEGA_AOT_ARTIFACT", "VLLM_USE_STANDALONE_COMPILE",
    "VLLM_COMPILE_CACHE_SAVE_FORMAT", "VLLM_DISABLE_COMPILE_CACHE", "VLLM_FORCE_AOT_LOAD",
    "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_LOGGING_LEVEL", "VLLM_CONFIGURE_LOGGING",
})
_LIVE: weakref.WeakSet[WarmgraphFunction] = weakref.WeakSet()
_report_failed = False
# For callers in this process (vLLM's in-process engine): called as graphs become ready, with
# (done, total, bucket, source, seconds). The warmup driver reads the report file instead.
progress_hook: Callable[[int, int, tuple[int, ...], str, float], None] | None = None


def live_functions() -> list[WarmgraphFunction]:
    """The functions alive in this process (tests with vLLM's in-process engine read their counters)."""
    return list(_LIVE)


def vllm_factors() -> dict[str, Any]:
    """vLLM's version and the ``VLLM_*`` settings it hashes into its own compile cache key, minus
    those about caching and processes: what changes the graph vLLM traces."""
    import vllm
    from vllm import envs

    env = {k: repr(v) for k, v in sorted(envs.compile_factors().items()) if k not in _ENV_IGNORED}
    return {"vllm": vllm.__version__, "vllm_env": env}


class WarmgraphFunction(SerializableCallable):
    """Dispatches vLLM's calls on their token count to warmgraph's graphs (see the module docstring)."""

    def __init__(self, graph: VllmGraph, sizes: Sequence[int], max_tokens: int,
                 inductor_configs: dict[str, Any], extra_factors: dict[str, Any]) -> None:
        self.graph = graph
        self.sizes = sorted({int(s) for s in sizes if 1 <= int(s) <= max_tokens})
        self.max_tokens = int(max_tokens)
        self.inductor_configs = dict(inductor_configs)
        self.extra_factors = dict(extra_factors)
        self.counters = Counters()
        self.counters["dynamic_calls"] = 0
        self.builds: list[BuildResult] = []
        self.build_seconds = 0.0
        self.worker_compiles = 0
        self._graphs: dict[int, Any] = {}
        self._dynamic: Any = None
        self._built = False
        self._logged: set[int] = set()
        self._eager_logged: set[int] = set()
        _LIVE.add(self)

    # -- calls -------------------------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        if not self._built:
            self.build(args)
        tokens = self.graph.tokens(args)
        graph = self._graphs.get(tokens)
        if graph is not None:
            self.counters["replays"] += 1
            return graph(*self.graph.tensors(args))
        if self._dynamic is not None and 1 <= tokens <= self.max_tokens:
            self.counters["dynamic_calls"] += 1
            self._log_once(tokens, "warmgraph: %d tokens has no graph of its own; the dynamic graph serves it")
            return self._dynamic(*self.graph.tensors(args))
        self.counters["eager_fallbacks"] += 1
        if tokens not in self._eager_logged:  # never expected: each count is worth a warning
            self._eager_logged.add(tokens)
            log.warning("warmgraph: %d tokens is outside every graph; vLLM's graph runs eagerly", tokens)
        return self.graph.gm(*args)

    def _log_once(self, tokens: int, message: str) -> None:
        # The first count the dynamic graph serves is logged for everyone to see; later ones
        # (every prompt length is one) only at debug level: the counters keep the totals.
        if tokens not in self._logged:
            (log.debug if self._logged else log.info)(message, tokens)
            self._logged.add(tokens)

    # -- building ----------------------------------------------------------------------------

    def _builder(self, dynamic: bool, cache: GraphCache | None) -> GraphBuilder:
        factors = {**self.graph.factors, **self.extra_factors, "dynamic": dynamic}
        module = self.graph.module(dynamic, self.max_tokens)
        backend = AOTBackend(self.inductor_configs)
        return GraphBuilder(module, backend, cache, self.counters, fingerprint=Fingerprint(factors))

    def build(self, args: Sequence[Any]) -> None:
        """Load or compile every planned size and the dynamic graph, from a real call's arguments.

        Missing graphs are compiled by forked workers first (``workers.compile_missing``), then
        everything is loaded here; ``compiles`` counts the workers' compiles too.
        """
        t0 = time.perf_counter()
        cache = GraphCache()
        static, dynamic = self._builder(False, cache), self._builder(True, cache)
        with torch.inference_mode(False), torch.no_grad():
            jobs = [Job(static, (n,), self.graph.example(args, n)) for n in self.sizes]
            jobs.append(Job(dynamic, (1, self.max_tokens), self.graph.example(args, self.max_tokens)))
            reported: set[tuple[int, ...]] = set()

            def on_done(job: Job, source: str, seconds: float) -> None:
                reported.add(job.bucket)
                _progress(len(reported), len(jobs), job.bucket, source, seconds)

            compiled = compile_missing(jobs, default_workers(), on_done)
            for counter in ("compiles", "cache_misses", "cache_writes"):
                self.counters[counter] += compiled
            for job in jobs:
                result = job.builder.build(job.bucket, job.example)
                self.builds.append(result)
                if len(job.bucket) == 1:
                    self._graphs[job.bucket[0]] = result.graph
                else:
                    self._dynamic = result.graph
                if job.bucket not in reported:  # (the workers reported theirs as they finished)
                    on_done(job, result.source, result.seconds)
        self.worker_compiles = compiled
        self._built = True
        self.build_seconds = time.perf_counter() - t0
        log.info("warmgraph: %d graphs for vLLM (sizes %s, and a dynamic one for 1-%d tokens): %d compiled "
                 "(%d by workers), %d loaded, %.1f s", len(self.builds), self.sizes, self.max_tokens,
                 self.counters["compiles"], compiled, self.counters["cache_hits"], self.build_seconds)
        _report(self)

    def finalize_loading(self, vllm_config: Any) -> None:
        """Called by vLLM after loading its artifact: the plan is made again from this start's
        config and environment (``WARMGRAPH_*`` is not in vLLM's key, so the artifact's plan may be
        stale); the graphs load on the first call."""
        from warmgraph.integrations.vllm.plan import dynamic_max, plan_sizes

        self.max_tokens = dynamic_max(vllm_config.scheduler_config.max_num_batched_tokens)
        self.sizes = [s for s in plan_sizes(vllm_config) if s <= self.max_tokens]

    # -- serialization -----------------------------------------------------------------------

    @classmethod
    def serialize_compile_artifacts(cls, fn: WarmgraphFunction) -> bytes:
        """vLLM's graph (pickled by vLLM's own graph pickler), its slots, factors and the plan."""
        from vllm.compilation.caching import VllmSerializableFunction

        for node in fn.graph.gm.graph.nodes:
            # Nothing reads the metadata again (export re-traces the graph, the slots and factors
            # are kept apart), and with it a 30-layer graph took seconds more to pickle and load.
            node.meta.clear()
        state = {
            "version": STATE_VERSION,
            "gm": VllmSerializableFunction.serialize_graph_module(fn.graph.gm),
            "slots": fn.graph.slots,
            "twinned_ops": fn.graph.twinned_ops,
            "factors": fn.graph.factors,
            "sizes": fn.sizes,
            "max_tokens": fn.max_tokens,
            "inductor_configs": fn.inductor_configs,
            "extra_factors": fn.extra_factors,
        }
        return pickle.dumps(state)

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> WarmgraphFunction:
        """The function ``serialize_compile_artifacts`` saved; ValueError for another version."""
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
        from vllm.compilation.caching import VllmSerializableFunction

        t0 = time.perf_counter()
        state = pickle.loads(data)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"warmgraph artifact version {state.get('version')} is not {STATE_VERSION}")
        restore_twins(state["twinned_ops"])  # the graph calls them: they must exist before it loads
        gm = VllmSerializableFunction.deserialize_graph_module(state["gm"], FakeTensorMode(shape_env=ShapeEnv()))
        slots: list[Slot] = state["slots"]
        graph = VllmGraph.restore(gm, slots, state["factors"], state["twinned_ops"])
        fn = cls(graph, state["sizes"], state["max_tokens"], state["inductor_configs"], state["extra_factors"])
        log.info("warmgraph: vLLM's graph (%d nodes) restored from its artifact in %.2f s", len(gm.graph.nodes),
                 time.perf_counter() - t0)
        return fn


def _progress(done: int, total: int, bucket: tuple[int, ...], source: str, seconds: float) -> None:
    if progress_hook is not None:
        progress_hook(done, total, bucket, source, seconds)
    _emit({"event": "graph", "done": done, "total": total, "bucket": list(bucket), "source": source,
           "seconds": round(seconds, 3)})


def _report(fn: WarmgraphFunction) -> None:
    _emit({"event": "build", "sizes": fn.sizes, "max_tokens": fn.max_tokens,
           "build_seconds": round(fn.build_seconds, 3), "worker_compiles": fn.worker_compiles,
           "counters": dict(fn.counters),
           "graphs": [{"bucket": list(b.bucket), "source": b.source, "seconds": round(b.seconds, 3),
                       "bytes": b.graph_bytes} for b in fn.builds]})


def _emit(record: dict[str, Any]) -> None:
    """Append one JSON line to ``$WARMGRAPH_VLLM_REPORT`` when it is set: vLLM runs the model in
    another process, and this is how the warmup driver (and scripts) follow it."""
    global _report_failed
    path = os.environ.get("WARMGRAPH_VLLM_REPORT")
    if not path or _report_failed:
        return
    import json

    try:
        with open(path, "a") as f:  # one short write per line: appends from several processes stay whole
            f.write(json.dumps({"pid": os.getpid(), **record}) + "\n")
    except OSError as exc:  # a report must never stop vLLM from serving
        _report_failed = True
        log.warning("warmgraph: cannot write WARMGRAPH_VLLM_REPORT=%s (%s); no more reports", path, exc)
