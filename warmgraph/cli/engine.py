"""``warmgraph warmup`` and ``warmgraph generate``: a real model through its cached graphs."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import click

from warmgraph.cli.output import emit_json, table

_DEFAULT = "the embedded default (a tiny Llama generated on first use)"


def _engine_options(f: Any) -> Any:
    options = [
        click.argument("model_dir", required=False),
        click.option("--backend", default="auto", show_default=True, help="auto, aot, inductor, eager, ..."),
        click.option("--strategy", default="exponential", show_default=True,
                     type=click.Choice(["exponential", "linear", "padding_aware", "file"])),
        click.option("--bucket-file", help="Bucket file for --strategy file."),
        click.option("--max-num-seqs", type=int, default=4, show_default=True),
        click.option("--max-model-len", type=int, default=256, show_default=True),
        click.option("--max-num-batched-tokens", type=int, default=64, show_default=True),
        click.option("--block-size", type=int, default=64, show_default=True),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                     help="Weights dtype [the checkpoint's]."),
        click.option("--cache-dir", help="Graph cache root [$WARMGRAPH_CACHE_DIR or ~/.cache/warmgraph]."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _build(model_dir: str | None, dtype: str | None, cache_dir: str | None, **limits: Any) -> tuple[Any, str]:
    from warmgraph.graph_cache.store import GraphCache
    from warmgraph.models.default import ensure_default_model
    from warmgraph.models.loader import load_checkpoint
    from warmgraph.runtime.engine import Engine, EngineConfig

    cache = GraphCache(cache_dir)
    path = model_dir or str(ensure_default_model(cache.root if cache_dir else None))
    model, tokenizer, _ = load_checkpoint(path, dtype)
    return Engine(model, tokenizer, EngineConfig(cache=cache, **limits)), path


def _limits(kw: dict[str, Any]) -> dict[str, Any]:
    names = ("backend", "strategy", "bucket_file", "max_num_seqs", "max_model_len", "max_num_batched_tokens",
             "block_size")
    return {k: kw[k] for k in names}


@click.command("warmup")
@_engine_options
@click.option("--workers", type=int, default=None, help="Processes for cold compiles [number of cores].")
def warmup(model_dir: str | None, dtype: str | None, cache_dir: str | None, as_json: bool, workers: int | None,
           **kw: Any) -> None:
    """Build every prompt and decode graph of a model, loading what the graph cache has.

    Without MODEL_DIR (a local Hugging Face-format Llama directory), the embedded default.
    """
    engine, path = _build(model_dir, dtype, cache_dir, **_limits(kw))
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    report = engine.warmup(progress=not as_json, workers=workers)
    sources = Counter(e.source for e in report.entries)
    by_phase = {"prompt": len(engine.plan.prompt), "decode": len(engine.plan.decode)}
    result = {
        "model": path, "backend": report.backend, "buckets": len(report.entries), **by_phase,
        "compiled": sources["compiled"], "loaded": sources["loaded"], "ready": sources["ready"],
        "seconds": round(report.seconds, 3), "workers": workers, "cache": str(engine.prefill.cache.root),
    }
    if as_json:
        emit_json(result)
        return
    slowest = sorted(report.entries, key=lambda e: -e.seconds)[:3]
    click.echo(f"model {path}")
    click.echo(table(["graphs", "prompt", "decode", "compiled", "loaded", "seconds", "backend"],
                     [[result["buckets"], by_phase["prompt"], by_phase["decode"], result["compiled"],
                       result["loaded"], round(report.seconds, 2), report.backend]]))
    click.echo("one graph per bucket serves every layer (regional compilation); slowest: "
               + ", ".join(f"{e.bucket} {e.seconds:.1f}s" for e in slowest))
    click.echo(f"graph cache: {result['cache']}")


@click.command("generate")
@_engine_options
@click.option("--prompt", "prompts", multiple=True, required=True, help="A prompt; repeat for a batch.")
@click.option("--max-tokens", type=int, default=32, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
def generate(model_dir: str | None, dtype: str | None, cache_dir: str | None, as_json: bool, prompts: tuple[str, ...],
             max_tokens: int, temperature: float, top_p: float, seed: int | None, **kw: Any) -> None:
    """Generate text for each --prompt through the warmed graphs, and report the stats."""
    from warmgraph.runtime.engine import SamplingParams

    if max_tokens < 1:
        raise click.BadParameter("must be at least 1", param_hint="--max-tokens")
    if temperature < 0 or not 0 < top_p <= 1:
        raise click.BadParameter("temperature must be >= 0 and top-p in (0, 1]", param_hint="--temperature/--top-p")
    engine, path = _build(model_dir, dtype, cache_dir, **_limits(kw))
    report = engine.warmup(progress=False)
    out = engine.generate(list(prompts), SamplingParams(max_tokens, temperature, top_p, seed))
    counters = {k: engine.prefill.counters[k] + engine.decode.counters[k] for k in ("compiles", "cache_hits")}
    out["stats"].update(warmup_seconds=round(report.seconds, 3), graphs_compiled=counters["compiles"],
                        graphs_loaded=counters["cache_hits"])
    if as_json:
        emit_json({"model": path, **out})
        return
    for c in out["completions"]:
        click.echo(f"> {c['prompt']}")
        click.echo(f"  error: {c['error']}" if "error" in c else f"{c['text']}  [{c['finish_reason']}]")
    s = out["stats"]
    click.echo(f"\n{s['generated_tokens']} tokens in {s['seconds']:.2f}s ({s['tokens_per_s']} tok/s), "
               f"first token after {s['time_to_first_token_s']}s; {s['graph_replays']} graph replays, "
               f"{s['eager_fallbacks']} eager fallbacks; warmup {s['warmup_seconds']:.2f}s "
               f"({s['graphs_loaded']} graphs loaded, {s['graphs_compiled']} compiled)")
