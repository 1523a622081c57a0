"""Cold warmup in parallel worker processes, through the graph cache.

A layer graph does not depend on the weights (they are bound arguments), so a worker needs
only a ``WarmupRecipe``: the model's config, the serving limits, the plan's buckets, the
compile backend's name, the cache root and the dtypes. It builds the phase's layer runner
over zero tensors of the right shapes, compiles the one bucket it is handed and stores it in
the shared graph cache. Each job builds its runner afresh: no state is kept between jobs, so
a worker needs no module-level cache. The per-key locks make this safe with any number of
workers, and a worker killed half-way (Ctrl-C) leaves only complete entries. The main
process then warms up as usual and loads them all.

Gaudi users asked for exactly this: compilation is mostly single-threaded, so a cold
warmup on N cores can go nearly N times faster.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from warmgraph.bucketing.buckets import Bucket, BucketSet, work
from warmgraph.bucketing.plans import ServingConfig


@dataclass(frozen=True)
class WarmupRecipe:
    """Everything a worker needs to build the layer graphs of an engine; picklable."""

    model_config: dict[str, Any]  # config.json of the model
    serving: ServingConfig
    plan_prompt: BucketSet
    plan_decode: BucketSet
    backend: str  # the compile backend's name
    cache_root: str
    dtype: str  # weights and KV cache
    rope_dtype: str
    device: str = "cpu"


def compile_job(recipe: WarmupRecipe, phase: str, bucket: Bucket) -> tuple[str, Bucket, float, str]:
    """Build one layer graph into the cache (in a worker); returns (phase, bucket, seconds, source)."""
    import warnings

    import torch

    from warmgraph.engine.steps import layer_runner, zero_layer_state
    from warmgraph.graph_cache.store import GraphCache
    from warmgraph.models.config import LlamaConfig, torch_dtype
    from warmgraph.models.layer_inputs import LayerInputs

    # A spawned worker starts with default warning filters: keep its stderr to the progress bar.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    torch.set_num_threads(1)  # one compile per core: the workers are the parallelism
    mc = LlamaConfig.from_hf(recipe.model_config)
    decode = phase == "decode"
    k, v, inputs = zero_layer_state(mc, recipe.serving, torch_dtype(recipe.dtype), recipe.device, LayerInputs())
    buckets = recipe.plan_decode if decode else recipe.plan_prompt
    runner = layer_runner(mc, recipe.serving, decode, buckets, _backend(recipe), k, v, inputs,
                          torch_dtype(recipe.rope_dtype), GraphCache(recipe.cache_root))
    entry = runner.warmup(only=[bucket]).entries[0]
    return phase, bucket, entry.seconds, entry.source


def _backend(recipe: WarmupRecipe) -> Any:
    from warmgraph.compiler.registry import get_backend

    return get_backend(recipe.backend, recipe.device)


def compile_in_workers(recipe: WarmupRecipe, jobs: list[tuple[str, Bucket]], workers: int,
                       on_done: Callable[[str, Bucket, float, str], None] | None = None,
                       ) -> dict[tuple[str, Bucket], tuple[float, str]]:
    """Compile ``jobs`` (phase, bucket) across ``workers`` processes into the graph cache.

    Largest buckets are handed out first so the slowest compiles do not come last.
    Returns per job its seconds and source. Ctrl-C cancels what has not started; what
    finished is in the cache for the next run.
    """
    results: dict[tuple[str, Bucket], tuple[float, str]] = {}
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools into the children
    ordered = sorted(jobs, key=lambda j: (-work(j[1]), j))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = [pool.submit(compile_job, recipe, phase, bucket) for phase, bucket in ordered]
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
