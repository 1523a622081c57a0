"""``warmgraph buckets simulate``: how well a strategy's buckets fit a real trace.

Prompt mode (default) judges 1-D buckets on one column of lengths. ``--decode`` simulates
continuous batching of the trace and judges the decode plan's ``(batch, blocks)`` buckets
on the shapes it produces step by step. ``--compare`` puts strategies side by side at equal
bucket counts, which is the only fair comparison: more buckets always pad less.
"""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.plans import ServingConfig
from warmgraph.bucketing.strategies import NAMES, RangeSpec, at_count, build
from warmgraph.cli.output import default_of, emit_json, pct, table
from warmgraph.errors import ConfigError


def _result(name: str, params: dict[str, Any], bucket_set: BucketSet, shapes: np.ndarray) -> dict[str, Any]:
    from warmgraph.bucketing.workload import evaluate

    report = evaluate(bucket_set, shapes).to_dict()
    return {"strategy": name, "params": params, **report, "buckets": bucket_set.to_list()}


def _prompt_results(spec: RangeSpec, compare: list[str], values: np.ndarray) -> list[dict[str, Any]]:
    primary = build(spec, values)
    if primary.ndim != 1:
        raise ConfigError(
            f"{spec.file} holds {primary.ndim}-D buckets {primary.dims} but --column gives one length per request; "
            "use a 1-D bucket file (warmgraph buckets fit --out F.yaml) or 'buckets plan --strategy file'"
        )
    results = [_result(spec.strategy, spec.params(), primary, values)]
    for name in compare:
        if name == spec.strategy:
            continue
        other = RangeSpec(name, step=spec.step, max=spec.max, min=spec.min, file=spec.file)
        tuned, bucket_set = at_count(other, len(primary), values)
        results.append(_result(name, tuned.params(), bucket_set, values))
    return results


