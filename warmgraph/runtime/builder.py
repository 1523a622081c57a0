"""GraphBuilder: one bucket's graph, from the graph cache when it has it, else compiled and stored.

The steps, for one bucket::

    fingerprint -> key -> cache lookup ── hit ──> load
                                     └─ miss ─> lock -> (look again) -> compile -> store
                -> capture, when the backend captures (over the static buffers it is given)

The builder owns no dispatch and no buffers: the runner gives it the bucket and the
arguments to build with, and gets back a ``BuildResult``. The vLLM integration calls it
directly. Counters it keeps: ``compiles``, ``cache_hits``, ``cache_misses``,
``cache_writes``, ``bytes_loaded`` (the runner counts ``captures``).

Failure policy: a cache that cannot be used (no space, read-only, cannot be created) costs
the cache, never the run: the graph is compiled and kept in memory, with one warning. An
unsafe cache (wrong owner or permissions) is refused loudly: CacheSecurityError propagates.
A graph whose fingerprint says it must not be persisted (it closes over too many tensors,
or over something that cannot be fingerprinted) is compiled without the cache, and the
reason is logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from warmgraph.bucketing.buckets import Bucket
from warmgraph.compiler.base import Backend, CompiledGraph
from warmgraph.compiler.fingerprint import Fingerprint, Unfingerprintable, device_factors, fingerprint, input_specs
from warmgraph.errors import CacheSecurityError, CacheWriteError
from warmgraph.graph_cache.key import CacheKey, make_key
from warmgraph.graph_cache.store import GraphCache
from warmgraph.runtime.counters import Counters

log = logging.getLogger("warmgraph")


@dataclass(frozen=True)
class BuildResult:
    """What building one bucket produced and cost."""

    bucket: Bucket
    graph: CompiledGraph
    source: str  # "compiled" | "loaded" (from the graph cache)
    seconds: float  # compile or load
    captured: bool = False
    capture_seconds: float = 0.0
    graph_bytes: int = 0  # size of the cache entry written or read; 0 when not cached
    device_bytes: int | None = None  # device memory the capture took, where the device reports it


class GraphBuilder:
    """Builds graphs of ``fn`` on ``backend`` through ``cache`` (None: no cache)."""

    def __init__(self, fn: Callable[..., Any], backend: Backend, cache: GraphCache | None,
                 counters: Counters | None = None, fingerprint: Fingerprint | None = None) -> None:
        """``fingerprint``: what ``fn`` is, when the caller knows better than ``compiler.fingerprint``
        (the vLLM integration describes vLLM's graph by its code and placeholders)."""
        self.fn = fn
        self.backend = backend
        self.cache = cache
        self.counters = counters if counters is not None else Counters()
        self._fingerprint: Fingerprint | None = fingerprint
        self._device: dict[str, Any] | None = None
        self._warned: set[str] = set()

    # -- keys --------------------------------------------------------------------------------

    @property
    def persistent_backend(self) -> Backend | None:
        """The backend whose graphs the cache keeps: this one, or a capture backend's inner one."""
        if self.cache is None:
            return None
        if self.backend.can_persist:
            return self.backend
        inner = getattr(self.backend, "inner", None)
        return inner if self.backend.captures and inner is not None and inner.can_persist else None

    def fingerprint(self) -> Fingerprint:
        """The function's fingerprint, computed once (input specs are added per bucket)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.fn)
        return self._fingerprint

    def key(self, bucket: Bucket, example: Sequence[Any]) -> CacheKey | None:
        """The cache key of ``bucket`` built with ``example``; None when nothing is cached."""
        persist = self.persistent_backend
        fp = self.fingerprint()
        if persist is None or not fp.persistable:
            return None
        if self._device is None:
            device = next((a.device.type for a in example if isinstance(a, torch.Tensor)), "cpu")
            self._device = device_factors(device)
        try:
            inputs = input_specs(example)
        except Unfingerprintable as exc:
            self._warn_once("constant", f"warmgraph: a constant argument is {exc}, which warmgraph cannot "
                                        "fingerprint; this graph is compiled but not cached")
            return None
        graph = {**fp.factors, "inputs": inputs}
        return make_key(graph=graph, bucket=bucket, backend=persist.fingerprint(), device=self._device,
                        torch_version=torch.__version__)

    def cached(self, bucket: Bucket, example: Sequence[Any]) -> bool:
        """Whether the cache holds ``bucket``'s graph already (False when nothing is cached)."""
        key = self.key(bucket, example)
        if key is None or self.cache is None:
            return False
        try:
            return self.cache.lookup(key) is not None
        except CacheWriteError:  # the cache cannot even be created: nothing is cached
            return False

    # -- building ----------------------------------------------------------------------------

    def build(self, bucket: Bucket, example: Sequence[Any]) -> BuildResult:
        """Load or compile ``bucket``'s graph, then capture it if the backend captures.

        For a capture backend ``example`` are the static buffers the graph will read, and what
        is compiled (and cached) is its inner backend's graph; the capture is made fresh.
        """
        example = list(example)
        with torch.no_grad():  # serving never needs autograd, and captures must not record it
            t0 = time.perf_counter()
            graph, source, nbytes = self._compiled(bucket, example)
            seconds = time.perf_counter() - t0
            if not self.backend.captures:
                return BuildResult(bucket, graph, source, seconds, graph_bytes=nbytes)
            graph = self.backend.capture(graph, example, self.fn)  # type: ignore[attr-defined]
            record = self.backend.captures_log[-1]  # type: ignore[attr-defined]
        return BuildResult(bucket, graph, source, seconds, True, record.seconds, nbytes,
                           getattr(record, "device_bytes", None))

    def _compile_backend(self) -> Backend | None:
        """Who compiles: the backend itself, or a capture backend's inner one (None: capture ``fn`` as it is)."""
        return getattr(self.backend, "inner", None) if self.backend.captures else self.backend

    def _compiled(self, bucket: Bucket, example: list[Any]) -> tuple[CompiledGraph, str, int]:
        persist = self.persistent_backend
        key = self.key(bucket, example)
        if key is None:
            self._why_not_cached()
            self.counters["compiles"] += 1
            compiler = self._compile_backend()
            return (compiler.compile(self.fn, example) if compiler is not None else self.fn), "compiled", 0
        assert self.cache is not None and persist is not None
        try:
            loaded = self._load(key, persist, example)
            if loaded is not None:
                return loaded
            with self.cache.lock(key.hash):
                loaded = self._load(key, persist, example)  # another process may have stored it meanwhile
                if loaded is not None:
                    return loaded
                return self._compile_and_store(key, persist, example)
        except CacheSecurityError:
            raise
        except CacheWriteError as exc:
            self._warn_once("write", f"warmgraph: {exc}; continuing with in-memory graphs")
            self.counters["cache_misses"] += 1
            self.counters["compiles"] += 1
            return persist.compile(self.fn, example), "compiled", 0

    def _why_not_cached(self) -> None:
        fp = self.fingerprint()
        if self.cache is not None and not fp.persistable and fp.reason:
            self._warn_once("fingerprint", f"warmgraph: {fp.reason}")

    def _load(self, key: CacheKey, persist: Backend, example: list[Any]) -> tuple[CompiledGraph, str, int] | None:
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
        self.counters["cache_hits"] += 1
        self.counters["bytes_loaded"] += entry.size
        self.cache.touch(entry)
        return graph, "loaded", entry.size

    def _compile_and_store(self, key: CacheKey, persist: Backend,
                           example: list[Any]) -> tuple[CompiledGraph, str, int]:
        assert self.cache is not None
        self.counters["cache_misses"] += 1
        self.counters["compiles"] += 1
        t0 = time.perf_counter()
        graph = persist.compile(self.fn, example)
        seconds = time.perf_counter() - t0
        try:
            entry = self.cache.store(key, lambda d: persist.save(graph, d), seconds)
            self.counters["cache_writes"] += 1
            return graph, "compiled", entry.size
        except CacheWriteError as exc:
            self._warn_once("write", f"warmgraph: {exc}; continuing with in-memory graphs")
            return graph, "compiled", 0

    def _warn_once(self, tag: str, message: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning(message)
