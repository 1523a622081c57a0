"""GraphRunner: the dispatcher. Each call: look up its bucket, pad, run that bucket's graph, slice back.

The runner decides and counts; it builds nothing itself. The real shape of a call comes
from the declared bucketed dimensions (``dims.py``), ``BucketSet.lookup`` picks the bucket
with the least padded work, and the miss policy handles the rest: ``eager`` runs the
original function and counts it, ``compile`` builds the new bucket and keeps it, ``error``
raises. Graphs come from the ``GraphBuilder`` (compile or cache load, then capture);
capture backends read their inputs from ``StaticBuffers``.

Each bucket goes through a lifecycle::

    unseen ──build──> built ──capture──> captured     (capture backends)
       warmup() ends: every built bucket is sealed

After the seal, a call that needs a bucket which is not built applies the miss policy: only
``compile`` builds (and captures) it then, counted in ``late_builds``; ``eager`` runs
eagerly; ``error`` raises. Before any warmup, a call builds its bucket on first use.

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
from enum import Enum
from typing import Any

import torch

from warmgraph.bucketing.buckets import Bucket, BucketSet, MissPolicy, work
from warmgraph.compiler.base import Backend, CompiledGraph
from warmgraph.compiler.registry import get_backend
from warmgraph.errors import BucketMissError, ConfigError
from warmgraph.graph_cache.store import GraphCache
from warmgraph.runtime.buffers import StaticBuffers
from warmgraph.runtime.builder import BuildResult, GraphBuilder
from warmgraph.runtime.counters import Counters
from warmgraph.runtime.dims import Dims, Layout, real_shape, resolve_layout
from warmgraph.runtime.report import BucketWarmup, WarmupReport

log = logging.getLogger("warmgraph")


class State(str, Enum):
    """Where a bucket is in its lifecycle."""

    UNSEEN = "unseen"
    BUILT = "built"
    CAPTURED = "captured"
    SEALED = "sealed"


def graph_cache(cache: bool | str | os.PathLike[str] | GraphCache | None) -> GraphCache | None:
    """``cache=`` as a GraphCache: True for the default root, a directory, a GraphCache, or None/False."""
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
    """One graph per bucket behind a single callable. See the module docstring."""

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
        self.builder = GraphBuilder(fn, self.backend, graph_cache(cache), self._counters)
        self.buffers = StaticBuffers(self.layout, self.buckets) if self.backend.captures else None
        self._graphs: dict[Bucket, CompiledGraph] = {}
        self.states: dict[Bucket, State] = dict.fromkeys(self.buckets, State.UNSEEN)
        self.sealed = False
        self._warned: set[tuple[int, ...]] = set()

    @property
    def cache(self) -> GraphCache | None:
        return self.builder.cache

    @property
    def counters(self) -> Counters:
        """Counts since creation; ``recompiles`` sums what each graph saw after warmup."""
        self._counters["recompiles"] = sum(getattr(g, "recompiles", 0) for g in self._graphs.values())
        return self._counters

    # -- warmup ------------------------------------------------------------------------------

    def example_for(self, bucket: Bucket) -> list[Any]:
        """The arguments ``bucket`` is built with: its static buffers for a capture backend, else
        fresh tensors of its shape filled with each argument's fill value (bound and constant
        arguments as given in ``example_inputs``)."""
        if self.buffers is not None:
            return self.buffers.for_bucket(bucket)
        out: list[Any] = []
        for spec in self.layout.args:
            if spec.kind in ("bound", "constant"):
                out.append(spec.value)
            else:
                out.append(torch.full(spec.shape_at(bucket), spec.fill, dtype=spec.dtype, device=spec.device))
        return out

    @property
    def persists(self) -> bool:
        """Whether warmup stores graphs in (and loads them from) a graph cache."""
        return self.builder.persistent_backend is not None and self.builder.fingerprint().persistable

    def missing_from_cache(self) -> list[Bucket]:
        """Buckets the graph cache cannot serve yet (all of them without a persisting cache)."""
        return [b for b in self.buckets if b not in self._graphs and not self.builder.cached(b, self.example_for(b))]

    def _build(self, bucket: Bucket) -> BuildResult:
        example = self.buffers.reset(bucket) if self.buffers is not None else self.example_for(bucket)
        result = self.builder.build(bucket, example)
        self._graphs[bucket] = result.graph
        self.states[bucket] = State.CAPTURED if result.captured else State.BUILT
        if result.captured:
            self._counters["captures"] += 1
        return result

    def warmup(self, progress: bool = False, only: Sequence[Bucket] | None = None) -> WarmupReport:
        """Build every bucket (or ``only`` these), largest padded work first; report each; seal.

        Largest first so capture backends size their shared memory pool once. Buckets already
        built are reported as ``ready``. After this, buckets are sealed (see the module docstring).
        """
        chosen = self.buckets if only is None else [tuple(b) for b in only]
        unknown = [b for b in chosen if b not in self.buckets]
        if unknown:
            raise ConfigError(f"warmup(only=...) names {unknown[0]}, which is not one of the runner's buckets "
                              f"({len(self.buckets)}, largest {self.buckets.largest})")
        order = sorted(chosen, key=lambda b: (work(b), b), reverse=True)
        report = WarmupReport(self.backend.name, buffer_bytes=self.buffers.nbytes if self.buffers else 0)
        start = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(order), desc=f"warmup {self.backend.name}", unit="bucket", leave=True)
        for bucket in order:
            if bucket in self._graphs:
                report.entries.append(BucketWarmup(bucket, 0.0, "ready"))
            else:
                r = self._build(bucket)
                report.entries.append(BucketWarmup(bucket, r.seconds, r.source, r.captured, r.capture_seconds,
                                                   r.graph_bytes, r.device_bytes))
            if bar is not None:
                last = report.entries[-1]
                hit = {"loaded": "hit", "compiled": "miss"}.get(last.source, last.source)
                bar.set_postfix_str(f"{bucket} {hit} {last.seconds + last.capture_seconds:.1f}s")
                bar.update()
        if bar is not None:
            bar.close()
        report.seconds = time.perf_counter() - start
        self.seal()
        return report

    def seal(self) -> None:
        """End warmup: built buckets are sealed; later builds need the 'compile' miss policy."""
        self.sealed = True
        for bucket in self._graphs:
            self.states[bucket] = State.SEALED

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
                graph = self._late(bucket, shape)
                if graph is None:
                    return self._eager(shape, args, bucket)
            if self.buffers is not None:
                inputs, padded = self.buffers.fill(bucket, shape, args)
                self._counters["padded_elements"] += padded
            elif shape == bucket:
                inputs = args
            else:
                inputs = self._padded(bucket, shape, args)
            out = graph(*inputs)
            self._counters["replays"] += 1
            if shape == bucket and self.buffers is None:
                return out
            return self._slice(out, shape, bucket)
        finally:
            torch._C._set_grad_enabled(grad)

    def _eager(self, shape: tuple[int, ...], args: Sequence[Any], bucket: Bucket | None = None) -> Any:
        self._counters["eager_fallbacks"] += 1
        if shape not in self._warned:
            self._warned.add(shape)
            if bucket is None:
                log.warning("warmgraph: shape %s fits no bucket (largest %s); running eagerly", shape,
                            self.buckets.largest)
            else:
                log.warning("warmgraph: shape %s needs bucket %s, which warmup did not build; running eagerly",
                            shape, bucket)
        return self.fn(*args)

    def _late(self, bucket: Bucket, shape: tuple[int, ...]) -> CompiledGraph | None:
        """A bucket that has no graph: built now before the seal; after it, per the miss policy
        (None: run eagerly)."""
        if self.sealed:
            if self.miss_policy is MissPolicy.EAGER:
                return None
            if self.miss_policy is MissPolicy.ERROR:
                raise BucketMissError(f"shape {shape} needs bucket {bucket}, which warmup did not build; warm it up "
                                      "or use miss policy 'compile'")
            self._counters["late_builds"] += 1
            log.warning("warmgraph: building bucket %s after warmup (miss policy 'compile')", bucket)
        if bucket not in self.buckets:
            self.buckets = self.buckets.with_buckets(bucket)
            self.states[bucket] = State.UNSEEN
        self._build(bucket)
        if self.sealed:
            self.states[bucket] = State.SEALED
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
        # Captured outputs live in static memory that later replays overwrite: the next replay
        # of this bucket, and with a shared memory pool a replay of any earlier-captured bucket.
        return t.clone() if self.buffers is not None and self.copy_outputs else t


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
    sizes of dimensions that are not bucketed; a bound argument (``Dims`` ``BOUND``) is the
    state tensor itself. ``backend``: ``auto`` (best for the device), ``eager``, ``inductor``,
    ``aot``, ``cuda_graph``, ``acl_graph``, ``hpu_graph`` or a Backend instance.
    ``copy_outputs=False`` returns captured outputs as views of static memory, valid until the
    next replay of that bucket or, with the shared memory pool, of any bucket captured before
    it. ``cache``: True for the default graph cache root, a directory, or a GraphCache; warmup
    then loads what it holds and stores what it compiles (None: no cache).
    """
    return GraphRunner(fn, buckets, example_inputs, backend, device=device, dims=dims, miss_policy=miss_policy,
                       copy_outputs=copy_outputs, cache=cache)