def _decode_results(
    strategy: str, compare: list[str], bucket_file: str | None, limits: dict[str, Any], context: np.ndarray,
    generated: np.ndarray, max_buckets: int | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from warmgraph.bucketing.fitted import fit
    from warmgraph.bucketing.plans import plan_buckets
    from warmgraph.bucketing.workload import simulate_decode

    config = ServingConfig(**limits)
    sim = simulate_decode(context, generated, max_num_seqs=config.max_num_seqs, block_size=config.block_size,
                          max_model_len=config.max_model_len)
    if len(sim.shapes) == 0:
        raise ConfigError("the trace produced no decode steps; check --max-model-len and the generated column")
    info = {"decode_steps": int(sim.steps), "rejected_requests": int(sim.rejected)}
    results = []
    plan_count = None
    for name in [strategy, *[c for c in compare if c != strategy]]:
        if name == "fitted":
            continue
        plan = plan_buckets(config, name, bucket_file)
        two_d = BucketSet({(b[0], b[2]) for b in plan.decode}, dims=("batch", "blocks"))
        plan_count = plan_count or len(two_d)
        results.append(_result(name, {"plan": name}, two_d, sim.shapes))
    if "fitted" in [strategy, *compare]:
        budget = max_buckets if max_buckets is not None else plan_count
        if budget is None:
            raise ConfigError("fitted decode buckets need a budget: pass --max-buckets N")
        max_blocks = int(sim.shapes[:, 1].max())
        fitted = fit(sim.shapes, steps=(1, config.block_size), maxes=(config.max_num_seqs, max_blocks),
                     max_buckets=budget, dims=("batch", "blocks"))
        entry = _result("fitted", {"max_buckets": budget}, fitted, sim.shapes)
        results.insert(0 if strategy == "fitted" else len(results), entry)
    return results, info


@click.command("simulate")
@click.option("--trace", required=True, help="CSV (e.g. the Azure traces) or JSONL.")
@click.option("--column", default="ContextTokens", show_default=True, help="Lengths column (comma list: N-D shapes).")
@click.option("--strategy", type=click.Choice(NAMES), default="exponential", show_default=True)
@click.option("--min", "bmin", type=int, help="Smallest bucket [step].")
@click.option("--step", type=int, default=default_of(RangeSpec, "step"), show_default=True)
@click.option("--max", "bmax", type=int, help="Largest bucket [trace maximum rounded up to step].")
@click.option("--limit", type=int, help="exponential: geometric points; fitted: bucket budget.")
@click.option("--max-buckets", type=int, help="fitted: bucket budget (same as --limit).")
@click.option("--pad-max", type=int, default=default_of(RangeSpec, "pad_max"), show_default=True)
@click.option("--pad-percent", type=float, default=default_of(RangeSpec, "pad_percent"), show_default=True)
@click.option("--file", "bucket_file", help="Bucket file for --strategy file.")
@click.option("--compare", default="", help="Comma list of strategies to judge at the same bucket count.")
@click.option("--decode", is_flag=True, help="Simulate continuous batching; judge decode (batch, blocks) buckets.")
@click.option("--generated-column", default="GeneratedTokens", show_default=True, help="--decode: output lengths.")
@click.option("--max-num-seqs", type=int, default=256, show_default=True, help="--decode: batch slots.")
@click.option("--block-size", type=int, default=default_of(ServingConfig, "block_size"), show_default=True,
              help="--decode: tokens per KV block.")
@click.option("--max-model-len", type=int, default=16384, show_default=True, help="--decode: longest sequence.")
@click.option("--max-num-batched-tokens", type=int, default=8192, show_default=True, help="--decode: step budget.")
@click.option("--num-blocks", type=int, default=16384, show_default=True, help="--decode: KV blocks allocated.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG: lengths, bucket edges, waste per bucket.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
def simulate(
    trace: str, column: str, strategy: str, bmin: int | None, step: int, bmax: int | None, limit: int | None,
    max_buckets: int | None, pad_max: int, pad_percent: float, bucket_file: str | None, compare: str, decode: bool,
    generated_column: str, max_num_seqs: int, block_size: int, max_model_len: int, max_num_batched_tokens: int,
    num_blocks: int, plot: str | None, as_json: bool,
) -> None:
    """Judge bucket strategies on a trace: padding waste, hit rate, padding per request.

    Example: warmgraph buckets simulate --trace conv.csv --strategy exponential --limit 13
    --max 8192 --compare linear,padding_aware,fitted
    """
    from warmgraph.bucketing.workload import read_requests, read_trace

    compared = [c.strip() for c in compare.split(",") if c.strip()]
    unknown = [c for c in compared if c not in NAMES]
    if unknown:
        raise ConfigError(f"--compare names unknown strategies {unknown}; use: {', '.join(NAMES)}")
    _check_options(strategy, compared, step, limit, max_buckets, bucket_file)
    if plot:
        from warmgraph.cli.plot import check_plot_path

        check_plot_path(plot)
    if decode:
        context, generated = read_requests(trace, column, generated_column)
        limits = {"max_num_seqs": max_num_seqs, "block_size": block_size, "max_model_len": max_model_len,
                  "max_num_batched_tokens": max_num_batched_tokens, "num_blocks": num_blocks}
        results, info = _decode_results(strategy, compared, bucket_file, limits, context, generated, max_buckets)
        shapes = None
    else:
        columns = [c.strip() for c in column.split(",")]
        if len(columns) > 1:
            raise ConfigError("prompt simulation takes one --column; for (batch, blocks) shapes use --decode")
        shapes = read_trace(trace, columns[0])
        if bmax is None:
            bmax = int(-(-int(shapes.max()) // step) * step) if len(shapes) else step
        budget = max_buckets if max_buckets is not None else limit
        spec = RangeSpec(strategy, step=step, max=bmax, min=bmin, limit=budget, pad_max=pad_max,
                         pad_percent=pad_percent, file=bucket_file)
        results = _prompt_results(spec, compared, shapes)
        info = {}
    if plot:
        from warmgraph.cli.plot import plot_results

        plot_results(plot, results, shapes, decode)
    if as_json:
        emit_json({**results[0], **info, "compare": results[1:] if compared else [], "plot": plot})
        return
    _print(results, info, plot, decode)


def _check_options(strategy: str, compared: list[str], step: int, limit: int | None, max_buckets: int | None,
                   bucket_file: str | None) -> None:
    """Mistakes to refuse before the trace is read."""
    if step < 1:
        raise click.UsageError(f"--step is {step}; give a step of at least 1")
    for flag, value in (("--limit", limit), ("--max-buckets", max_buckets)):
        if value is not None and value < 1:
            raise click.UsageError(f"{flag} is {value}; give at least 1")
    if bucket_file is not None and "file" not in (strategy, *compared):
        raise click.UsageError(f"--file {bucket_file} is used only with --strategy file or --compare file")


def _print(results: list[dict[str, Any]], info: dict[str, Any], plot: str | None, decode: bool) -> None:
    first = results[0]
    what = "decode (batch, blocks) shapes" if decode else "shapes"
    click.echo(f"{first['num_shapes']} {what}" + (f" from {info['decode_steps']} decode steps" if info else ""))
    if info.get("rejected_requests"):
        click.echo(f"{info['rejected_requests']} requests longer than --max-model-len were left out")
    rows = []
    for r in results:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items() if k not in ("file",))
        rows.append([r["strategy"], params, r["num_buckets"], pct(r["padding_waste"]), pct(r["hit_rate"]),
                     r["padding_p50"], r["padding_p99"]])
    click.echo(table(["strategy", "params", "buckets", "waste", "hit rate", "pad p50", "pad p99"], rows))
    if not decode:
        click.echo(f"{first['strategy']} buckets: " + " ".join(map(str, first["buckets"])))
    if plot:
        click.echo(f"wrote {plot}")
