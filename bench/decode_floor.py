"""Decode floor: how fast can one batch-1 decode step of SmolLM2-135M read its weights here? One JSON object.

A batch-1 decode step reads every weight once (fp32: 30 layers' seven projections, 425 MB, and
the tied 113 MB LM head), so its time is bounded below by the time it takes to stream those
bytes. This measures, on the real fp32 checkpoint, in one process, interleaved over
``--repeats`` rounds (medians), at each thread count of ``--threads``:

  stream: ``tensor.sum()`` over every weight tensor, one after another: the bytes read as fast
    as a plain vectorised reduction reads them, the best a matrix-vector kernel could hope for;
  torch_linear: ``F.linear`` of one row over every weight (MKL's kernel, what warmgraph's
    graphs and transformers both call);
  onednn_linear: the same through oneDNN (``mkldnn._linear_pointwise``);
  inductor_layer: each layer's projections (and the LM head) as one ``torch.compile`` graph
    that takes the weights as inputs, as warmgraph's layer graphs do: Inductor calls MKL;
  inductor_layer_decomposed: the same graph with Inductor's ``decompose_mm_pass`` (a one-row
    matmul becomes a multiply and a row sum, which Inductor generates as its own vectorised
    loop; its size limit raised to cover the LM head);
and transformers' eager decode at batch 1 (fp32, ``generate``, the N+1-minus-1 difference of
``bench/peers.py``) in the same run. ``ceiling_vs_transformers`` is the speedup over
transformers a step would have if it did nothing but stream its weights: the most any engine
reading fp32 weights can reach on this machine, whatever it saves in launches.

Usage: python bench/decode_floor.py [--threads 1,2] [--repeats 5] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers.py beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="Comma-separated thread counts [1,2].")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(counts)))

    import torch
    import torch.nn.functional as F
    from peers import PROMPTS, transformers_peer
    from safetensors.torch import load_file

    from warmgraph.models.loader import load_checkpoint
    from warmgraph.models.smollm2 import ensure_smollm2

    model_dir = ensure_smollm2(progress=False)
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    groups: dict[str, list[torch.Tensor]] = {}  # a layer's projections; the embedding (the tied LM head)
    for name, t in sorted(tensors.items()):
        if t.dim() == 2 and (name.endswith("proj.weight") or "embed_tokens" in name or "lm_head" in name):
            groups.setdefault(name.split(".self_attn")[0].split(".mlp")[0], []).append(t.float().contiguous())
    weights = [w for group in groups.values() for w in group]
    nbytes = sum(w.numel() * 4 for w in weights)
    x = torch.randn(1, max(w.shape[1] for w in weights))
    rows = {k: x[:, :k].contiguous() for k in {w.shape[1] for w in weights}}

    def project(group: list[torch.Tensor]) -> list[torch.Tensor]:
        return [F.linear(rows[w.shape[1]], w) for w in group]

    decompose = {"decompose_mm_pass": {"cpu_max_other_dimension_decomposition": 1 << 17}}
    compiled = {
        "inductor_layer": torch.compile(project, dynamic=False, options={"cpp.dynamic_threads": True}),
        "inductor_layer_decomposed": torch.compile(project, dynamic=False, options={
            "cpp.dynamic_threads": True, "post_grad_fusion_options": decompose}),
    }
    reference = [y for g in groups.values() for y in project(g)]
    max_error = {name: max((a - b).abs().max().item() for a, b in zip(
        reference, [y for g in groups.values() for y in fn(g)], strict=True)) for name, fn in compiled.items()}

    def graphs(fn: object) -> object:
        def run() -> None:
            for group in groups.values():
                fn(group)  # type: ignore[operator]
        return run

    def stream() -> None:
        for w in weights:
            w.sum()

    def torch_linear() -> None:
        for w in weights:
            F.linear(x[:, : w.shape[1]], w)

    def onednn_linear() -> None:
        for w in weights:
            torch.ops.mkldnn._linear_pointwise(x[:, : w.shape[1]].contiguous(), w, None, "none", [], "")

    _, tokenizer, config = load_checkpoint(model_dir, "fp32")
    hf = transformers_peer(model_dir, "fp32", [list(tokenizer.encode(p).ids) for p in PROMPTS],
                           set(config.eos_token_ids))

    def transformers_step() -> float:
        t = time.perf_counter()
        hf.run(1, 1 + args.tokens)
        long = time.perf_counter() - t
        t = time.perf_counter()
        hf.run(1, 1)
        return (long - (time.perf_counter() - t)) / args.tokens

    kernels = {"stream": stream, "torch_linear": torch_linear, "onednn_linear": onednn_linear,
               **{name: graphs(fn) for name, fn in compiled.items()}}
    samples: dict[str, list[float]] = {}
    for n in counts:  # one untimed pass each: page the weights in, build oneDNN's primitives
        torch.set_num_threads(n)
        for fn in kernels.values():
            fn()
    for r in range(args.repeats):
        for n in counts[r % len(counts):] + counts[: r % len(counts)]:
            torch.set_num_threads(n)
            for name, fn in kernels.items():
                t = time.perf_counter()
                fn()
                samples.setdefault(f"{name}.t{n}", []).append(time.perf_counter() - t)
            samples.setdefault(f"transformers_step.t{n}", []).append(transformers_step())
    result: dict[str, dict[str, float]] = {}
    for key, values in samples.items():
        seconds = statistics.median(values)
        entry = {"ms": round(seconds * 1e3, 2)}
        if not key.startswith("transformers"):
            entry["GB_per_s"] = round(nbytes / seconds / 1e9, 2)
        result[key] = entry
    ceiling = {f"t{n}": round(statistics.median(samples[f"transformers_step.t{n}"])
                              / statistics.median(samples[f"stream.t{n}"]), 3) for n in counts}
    print(json.dumps({"model": model_dir.name, "weights": len(weights), "weight_MB": round(nbytes / 1e6, 1),
                      "repeats": args.repeats, "per_step": result,
                      "max_abs_error_vs_torch_linear": max_error, "ceiling_vs_transformers": ceiling,
                      "goal_issue_9": "decode batch 1 >= 1.5x transformers, same dtype"}))


if __name__ == "__main__":
    main()
