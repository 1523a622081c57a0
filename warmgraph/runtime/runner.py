"""GraphRunner: pad each call to its bucket, run that bucket's graph, slice the outputs back.

The dispatcher is the one place that decides: the real shape of a call comes from the
declared bucketed dimensions, ``BucketSet.lookup`` picks the bucket with the least padded
work, and the miss policy handles the rest (``eager`` runs the original function and
counts it, ``compile`` compiles the derived bucket and keeps it, ``error`` raises).

Capture backends read their inputs from static buffers allocated once per bucket: each
call copies its tensors into the front of them and fills the padding with the declared
fill values; the buffers never move after capture. Other backends get a freshly padded
tensor (one ``constant_pad_nd``), or the caller's own tensor when it already has the
bucket's shape.

Example::

    runner = warmgraph.compile(model, buckets=[1, 2, 4, 8], example_inputs=(torch.randn(8, 64),), backend="aot")
    runner.warmup()
    y = runner(torch.randn(3, 64))   # runs the bucket-4 graph, returns 3 rows
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from warmgraph.bucketing.buckets import Bucket, BucketSet, MissPolicy, work
from warmgraph.compiler.base import Backend, CompiledGraph
from warmgraph.compiler.registry import get_backend
from warmgraph.errors import CacheSecurityError, CacheWriteError, ConfigError
from warmgraph.graph_cache.key import CacheKey, device_info, fingerprint_graph, make_key
from warmgraph.graph_cache.store import GraphCache
from warmgraph.runtime.counters import Counters
from warmgraph.runtime.dims import Dims, Layout, real_shape, resolve_layout
from warmgraph.runtime.report import BucketWarmup, WarmupReport

log = logging.getLogger("warmgraph")


def _graph_cache(cache: bool | str | os.PathLike[str] | GraphCache | None) -> GraphCache | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        return GraphCache()
    if isinstance(cache, GraphCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return GraphCache(cache)
    raise ConfigError(f"cache= takes True, a directory path or a GraphCache, got {type(cache).__name__}")


def _bucket_set(buckets: BucketSet | Sequence[int] | Sequence[Sequence[int]]) -> BucketSet:
    if isinstance(buckets, BucketSet):
        return buckets
    try:
        return BucketSet(buckets)
    except TypeError:
        raise ConfigError("buckets= takes a list of ints, a list of tuples, or a BucketSet") from None


class GraphRunner:
    """One compiled graph per bucket behind a single callable. See the module docstring."""

    def __init__(
        self,
        fn: Callable[..., Any],
        buckets: BucketSet | Sequence[int] | Sequence[Sequence[int]],
        example_inputs: Sequence[Any],
        backend: str | Backend = "auto",
        *,
        device: str | None = None,
        dims: Dims | None = None,
        miss_policy: MissPolicy | str = MissPolicy.EAGER,
        copy_outputs: bool = True,
        cache: bool | str | os.PathLike[str] | GraphCache | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn must be an nn.Module or a callable of tensors, got {type(fn).__name__}")
        if not isinstance(example_inputs, (tuple, list)):
            raise ConfigError("example_inputs must be a tuple of one call's arguments, e.g. (torch.randn(8, 64),)")
        self.fn = fn
        self.buckets = _bucket_set(buckets)
        self.layout: Layout = resolve_layout(example_inputs, self.buckets, dims)
        self.backend: Backend = get_backend(backend, device)
        self.miss_policy = MissPolicy.parse(miss_policy)
        self.copy_outputs = copy_outputs
        self._counters = Counters()
        self._graphs: dict[Bucket, CompiledGraph] = {}
        self._static: dict[Bucket, list[Any]] = {}
        self._warned: set[tuple[int, ...]] = set()
        self._cache_warned: set[str] = set()
        self.cache = _graph_cache(cache)
        self._key_parts: dict[str, Any] | None = None

    @property
    def counters(self) -> Counters:
        """Counts since creation; ``recompiles`` sums what each graph saw after warmup."""
        self._counters["recompiles"] = sum(getattr(g, "recompiles", 0) for g in self._graphs.values())
        return self._counters

    # -- warmup ------------------------------------------------------------------------------

    def example_for(self, bucket: Bucket) -> list[Any]:
        """Arguments of ``bucket``'s shape, filled with each argument's fill value."""
        out: list[Any] = []
        for spec in self.layout.args:
            if not spec.is_tensor:
                out.append(spec.value)
                continue
            shape = list(spec.shape)
            for d, axis in spec.bucketed:
                shape[d] = bucket[axis]
            out.append(torch.full(shape, spec.fill, dtype=spec.dtype, device=spec.device))
        return out

    def _compile(self, bucket: Bucket) -> tuple[float, str]:
        """Build ``bucket``'s graph: from the cache when it has it, else compiled (and stored).

        Returns the seconds it took and ``"loaded"`` or ``"compiled"``.
        """
        t0 = time.perf_counter()
        with torch.no_grad():  # capture records no autograd state: serving never needs it
            example = self.example_for(bucket)
            persist = self._persistent_backend()
            if persist is None:
                graph, source = self.backend.compile(self.fn, example), "compiled"
            else:
                graph, source = self._cached_build(bucket, example, persist)
                if self.backend.captures:
                    graph = self.backend.capture(graph, example, self.fn)  # type: ignore[attr-defined]
        self._graphs[bucket] = graph
        if self.backend.captures:
            self._static[bucket] = example  # the capture reads these exact tensors from now on
            self._counters["captures"] += 1
        if source == "compiled":
            self._counters["compiles"] += 1
        return time.perf_counter() - t0, source

    @property
    def persists(self) -> bool:
        """Whether warmup stores graphs in (and loads them from) a graph cache."""
        return self._persistent_backend() is not None

    def missing_from_cache(self) -> list[Bucket]:
        """Buckets the graph cache cannot serve yet (all of them without a persisting cache)."""
        if self._persistent_backend() is None:
            return list(self.buckets)
        assert self.cache is not None
        return [b for b in self.buckets if b not in self._graphs and self.cache.lookup(self.cache_key(b)) is None]

    def _persistent_backend(self) -> Backend | None:
        """The backend whose graphs the cache keeps: this one, or a capture backend's inner one."""
        if self.cache is None:
            return None
        if self.backend.can_persist:
            return self.backend
        inner = getattr(self.backend, "inner", None)
        return inner if self.backend.captures and inner is not None and inner.can_persist else None

    def cache_key(self, bucket: Bucket, example: Sequence[Any] | None = None,
                  persist: Backend | None = None) -> CacheKey:
        """The graph cache key of ``bucket`` (computed once per runner, then per bucket)."""
        example = self.example_for(bucket) if example is None else example
        persist = persist or self._persistent_backend() or self.backend
        if self._key_parts is None:
            device = next((a.device.type for a in example if isinstance(a, torch.Tensor)), "cpu")
            self._key_parts = {"graph": fingerprint_graph(self.fn, example), "device": device_info(device),
                               "backend": persist.fingerprint()}
        graph = {**self._key_parts["graph"], "inputs": fingerprint_graph(lambda: None, example)["inputs"]}
        return make_key(graph=graph, bucket=bucket, backend=self._key_parts["backend"],
                        device=self._key_parts["device"])

    def _cached_build(self, bucket: Bucket, example: list[Any], persist: Backend) -> tuple[CompiledGraph, str]:
        """Load ``bucket`` from the cache, or compile it once across processes and store it.

        A cache that cannot be used (no space, read-only, cannot be created) costs the cache,
        never the run: the graph is compiled and kept in memory. An unsafe cache (wrong owner
        or permissions) is refused loudly instead: CacheSecurityError is not caught.
        """
        assert self.cache is not None
        key = self.cache_key(bucket, example, persist)
        try:
            graph = self._load(key, persist, example)
            if graph is not None:
                return graph, "loaded"
            with self.cache.lock(key.hash):
                graph = self._load(key, persist, example)  # another process may have written it meanwhile
                if graph is not None:
                    return graph, "loaded"
                return self._compile_and_store(key, persist, example), "compiled"
        except CacheSecurityError:
            raise
        except CacheWriteError as exc:
            self._warn_cache(exc)
            self._counters["cache_misses"] += 1
            return persist.compile(self.fn, example), "compiled"

    def _compile_and_store(self, key: CacheKey, persist: Backend, example: list[Any]) -> CompiledGraph:
        assert self.cache is not None
        self._counters["cache_misses"] += 1
        t0 = time.perf_counter()
        graph = persist.compile(self.fn, example)
        seconds = time.perf_counter() - t0
        try:
            self.cache.store(key, lambda d: persist.save(graph, d), seconds)
            self._counters["cache_writes"] += 1
        except CacheWriteError as exc:
            self._warn_cache(exc)
        return graph

    def _warn_cache(self, exc: Exception) -> None:
        if "write" not in self._cache_warned:
            self._cache_warned.add("write")
            log.warning("warmgraph: %s; continuing with in-memory graphs", exc)

    def _load(self, key: CacheKey, persist: Backend, example: list[Any]) -> CompiledGraph | None:
        assert self.cache is not None
        entry = self.cache.lookup(key)
        if entry is None:
            return None
        try:
            graph = persist.load(entry.path, self.fn, example)
        except Exception as exc:  # a verified entry that still fails to load: recompile, never crash
            log.warning("warmgraph: cache entry %s did not load (%s); compiling it again", key.hash[:12], exc)
            self.cache.remove(entry)
            return None
        self._counters["cache_hits"] += 1
        self._counters["bytes_loaded"] += entry.size
        self.cache.touch(entry)
        return graph

    def warmup(self, progress: bool = False, only: Sequence[Bucket] | None = None) -> WarmupReport:
        """Compile every bucket (or ``only`` these), largest padded work first; report each.

        Largest first so capture backends size their shared memory pool once. Buckets
        already compiled are reported as ``ready``.
        """
        chosen = self.buckets if only is None else [tuple(b) for b in only]
        order = sorted(chosen, key=lambda b: (work(b), b), reverse=True)
        report = WarmupReport(self.backend.name)
        start = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(order), desc=f"warmup {self.backend.name}", unit="bucket", leave=True)
        for bucket in order:
            if bucket in self._graphs:
                report.entries.append(BucketWarmup(bucket, 0.0, "ready"))
            else:
                seconds, source = self._compile(bucket)
                report.entries.append(BucketWarmup(bucket, seconds, source))
            if bar is not None:
                last = report.entries[-1]
                hit = {"loaded": "hit", "compiled": "miss"}.get(last.source, last.source)
                bar.set_postfix_str(f"{bucket} {hit} {last.seconds:.1f}s")
                bar.update()
        if bar is not None:
            bar.close()
        report.seconds = time.perf_counter() - start
        return report

    # -- a call ------------------------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        shape = real_shape(args, self.layout)
        bucket = self.buckets.lookup(shape, miss=self.miss_policy)
        # Inference only: no autograd state. Toggled directly, not with a context manager,
        # because this is the hot path (0.6 us against 3 us).
        grad = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            if bucket is None:
                return self._eager(shape, args)
            graph = self._graphs.get(bucket)
            if graph is None:
                graph = self._late_compile(bucket)
            if self.backend.captures:
                inputs = self._fill_static(bucket, shape, args)
            elif shape == bucket:
                inputs = args
            else:
                inputs = self._padded(bucket, shape, args)
            out = graph(*inputs)
            self._counters["replays"] += 1
            if shape == bucket and not self.backend.captures:
                return out
            return self._slice(out, shape, bucket)
        finally:
            torch._C._set_grad_enabled(grad)

    def _eager(self, shape: tuple[int, ...], args: Sequence[Any]) -> Any:
        self._counters["eager_fallbacks"] += 1
        if shape not in self._warned:
            self._warned.add(shape)
            log.warning("warmgraph: shape %s fits no bucket (largest %s); running eagerly", shape, self.buckets.largest)
        return self.fn(*args)

    def _late_compile(self, bucket: Bucket) -> CompiledGraph:
        """A bucket that lookup returned but warmup did not compile: a planned bucket before
        warmup, or a new one from the ``compile`` miss policy."""
        if bucket not in self.buckets:
            self.buckets = self.buckets.with_buckets(bucket)
            log.warning("warmgraph: compiling new bucket %s after warmup (miss policy 'compile')", bucket)
        self._compile(bucket)
        return self._graphs[bucket]

    def _padded(self, bucket: Bucket, shape: tuple[int, ...], args: Sequence[Any]) -> list[Any]:
        out = list(args)
        for spec in self.layout.args:
            if not spec.bucketed:
                continue
            arg = args[spec.index]
            pad: list[int] = [0] * (2 * arg.dim())
            missing = 0
            for d, axis in spec.bucketed:
                extra = bucket[axis] - shape[axis]
                if extra:
                    pad[2 * (arg.dim() - 1 - d) + 1] = extra  # pads count from the last dimension
                    missing = 1
            if missing:
                padded = torch.constant_pad_nd(arg, pad, spec.fill)  # F.pad without its Python wrapper
                self._counters["padded_elements"] += padded.numel() - arg.numel()
                out[spec.index] = padded
        return out

    def _fill_static(self, bucket: Bucket, shape: tuple[int, ...], args: Sequence[Any]) -> list[Any]:
        static = self._static[bucket]
        for spec in self.layout.args:
            if not spec.is_tensor:
                continue
            arg, buf = args[spec.index], static[spec.index]
            if not spec.bucketed:
                buf.copy_(arg)
                continue
            region = buf
            for d, axis in spec.bucketed:
                region = region.narrow(d, 0, shape[axis])
            region.copy_(arg)
            for d, axis in spec.bucketed:
                extra = bucket[axis] - shape[axis]
                if extra:
                    buf.narrow(d, shape[axis], extra).fill_(spec.fill)
            self._counters["padded_elements"] += buf.numel() - arg.numel()
        return static

    def _slice(self, out: Any, shape: tuple[int, ...], bucket: Bucket) -> Any:
        maps = self.layout.outputs
        if isinstance(out, (tuple, list)):
            items = [self._slice_one(o, i, maps, shape, bucket) for i, o in enumerate(out)]
            return type(out)(items)
        return self._slice_one(out, 0, maps, shape, bucket)

    def _slice_one(self, t: Any, i: int, maps: Any, shape: tuple[int, ...], bucket: Bucket) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if maps is None:
            spec = ((0, 0),) if t.dim() > 0 else ()
        else:
            spec = maps[i] if i < len(maps) and maps[i] is not None else ()
        for d, axis in spec:
            if shape[axis] != bucket[axis]:
                t = t.narrow(d, 0, shape[axis])
        # Captured outputs live in static memory that the next replay overwrites.
        return t.clone() if self.backend.captures and self.copy_outputs else t


