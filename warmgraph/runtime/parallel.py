"""Cold warmup in parallel worker processes, through the graph cache.

A bucket's graph does not depend on the weights (they are graph inputs), so a worker needs
only the model's config: it builds the step runners over zero tensors of the right shapes,
compiles the buckets it is handed and stores them in the shared graph cache. The per-key
locks make this safe with any number of workers, and a worker killed half-way (Ctrl-C)
leaves only complete entries. The main process then warms up as usual and loads them all.

Gaudi users asked for exactly this: compilation is mostly single-threaded, so a cold
warmup on N cores can go nearly N times faster.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from warmgraph.bucketing.buckets import Bucket

# Runners built in a worker process, reused across the buckets it is handed.
_WORKER_RUNNERS: dict[Any, Any] = {}


def _worker_compile(model_config: dict[str, Any], engine_config: Any, dtype: str, phase: str,
                    bucket: Bucket) -> tuple[str, Bucket, float, str]:
    """Compile one bucket in a worker process; returns (phase, bucket, seconds, source)."""
    import warnings

    import torch

    from warmgraph.models.config import LlamaConfig, torch_dtype

    # A spawned worker starts with default warning filters: keep its stderr to the progress bar.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    from warmgraph.runtime.engine import build_runners, zero_state

    torch.set_num_threads(1)  # one compile per core: the workers are the parallelism
    key = (repr(model_config), repr(engine_config), dtype)
    if key not in _WORKER_RUNNERS:
        mc = LlamaConfig.from_hf(model_config)
        k_cache, v_cache, weights = zero_state(mc, engine_config, torch_dtype(dtype))
        from warmgraph.bucketing.plans import plan_buckets

        plan = plan_buckets(engine_config.serving(), engine_config.strategy, engine_config.bucket_file)
        _WORKER_RUNNERS[key] = dict(zip(("prefill", "decode"),
                                        build_runners(mc, engine_config, plan, k_cache, v_cache, weights)))
    runner = _WORKER_RUNNERS[key][phase]
    entry = runner.warmup(only=[bucket]).entries[0]
    return phase, bucket, entry.seconds, entry.source


def compile_in_workers(jobs: list[tuple[str, Bucket]], model_config: dict[str, Any], engine_config: Any,
                       dtype: str, workers: int,
                       on_done: Callable[[str, Bucket, float, str], None] | None = None,
                       ) -> dict[tuple[str, Bucket], tuple[float, str]]:
    """Compile ``jobs`` (phase, bucket) across ``workers`` processes into the graph cache.

    Largest buckets are handed out first so the slowest compiles do not come last.
    Returns per job its seconds and source. Ctrl-C cancels what has not started; what
    finished is in the cache for the next run.
    """
    results: dict[tuple[str, Bucket], tuple[float, str]] = {}
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools into the children
    ordered = sorted(jobs, key=lambda j: (-_work(j[1]), j))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = [pool.submit(_worker_compile, model_config, engine_config, dtype, phase, bucket)
                   for phase, bucket in ordered]
        for future in as_completed(futures):
            phase, bucket, seconds, source = future.result()
            results[(phase, bucket)] = (seconds, source)
            if on_done is not None:
                on_done(phase, bucket, seconds, source)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _work(bucket: Bucket) -> int:
    out = 1
    for v in bucket:
        out *= max(v, 1)
    return out

