"""``warmgraph quant calibrate`` and ``warmgraph quant inspect``: FP8 checkpoints, made and costed.

``calibrate`` measures a float model (max-abs of every decoder linear's input and weight over
calibration text) or reads an INC measurement file, turns the measurement into per-tensor
scales with one of INC's methods, and writes a compressed-tensors FP8 checkpoint (the format
vLLM and transformers read). ``inspect`` reads only the scales of an FP8 checkpoint and says
how many graphs each runtime-scale-patching and trivial-scales mode would build.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from warmgraph.cli.output import emit_json, table
from warmgraph.errors import WarmgraphError


@click.group("quant")
def quant() -> None:
    """FP8: calibrate a model into an FP8 checkpoint, inspect one's scales and graph count."""


_METHODS = ["maxabs_hw", "maxabs_pow2", "maxabs_arbitrary", "unit_scale", "hw_aligned_single_scale"]


@quant.command("calibrate")
@click.argument("model_dir")
@click.argument("out_dir")
@click.option("--scale-method", default="maxabs_hw", show_default=True,
              help=f"INC's per-tensor scale method: {', '.join(_METHODS)}.")
@click.option("--calib", "calib_file", help="Calibration text: one sample per paragraph [a built-in set].")
@click.option("--scales-from", nargs=2, type=(click.Choice(["inc"]), str), default=None, metavar="inc PATH",
              help="Scales from an INC max-abs measurement file instead of running calibration text.")