def compile(
    fn: Callable[..., Any],
    buckets: BucketSet | Sequence[int] | Sequence[Sequence[int]],
    example_inputs: Sequence[Any],
    backend: str | Backend = "auto",
    *,
    device: str | None = None,
    dims: Dims | None = None,
    miss_policy: MissPolicy | str = MissPolicy.EAGER,
    copy_outputs: bool = True,
    cache: bool | str | os.PathLike[str] | GraphCache | None = None,
) -> GraphRunner:
    """A GraphRunner for ``fn`` over ``buckets``; call ``warmup()`` before serving.

    ``example_inputs`` is one call's arguments at any size: it gives dtypes, devices and the
    sizes of dimensions that are not bucketed. ``backend``: ``auto`` (best for the device),
    ``eager``, ``inductor``, ``aot``, ``cuda_graph``, ``acl_graph``, ``hpu_graph`` or a
    Backend instance. ``copy_outputs=False`` returns captured outputs as views of static
    memory that the next call of that bucket overwrites. ``cache``: True for the default
    graph cache root, a directory, or a GraphCache; warmup then loads what it holds and
    stores what it compiles (None: no cache).
    """
    return GraphRunner(fn, buckets, example_inputs, backend, device=device, dims=dims, miss_policy=miss_policy,
                       copy_outputs=copy_outputs, cache=cache)
