"""The callable warmgraph's backend gives vLLM: AOTInductor graphs per piece, per size and dynamic.

vLLM's whole graph arrives cut at its attention ops (``regions``); every distinct piece gets one
AOTInductor graph per planned token count and one dynamic-shape graph. vLLM calls the function
with the same arguments as its graph, at the real token count of each step (the CPU runner does
not pad, and attention metadata is sized to the real count, so nothing can be padded here). A
count with its own graphs runs them (``replays``); any other count runs the dynamic-shape
graphs (``dynamic_calls``); a count outside the dynamic graphs' range runs vLLM's pieces
eagerly (``eager_fallbacks``). All three are counted per call, the last two logged once per count.

vLLM's memory-profile run is answered with zeros when it can measure nothing (``profile_run``:
``profile_runs_skipped``). Graphs are built on the first call: loaded from warmgraph's graph cache, or compiled (then
stored) on a miss, through the runtime's ``GraphBuilder``, so per-key locks keep concurrent
processes from compiling a key twice and a damaged entry is recompiled. The inputs they are
compiled with are blank tensors of the traced specs (``VllmGraph.blank``).

It is a torch ``SerializableCallable``: vLLM's AOT path (on by default with torch >= 2.10)
saves it in its own artifact, and a warm start loads it without running Dynamo. The artifact
holds vLLM's graph cut in pieces (pickled with vLLM's own graph pickler), the input layouts and
the plan, never compiled code: the graphs stay in warmgraph's cache, where ``warmgraph cache``
sees them.
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
from warmgraph.errors import WarmgraphError
from warmgraph.graph_cache.store import GraphCache
from warmgraph.integrations.vllm import stream
from warmgraph.integrations.vllm.graph import VllmGraph
from warmgraph.integrations.vllm.layer_names import restore_twins
from warmgraph.integrations.vllm.profile_run import is_memory_profile_run
from warmgraph.integrations.vllm.regions import DYNAMIC, EAGER, Region, Regions
from warmgraph.integrations.vllm.weights import StreamSkipped, Weights, recover_all
from warmgraph.integrations.vllm.workers import Job, compile_missing, default_workers
from warmgraph.runtime.builder import BuildResult, GraphBuilder
from warmgraph.runtime.counters import Counters

log = logging.getLogger("vllm.warmgraph")  # under "vllm": printed by vLLM's own log handler
STATE_VERSION = 4  # 3: the graph cut in pieces (regions.py); 4: its outputs described (profile_run.py)
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

    def __init__(self, regions: Regions, sizes: Sequence[int], max_tokens: int,
                 inductor_configs: dict[str, Any], extra_factors: dict[str, Any], streams: bool = False,
                 skip_profile: bool = False) -> None:
        self.regions = regions
        # whether vLLM's memory-profile run is answered with zeros (``profile_run``)
        self.skip_profile = bool(skip_profile)
        self.sizes = sorted({int(s) for s in sizes if 1 <= int(s) <= max_tokens})
        self.max_tokens = int(max_tokens)
        self.streams = bool(streams)  # whether to try streaming one-token calls (``stream``)
        self.streaming = False  # set by build: whether they do
        self.weights = Weights()
        self.inductor_configs = dict(inductor_configs)
        self.extra_factors = dict(extra_factors)
        self.counters = Counters()
        self.counters["dynamic_calls"] = 0
        self.counters["stale_weights"] = 0
        self.counters["profile_runs_skipped"] = 0
        self.builds: list[BuildResult] = []
        self.build_pieces: list[int] = []  # for each build, the index of its distinct piece
        self.build_seconds = 0.0
        self.worker_compiles = 0
        self._built = False
        self._logged: set[int] = set()
        self._eager_logged: set[int] = set()
        regions.install()
        _LIVE.add(self)

    # -- calls -------------------------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        if not self._built:
            self.build(args)
        tokens = self.regions.tokens(args)
        if self.skip_profile and is_memory_profile_run():
            if self.regions.outputs is None:
                log.info("warmgraph: vLLM's graph has outputs warmgraph cannot describe; its memory-profile run "
                         "is computed")
            else:
                self.counters["profile_runs_skipped"] += 1
                log.info("warmgraph: vLLM's memory-profile run (%d tokens) answered with zeros: the graphs are "
                         "built and the KV cache size is explicit, so it has nothing left to do "
                         "(WARMGRAPH_VLLM_SKIP_PROFILE=0 runs it)", tokens)
                _emit({"event": "profile_run_skipped", "tokens": tokens})
                return self.regions.outputs.blank(tokens)
        if tokens in self.sizes or (tokens == 1 and self.streaming):
            self.counters["replays"] += 1
            self.regions.choice = tokens
        elif 1 <= tokens <= self.max_tokens:
            self.counters["dynamic_calls"] += 1
            self._log_once(tokens, "warmgraph: %d tokens has no graph of its own; the dynamic graphs serve it")
            self.regions.choice = DYNAMIC
        else:
            self.counters["eager_fallbacks"] += 1
            if tokens not in self._eager_logged:  # never expected: each count is worth a warning
                self._eager_logged.add(tokens)
                log.warning("warmgraph: %d tokens is outside every graph; vLLM's graph runs eagerly", tokens)
            self.regions.choice = EAGER
        result = self.regions(*args)
        if self.regions.stale_weights != self.counters["stale_weights"]:
            if not self.counters["stale_weights"]:
                log.warning("warmgraph: vLLM's layers have new oneDNN handles (reloaded weights?); one-token calls "
                            "run the dynamic graphs from now on")
            self.counters["stale_weights"] = self.regions.stale_weights
        return result

    def _log_once(self, tokens: int, message: str) -> None:
        # The first count the dynamic graph serves is logged for everyone to see; later ones
        # (every prompt length is one) only at debug level: the counters keep the totals.
        if tokens not in self._logged:
            (log.debug if self._logged else log.info)(message, tokens)
            self._logged.add(tokens)

    # -- building ----------------------------------------------------------------------------

    def _builder(self, graph: VllmGraph, dynamic: bool, max_tokens: int, cache: GraphCache | None) -> GraphBuilder:
        factors = {**graph.factors, **self.extra_factors, "dynamic": dynamic}
        backend = AOTBackend(self.inductor_configs)
        return GraphBuilder(graph.module(dynamic, max_tokens), backend, cache, self.counters,
                            fingerprint=Fingerprint(factors))

    def _recover_weights(self, args: Sequence[Any], cache: GraphCache) -> None:
        """Decide whether one-token calls stream (``stream``) and, if so, give every piece that
        has a streamed form that form and its weights (``weights``: from ``cache``, or recovered
        from the handles among ``args``, the whole graph's call, and stored there). Anything
        that stops it is one warning; nothing streams then."""
        if not self.streams:
            return
        try:
            forms = [(region, stream.streamed(region.graph)) for region in self.regions.regions]
            forms = [(region, form) for region, form in forms if form is not None]
            if not forms:
                return
            calls = [(self.regions.piece_inputs(args, name), form[1]) for region, form in forms
                     for name in region.names]
            recovered = iter(recover_all(self.weights, calls, cache))
        except (StreamSkipped, WarmgraphError, RuntimeError) as exc:  # (RuntimeError: FX, oneDNN)
            log.warning("warmgraph: one-token calls keep vLLM's oneDNN products: %s (WARMGRAPH_VLLM_STREAM=0 skips "
                        "this)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        calls_iter = iter(calls)
        for region, (graph, linears) in forms:
            region.streamed, region.linears = graph, linears
            for name in region.names:
                inputs, _ = next(calls_iter)
                region.weights[name] = next(recovered)
                region.handles[name] = [inputs[lin.handle_input] for lin in linears]
        self.streaming = True
        how = ("recovered from vLLM's oneDNN handles" if self.weights.source != "cache"
               else "loaded from warmgraph's cache and checked against vLLM's oneDNN handles")
        log.info("warmgraph: one-token calls stream the layer weights: %.0f MB %s in %.1f s",
                 self.weights.total_bytes / 1e6, how, self.weights.seconds)
        if self.weights.store_error:
            log.warning("warmgraph: the recovered weights were not cached, the next start recovers them again: %s",
                        self.weights.store_error)

    def build(self, args: Sequence[Any] = ()) -> None:
        """Load or compile every distinct piece's graphs: one per planned size and one dynamic;
        with streaming (``stream``) size 1 is planned too and its graph is the streamed form.
        ``args`` is the first call's (its oneDNN handles give the weights to stream); without
        them nothing streams.

        Missing graphs are compiled by forked workers first (``workers.compile_missing``), then
        everything is loaded here; ``compiles`` counts the workers' compiles too.
        """
        t0 = time.perf_counter()
        cache = GraphCache()
        jobs: list[Job] = []
        owners: list[Region] = []
        places: list[int] = []  # where each job's graph goes: a size, or DYNAMIC
        with torch.inference_mode(False), torch.no_grad():
            if args:
                self._recover_weights(args, cache)
            for index, region in enumerate(self.regions.regions):
                static, dynamic = (self._builder(region.graph, False, self.max_tokens, cache),
                                   self._builder(region.graph, True, self.max_tokens, cache))
                for n in sorted(set(self.sizes) | ({1} if self.streaming else set())):
                    if n == 1 and self.streaming and region.streamed is not None:
                        builder = self._builder(region.streamed, False, self.max_tokens, cache)
                        jobs.append(Job(builder, (n,), region.streamed.blank(n)))
                        region.streamed_sizes.add(n)
                    else:
                        jobs.append(Job(static, (n,), region.graph.blank(n)))
                    places.append(n)
                jobs.append(Job(dynamic, (1, self.max_tokens), region.graph.blank(self.max_tokens)))
                places.append(DYNAMIC)
                owners.extend([region] * (len(jobs) - len(owners)))
                self.build_pieces.extend([index] * (len(jobs) - len(self.build_pieces)))
            reported: set[int] = set()

            def on_done(index: int, source: str, seconds: float) -> None:
                reported.add(index)
                _progress(len(reported), len(jobs), jobs[index].bucket, source, seconds)

            compiled = compile_missing(jobs, default_workers(), on_done)
            for counter in ("compiles", "cache_misses", "cache_writes"):
                self.counters[counter] += compiled
            for index, (job, region, place) in enumerate(zip(jobs, owners, places)):
                result = job.builder.build(job.bucket, job.example)
                self.builds.append(result)
                if place == DYNAMIC:
                    region.dynamic = result.graph
                else:
                    region.graphs[place] = result.graph
                if index not in reported:  # (the workers reported theirs as they finished)
                    on_done(index, result.source, result.seconds)
        self.worker_compiles = compiled
        self._built = True
        self.build_seconds = time.perf_counter() - t0
        pieces = sum(len(r.names) for r in self.regions.regions)
        streamed = ", size 1 streamed" if self.streaming else ""
        sizes = sorted(set(self.sizes) | ({1} if self.streaming else set()))
        log.info("warmgraph: %d graphs for vLLM's %d pieces (%d distinct; sizes %s, a dynamic one for 1-%d tokens%s): "
                 "%d compiled (%d by workers), %d loaded, %.1f s", len(self.builds), pieces,
                 len(self.regions.regions), sizes, self.max_tokens, streamed, self.counters["compiles"], compiled,
                 self.counters["cache_hits"], self.build_seconds)
        _report(self)

    def finalize_loading(self, vllm_config: Any) -> None:
        """Called by vLLM after loading its artifact: the plan is made again from this start's
        config and environment (``WARMGRAPH_*`` is not in vLLM's key, so the artifact's plan may be
        stale); the graphs load on the first call."""
        from warmgraph.integrations.vllm.plan import dynamic_max, plan_sizes, stream_one
        from warmgraph.integrations.vllm.profile_run import skips_profile

        self.max_tokens = dynamic_max(vllm_config.scheduler_config.max_num_batched_tokens)
        self.sizes = [s for s in plan_sizes(vllm_config) if s <= self.max_tokens]
        self.streams = stream_one()
        self.skip_profile = skips_profile(vllm_config)

    # -- serialization -----------------------------------------------------------------------

    @classmethod
    def serialize_compile_artifacts(cls, fn: WarmgraphFunction) -> bytes:
        """vLLM's graph cut in pieces (pickled by vLLM's own graph pickler), each distinct piece's
        slots and factors, and the plan."""
        from vllm.compilation.caching import VllmSerializableFunction

        split_gm = fn.regions.split_gm
        for module in split_gm.modules():
            if isinstance(module, torch.fx.GraphModule):
                for node in module.graph.nodes:
                    # Nothing reads the metadata again (export re-traces each piece, the slots and
                    # factors are kept apart), and with it a 30-layer graph took seconds more to
                    # pickle and load.
                    node.meta.clear()
        shadowed = {name: split_gm.__dict__.pop(name) for r in fn.regions.regions for name in r.names}
        try:
            gm_bytes = VllmSerializableFunction.serialize_graph_module(split_gm)
        finally:
            split_gm.__dict__.update(shadowed)
        state = {
            "version": STATE_VERSION,
            "split_gm": gm_bytes,
            "source": fn.regions.source,
            "regions": [{"names": r.names, "slots": r.graph.slots, "factors": r.graph.factors,
                         "twinned_ops": r.graph.twinned_ops} for r in fn.regions.regions],
            "sizes": fn.sizes,
            "max_tokens": fn.max_tokens,
            "streams": fn.streams,
            "outputs": fn.regions.outputs,
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
        for saved in state["regions"]:
            restore_twins(saved["twinned_ops"])  # the pieces call them: they must exist before they load
        split_gm = VllmSerializableFunction.deserialize_graph_module(state["split_gm"],
                                                                     FakeTensorMode(shape_env=ShapeEnv()))
        for module in split_gm.modules():  # vLLM cuts with lazy graph modules: no forward until recompiled
            if isinstance(module, torch.fx.GraphModule):
                module.recompile()
        regions = []
        for saved in state["regions"]:
            piece = split_gm._modules[saved["names"][0]]
            graph = VllmGraph.restore(piece, saved["slots"], saved["factors"], saved["twinned_ops"])
            regions.append(Region(graph, list(saved["names"])))
        fn = cls(Regions(split_gm, regions, tuple(state["source"]), state["outputs"]), state["sizes"],
                 state["max_tokens"], state["inductor_configs"], state["extra_factors"], state["streams"])
        nodes = sum(len(m.graph.nodes) for m in split_gm.modules() if isinstance(m, torch.fx.GraphModule))
        log.info("warmgraph: vLLM's graph (%d nodes in %d pieces) restored from its artifact in %.2f s", nodes,
                 len(split_gm._modules), time.perf_counter() - t0)
        return fn


def _progress(done: int, total: int, bucket: tuple[int, ...], source: str, seconds: float) -> None:
    if progress_hook is not None:
        progress_hook(done, total, bucket, source, seconds)
    _emit({"event": "graph", "done": done, "total": total, "bucket": list(bucket), "source": source,
           "seconds": round(seconds, 3)})


def _report(fn: WarmgraphFunction) -> None:
    _emit({"event": "build", "sizes": fn.sizes, "max_tokens": fn.max_tokens,
           "streaming": fn.streaming, "streamed_mb": round(fn.weights.total_bytes / 1e6, 1),
           "recover_seconds": round(fn.weights.seconds, 3), "weights_source": fn.weights.source,
           "pieces": [len(r.names) for r in fn.regions.regions],
           "build_seconds": round(fn.build_seconds, 3), "worker_compiles": fn.worker_compiles,
           "counters": dict(fn.counters),
           "graphs": [{"piece": piece, "bucket": list(b.bucket), "source": b.source, "seconds": round(b.seconds, 3),
                       "bytes": b.graph_bytes} for piece, b in zip(fn.build_pieces, fn.builds)]})


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