@click.option("--save-measurements", "measure_prefix", metavar="PREFIX",
              help="Also write the measurement as INC's <PREFIX>_hooks_maxabs.json (and .npz).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="dtype of the unquantised tensors and the scales [the checkpoint's].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
def calibrate(model_dir: str, out_dir: str, scale_method: str, calib_file: str | None,
              scales_from: tuple[str, str] | None, measure_prefix: str | None, dtype: str | None,
              as_json: bool) -> None:
    """Write OUT_DIR, an FP8 (compressed-tensors, float-quantized) checkpoint of the float model in
    MODEL_DIR: e4m3 weights with per-tensor weight and input scales. OUT_DIR must not exist; it
    appears complete, in one rename, or not at all."""
    from warmgraph.quant.scale_methods import check_method
    from warmgraph.quant.settings import Fp8Settings

    start = time.perf_counter()
    check_method(scale_method, Fp8Settings.from_env().patching)
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        raise WarmgraphError(f"OUT_DIR {out} already exists; choose a new directory (nothing is overwritten)")
    if calib_file is not None and scales_from is not None:
        raise click.UsageError("give --calib or --scales-from, not both: the scales come from one measurement")
    from warmgraph.quant import calibrate as cal

    texts = cal.read_texts(calib_file) if calib_file else list(cal.DEFAULT_TEXTS)
    measured = None
    if scales_from is not None:
        from warmgraph.quant.inc import read_measurements

        measured = read_measurements(scales_from[1])  # bad files fail before the model loads
    from warmgraph.models.loader import load_checkpoint
    from warmgraph.quant.model import is_fp8, write_fp8_checkpoint

    model, tokenizer, config = load_checkpoint(model_dir)
    if is_fp8(model):
        raise WarmgraphError(f"{model_dir} is already an FP8 checkpoint; calibrate its float original")
    if measured is not None:
        measured = cal.with_model_weights(measured, model, scales_from[1])  # type: ignore[index]
    else:
        ids = [tokenizer.encode(t).ids for t in texts]
        bar = None
        if not as_json:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="calibrating", unit="sample")
        try:
            measured = cal.measure(model, ids, progress=(lambda n: bar.update()) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
    linears = cal.decoder_linears(config.num_hidden_layers)
    scales = cal.scales_from_measurement(measured, scale_method, linears)
    loss = write_fp8_checkpoint(model, tokenizer, config, scales, out, dtype or config.torch_dtype,
                                source=Path(model_dir).expanduser(), scale_method=scale_method)
    saved = None
    if measure_prefix:  # only once the checkpoint is there: a failed run leaves nothing
        from warmgraph.quant.inc import write_measurements

        saved = str(write_measurements(measure_prefix, {n: measured[n] for n in linears}))
    result = {"model": model_dir, "out_dir": str(out), "scale_method": scale_method,
              "source": "inc" if scales_from else "calibration", "samples": None if scales_from else len(texts),
              "linears": len(linears), "distinct_weight_scales": len({s for s, _ in scales.values()}),
              "distinct_input_scales": len({s for _, s in scales.values()}), "measurements": saved,
              "weights_zero": round(loss["zero"], 4), "weights_saturated": round(loss["saturated"], 4),
              "seconds": round(time.perf_counter() - start, 2)}
    if as_json:
        emit_json(result)
        return
    click.echo(f"wrote {out}: {len(linears)} FP8 linears ({scale_method}; {result['distinct_weight_scales']} distinct "
               f"weight and {result['distinct_input_scales']} input scales) in {result['seconds']}s"
               + (f"; measurements in {saved}" if saved else ""))
    if loss["zero"] > LOSS_WARNING or loss["saturated"] > LOSS_WARNING:
        click.echo(f"warning: {loss['zero']:.1%} of the FP8 weights are 0 and {loss['saturated']:.1%} at +-448: "
                   f"{scale_method}'s scales do not fit these weights; try maxabs_hw or maxabs_arbitrary", err=True)


# A share of FP8 weights flushed to zero or saturated past which a method is wrong for the model.
LOSS_WARNING = 0.05


@quant.command("inspect")
@click.argument("model_dir")
@click.option("--max-num-seqs", type=int, default=None, help="Serving limit of the bucket plan [the engine's].")
@click.option("--max-model-len", type=int, default=None, help="Serving limit of the bucket plan [the engine's].")
@click.option("--max-num-batched-tokens", type=int, default=None, help="Serving limit of the bucket plan.")
@click.option("--block-size", type=int, default=None, help="Serving limit of the bucket plan.")
@click.option("--trivial-variants", type=int, default=None, help="Variant cap per bucket [4].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
def inspect(model_dir: str, max_num_seqs: int | None, max_model_len: int | None,
            max_num_batched_tokens: int | None, block_size: int | None, trivial_variants: int | None,
            as_json: bool) -> None:
    """The scales of the FP8 checkpoint in MODEL_DIR and the graphs each mode would build: runtime
    scale patching on and off, trivial scales 0, 1 and 2, for the engine's bucket plan."""
    from warmgraph.bucketing.plans import plan_buckets
    from warmgraph.engine.config import DEFAULT_SERVING, serving_limits
    from warmgraph.quant.inspect import inspect_fp8
    from warmgraph.quant.settings import DEFAULT_CAP, Fp8Settings

    s = DEFAULT_SERVING

    def given(value: int | None, default: int) -> int:
        return default if value is None else value

    serving = serving_limits(max_num_seqs=given(max_num_seqs, s.max_num_seqs),
                             max_model_len=given(max_model_len, s.max_model_len),
                             max_num_batched_tokens=given(max_num_batched_tokens, s.max_num_batched_tokens),
                             block_size=given(block_size, s.block_size), max_num_prefill_seqs=s.max_num_prefill_seqs)
    if trivial_variants is not None and trivial_variants < 0:
        raise click.BadParameter("must be an integer >= 0", param_hint="--trivial-variants")
    cap = Fp8Settings(cap=DEFAULT_CAP if trivial_variants is None else trivial_variants).cap
    plan = plan_buckets(serving, "exponential")
    result: dict[str, Any] = inspect_fp8(model_dir, len(plan.prompt), len(plan.decode), cap)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['model']}: {result['layers']} layers, {result['linears']} FP8 linears; scale method "
               f"{result['scale_method'] or 'not recorded'}; values {result['scale_values']}")
    click.echo(f"{result['distinct_scale_tuples']} distinct scale tuples over {result['layers']} layers; trivial "
               f"patterns: mode 1 {result['trivial_patterns']['1']} ({result['layers_with_trivial']['1']} layers), "
               f"mode 2 {result['trivial_patterns']['2']} ({result['layers_with_trivial']['2']} layers)")
    rows = [["on" if m["runtime_scale_patching"] else "off", m["trivial_scales"], m["variants"], m["graphs"],
             m["capped_layers"]] for m in result["modes"]]
    b = result["buckets"]
    click.echo(f"graphs for {b['prompt']} prompt + {b['decode']} decode buckets (variant cap {cap}):")
    click.echo(table(["patching", "trivial", "variants", "graphs", "capped layers"], rows))
