"""The engine on a CUDA GPU: capture backends against eager, one JSON object. Needs an NVIDIA GPU.

For the embedded default model on ``--device cuda``: the eager engine's greedy tokens and
decode speed, then for each capture backend (``cuda_graph:aot``, ``cuda_graph:inductor``) a
cold warmup (layer graphs compiled in worker processes, then every step captured), the same
prompts' tokens (equal to eager or not, and where they first differ), decode tokens/s at batch
1 and 8, warmup and capture seconds, and device memory (captures and peak). Without CUDA it
prints ``{"skipped": ...}`` and exits 0: there is nothing honest to time on a CPU.

Usage: python bench/device_check.py [--workers 8] [--backends cuda_graph:aot,cuda_graph:inductor]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PROMPTS = ["the cat watches the river and", "hello", "a small dog finds three apples", "the old engineer builds",
           "every student reads the long letter", "my neighbour opens", "the red fox follows", "three apples"]
MAX_TOKENS = 32


def decode_rate(engine: Any, batch: int) -> float:
    from warmgraph.engine import SamplingParams

    best = 0.0
    for _ in range(3):
        stats = engine.generate(PROMPTS[:batch], SamplingParams(max_tokens=MAX_TOKENS))["stats"]
        best = max(best, stats["decode_tokens_per_s"] or 0.0)
    return round(best, 1)


def tokens(engine: Any) -> list[list[int]]:
    from warmgraph.engine import SamplingParams

    out = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS))
    assert out["stats"]["eager_fallbacks"] == 0, out["stats"]
    return [c["token_ids"] for c in out["completions"]]


def first_difference(a: list[list[int]], b: list[list[int]]) -> dict[str, int] | None:
    for i, (x, y) in enumerate(zip(a, b)):
        for j, (u, v) in enumerate(zip(x, y)):
            if u != v:
                return {"prompt": i, "token": j}
        if len(x) != len(y):
            return {"prompt": i, "token": min(len(x), len(y))}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--backends", default="cuda_graph:aot,cuda_graph:inductor")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device: run this on an NVIDIA GPU"}))
        return
    from warmgraph.engine import Engine, EngineConfig, serving_limits
    from warmgraph.models.loader import load_checkpoint
    from warmgraph.models.tiny import ensure_tiny_model

    limits = serving_limits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=128, block_size=64)  # 10 graphs
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "limits": {k: getattr(limits, k) for k in ("max_num_seqs", "max_num_batched_tokens",
                                                                          "max_model_len", "block_size")},
                              "backends": {}}
    with tempfile.TemporaryDirectory(prefix="warmgraph-device-check-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # a cold start, as a new machine
        path = ensure_tiny_model(Path(tmp))
        model, tokenizer, _ = load_checkpoint(path)
        eager = Engine(model, tokenizer, EngineConfig(serving=limits, backend="eager", device="cuda", cache=None))
        eager.warmup()
        reference = tokens(eager)
        result["eager"] = {"decode_tokens_per_s": {f"batch_{b}": decode_rate(eager, b) for b in (1, 8)}}
        for name in args.backends.split(","):
            print(f"{name} ...", file=sys.stderr)
            model, tokenizer, _ = load_checkpoint(path)
            torch.cuda.reset_peak_memory_stats()
            engine = Engine(model, tokenizer, EngineConfig(serving=limits, backend=name, device="cuda",
                                                           cache=Path(tmp) / "graphs"))
            t0 = time.perf_counter()
            report = engine.warmup(workers=args.workers if engine.prefill.layer.persists else 1)
            warmup_s = time.perf_counter() - t0
            got = tokens(engine)
            rates = {f"batch_{b}": decode_rate(engine, b) for b in (1, 8)}
            totals = report.to_dict()
            result["backends"][name] = {
                "graphs": len(report.entries), "captured": report.captured,
                "warmup_s": round(warmup_s, 2),
                "capture_s": round(sum(e.capture_seconds for e in report.entries), 3),
                "capture_device_bytes": totals["device_bytes"], "buffer_bytes": totals["buffer_bytes"],
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                "tokens_equal_eager": got == reference, "first_difference": first_difference(got, reference),
                "decode_tokens_per_s": rates,
                "speedup_vs_eager": {k: round(v / result["eager"]["decode_tokens_per_s"][k], 2)
                                     for k, v in rates.items()},
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
