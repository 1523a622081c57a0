"""``warmgraph buckets ...``: ranges, serving plans, fitting to a trace, capture sizes."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import click

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.capture_sizes import (
    ASCEND_LEGACY_GRAPH_BUDGET,
    default_capture_sizes,
    fit_graph_budget,
    max_capture_size,
    padding_of,
)
from warmgraph.bucketing.plans import STRATEGIES, ServingConfig, plan_buckets
from warmgraph.bucketing.strategies import RANGE_STRATEGIES, RangeSpec, build
from warmgraph.cli.output import default_of, emit_json, pct, table, wrap_values
from warmgraph.cli.simulate import simulate
from warmgraph.errors import ConfigError

JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")


@click.group()
def buckets() -> None:
    """Choose the shapes that get graphs: ranges, plans, traces."""


buckets.add_command(simulate)


@buckets.command("range")
@click.argument("strategy", type=click.Choice(RANGE_STRATEGIES))
@click.option("--min", "bmin", type=int, required=True, help="Smallest bucket (0 or 1 adds that bucket).")
@click.option("--step", type=int, required=True, help="Buckets are multiples of this.")
@click.option("--max", "bmax", type=int, required=True, help="Largest bucket.")
@click.option("--limit", type=int, help="exponential: number of geometric points.")
@click.option("--pad-max", type=int, default=default_of(RangeSpec, "pad_max"), show_default=True,
              help="padding_aware: padding limit (0 = max).")
@click.option("--pad-percent", type=float, default=default_of(RangeSpec, "pad_percent"), show_default=True,
              help="padding_aware: relative limit, 0-50.")
@JSON
def range_cmd(
    strategy: str, bmin: int, step: int, bmax: int, limit: int | None, pad_max: int, pad_percent: float, as_json: bool
) -> None:
    """One dimension's bucket values, as vllm-gaudi computes them.

    Example: warmgraph buckets range exponential --min 128 --step 128 --max 2048 --limit 10
    """
    spec = RangeSpec(strategy, step=step, max=bmax, min=bmin, limit=limit, pad_max=pad_max, pad_percent=pad_percent)
    values = build(spec).to_list()
    if as_json:
        emit_json({"strategy": strategy, "params": spec.params(), "buckets": values})
        return
    params = ", ".join(f"{k}={v}" for k, v in spec.params().items())
    click.echo(f"{strategy}({params}): {len(values)} buckets")
    click.echo(wrap_values(values))


def _serving_options(f: Any) -> Any:
    options = [
        click.option("--max-num-seqs", type=int, required=True, help="Most sequences decoded at once."),
        click.option(
            "--max-num-prefill-seqs",
            type=int,
            default=None,
            help="Most prompts per prefill [VLLM_PROMPT_BS_BUCKET_MAX or 1].",
        ),
        click.option("--block-size", type=int, default=default_of(ServingConfig, "block_size"), show_default=True,
                     help="Tokens per KV block."),
        click.option("--max-num-batched-tokens", type=int, required=True, help="Token budget of one step."),
        click.option("--max-model-len", type=int, required=True, help="Longest sequence, prompt plus output."),
        click.option("--num-blocks", type=int, required=True, help="KV-cache blocks allocated."),
        click.option("--contiguous-pa", is_flag=True, help="Contiguous paged attention (off with prefix caching)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _group_by_prefix(bucket_set: BucketSet) -> list[tuple[tuple[int, ...], list[int]]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for b in bucket_set:
        groups[b[:-1]].append(b[-1])
    return sorted(groups.items())


@buckets.command("plan")
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=None,
    help="[VLLM_BUCKETING_STRATEGY, else exponential]",
)
@click.option("--file", "bucket_file", type=str, default=None, help="Bucket file (means --strategy file).")
@_serving_options
@JSON
def plan_cmd(strategy: str | None, bucket_file: str | None, as_json: bool, **limits: Any) -> None:
    """Prompt and decode buckets exactly as vllm-gaudi's bucketing manager makes them.

    A plan too big to build in about a second is refused at once, with its bucket count and
    the cap (warmgraph.bucketing.limits).

    Example: warmgraph buckets plan --max-num-seqs 256 --max-num-batched-tokens 8192
    --max-model-len 32768 --num-blocks 4127
    """
    if bucket_file is not None:
        if strategy is None:
            strategy = "file"  # a bucket file says which strategy is meant
        elif strategy != "file":
            raise click.UsageError(f"--file is used only with --strategy file, not --strategy {strategy}")
    plan = plan_buckets(ServingConfig(**limits), strategy, bucket_file)
    if as_json:
        emit_json(plan.to_dict())
        return
    c = plan.config
    click.echo(
        f"{plan.strategy} plan: max_num_seqs={c.max_num_seqs} max_num_prefill_seqs={c.max_num_prefill_seqs} "
        f"block_size={c.block_size} max_num_batched_tokens={c.max_num_batched_tokens} "
        f"max_model_len={c.max_model_len} num_blocks={c.num_blocks}"
        + (" contiguous_pa" if c.contiguous_pa else "")
    )
    if plan.env_applied:
        click.echo("changed by the environment: " + ", ".join(f"{k}={v}" for k, v in plan.env_applied.items()))
    for name, why in plan.env_ignored.items():
        click.echo(f"set but unused: {name} ({why})")
    if plan.prompt_cfg:
        rows = [[f"{phase} {dim}", *cfg] for phase, cfgs in (("prompt", plan.prompt_cfg), ("decode", plan.decode_cfg))
                for dim, cfg in cfgs.items()]
        width = max(len(r) for r in rows) - 1
        headers = ["config", "min", "step", "max", "limit" if plan.strategy == "exponential" else "pad_max", "pad_%"]
        click.echo(table(headers[: width + 1], [r + [""] * (width + 1 - len(r)) for r in rows]))
    click.echo(f"\nprompt: {len(plan.prompt)} buckets (batch, query_len, ctx_blocks)")
    for (bs, q), ctxs in _group_by_prefix(plan.prompt):
        click.echo(f"  batch {bs:>4}  query_len {q:>6}  ctx_blocks: " + " ".join(map(str, ctxs)))
    click.echo(f"\ndecode: {len(plan.decode)} buckets (batch, 1, blocks)")
    for (bs, _), blocks in _group_by_prefix(plan.decode):
        click.echo(f"  batch {bs:>4}  blocks: " + " ".join(map(str, blocks)))


@buckets.command("fit")
@click.option("--trace", required=True, help="CSV or JSONL trace.")
@click.option("--column", default="ContextTokens", show_default=True, help="Column of lengths to fit.")
@click.option("--step", type=int, default=default_of(RangeSpec, "step"), show_default=True,
              help="Buckets are multiples of this.")
@click.option("--max", "bmax", type=int, required=True, help="Largest bucket (always included).")
@click.option("--max-buckets", type=int, help="Bucket budget.")
@click.option("--max-waste", type=float, help="Instead of a budget: the fewest buckets with at most this waste.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the buckets as YAML (read by --strategy file).")
@JSON
def fit_cmd(
    trace: str, column: str, step: int, bmax: int, max_buckets: int | None, max_waste: float | None,
    out: str | None, as_json: bool,
) -> None:
    """Fit buckets to a trace: the least padded work under a bucket budget (exact in 1-D).

    Also fits on the even rows and judges on the odd ones, to show how it generalises.
    """
    from warmgraph.bucketing.fitted import fit_1d
    from warmgraph.bucketing.from_file import write_yaml
    from warmgraph.bucketing.workload import evaluate, read_trace

    if (max_buckets is None) == (max_waste is None):
        raise ConfigError("give exactly one budget: --max-buckets N or --max-waste W")
    values = read_trace(trace, column)
    chosen = BucketSet(fit_1d(values, step, bmax, max_buckets=max_buckets, max_waste=max_waste))
    report = evaluate(chosen, values)
    train, test = values[0::2], values[1::2]
    half = BucketSet(fit_1d(train, step, bmax, max_buckets=len(chosen)))
    held_out = {
        "fit_on": "even rows",
        "judged_on": "odd rows",
        "waste": evaluate(half, test).padding_waste,
        "waste_if_fit_on_odd": evaluate(
            BucketSet(fit_1d(test, step, bmax, max_buckets=len(chosen))), test
        ).padding_waste,
    }
    meta = {"strategy": "fitted", "trace": str(trace), "column": column, "step": step, "max": bmax,
            "padding_waste": round(report.padding_waste, 6), "hit_rate": round(report.hit_rate, 6)}
    if out:
        write_yaml(out, chosen, meta)
    if as_json:
        emit_json({**report.to_dict(), "buckets": chosen.to_list(), "held_out": held_out, "out": out})
        return
    click.echo(f"fitted {len(chosen)} buckets to {report.num_shapes} values of {column}:")
    click.echo(wrap_values(chosen.to_list()))
    click.echo(f"padding waste {pct(report.padding_waste)}, hit rate {pct(report.hit_rate)}, "
               f"padding per request p50 {report.padding_p50:.0f} p99 {report.padding_p99:.0f}")
    click.echo(f"held out: fit on even rows, waste on odd rows {pct(held_out['waste'])} "
               f"(fit on the odd rows themselves: {pct(held_out['waste_if_fit_on_odd'])})")
    if out:
        click.echo(f"wrote {out} (use: --strategy file --file {out})")


@buckets.command("capture")
@click.option("--max-num-seqs", type=int, required=True)
@click.option("--max-num-batched-tokens", type=int, required=True)
@click.option("--num-speculative-tokens", type=int, default=0, show_default=True)
@click.option("--ascend", is_flag=True, help="vllm-ascend's default maximum (no x2).")
@click.option("--num-layers", type=int, help="Graph budget mode: each size costs num_layers + 1 graphs.")
@click.option("--graph-budget", type=int, default=ASCEND_LEGACY_GRAPH_BUDGET, show_default=True,
              help="Most graphs the device holds.")
@click.option("--trace", help="Batch sizes seen in serving: keep the sizes that pad them least.")
@click.option("--column", default="batch", show_default=True, help="Column of batch sizes in --trace.")
@JSON
def capture_cmd(
    max_num_seqs: int, max_num_batched_tokens: int, num_speculative_tokens: int, ascend: bool,
    num_layers: int | None, graph_budget: int, trace: str | None, column: str, as_json: bool,
) -> None:
    """Graph capture sizes: vLLM's defaults, optionally cut to a graph budget (vllm-ascend)."""
    if trace is not None and num_layers is None:
        raise click.UsageError("--trace chooses sizes under a graph budget; give --num-layers N with it")
    sizes = default_capture_sizes(max_num_seqs, max_num_batched_tokens, num_speculative_tokens, ascend=ascend)
    top = max_capture_size(max_num_seqs, max_num_batched_tokens, num_speculative_tokens, ascend=ascend)
    result: dict[str, Any] = {"max_capture_size": top, "sizes": sizes}
    if num_layers is not None:
        batch_sizes = None
        if trace:
            from warmgraph.bucketing.workload import read_trace

            batch_sizes = read_trace(trace, column)
        budget = fit_graph_budget(sizes, num_layers, graph_budget, batch_sizes)
        result["budget"] = budget.to_dict()
        if batch_sizes is not None:
            result["budget"]["padding_waste"] = padding_of(budget.sizes, batch_sizes)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{len(sizes)} capture sizes up to {top}:")
    click.echo(wrap_values(sizes))
    if "budget" in result:
        b = result["budget"]
        click.echo(f"graph budget {b['budget']} at {b['graphs_per_size']} graphs per size: "
                   f"keep {len(b['sizes'])} sizes ({b['total_graphs']} graphs)")
        click.echo(wrap_values(b["sizes"]))
        if "padding_waste" in b:
            click.echo(f"padding waste on the trace: {pct(b['padding_waste'])}")
