"""``warmgraph convert-gguf``: a Llama-family GGUF file into a Hugging Face directory warmgraph loads."""

from __future__ import annotations

import time

import click

from warmgraph.cli.output import emit_json


@click.command("convert-gguf")
@click.argument("gguf_file")
@click.argument("out_dir")
# Both spellings, as everywhere else warmgraph takes a dtype (models.config.canonical_dtype).
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]),
              default="fp32", show_default=True,
              help="Weights dtype of the output (fp32/float32, bf16/bfloat16, fp16/float16); fp32 keeps the "
                   "dequantised values exactly.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
def convert_gguf(gguf_file: str, out_dir: str, dtype: str, as_json: bool) -> None:
    """Convert GGUF_FILE (llama architecture; F32/F16/BF16, Q4_0/Q4_1/Q5_x/Q8_0 and K-quants) into
    OUT_DIR: safetensors weights, config.json, tokenizer.json and the chat template.

    OUT_DIR must not exist (missing parents are created); it appears complete, in one rename, or
    not at all.
    """
    from warmgraph.models.gguf_convert import convert_gguf as convert
    from warmgraph.models.gguf_convert import resolve_out_dir

    start = time.perf_counter()
    out = resolve_out_dir(out_dir)  # before it exists: where the conversion puts it, reported absolute
    model = convert(gguf_file, out_dir, dtype, progress=not as_json)
    c = model.config
    result = {"gguf": str(model.path), "out_dir": str(out), "dtype": c.torch_dtype, "layers": c.num_hidden_layers,
              "hidden_size": c.hidden_size, "vocab_size": c.vocab_size, "tensor_types": model.tensor_types,
              "chat_template": isinstance(model.meta.get("tokenizer.chat_template"), str),
              "seconds": round(time.perf_counter() - start, 2)}
    if as_json:
        emit_json(result)
        return
    types = ", ".join(f"{n} {k}" for k, n in sorted(model.tensor_types.items()))
    click.echo(f"converted {model.path.name} ({types}) into {out} in {result['seconds']}s: "
               f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}, {c.torch_dtype}"
               + (", chat template" if result["chat_template"] else ""))
