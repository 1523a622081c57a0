"""Engine benchmark: the embedded default model, cold and warm, eager and aot. One JSON object.

Measured in one run, each start in a fresh process with its own empty graph cache and
Inductor cache (a new machine):
  cold_warmup_s / warm_warmup_s: ``warmgraph warmup`` (its own timing) cold, then warm;
  cold_process_s / warm_process_s: the same commands' wall time, Python and torch start included;
  start_to_first_token_s: wall time of a warm ``warmgraph generate --max-tokens 1`` process;
  decode_tokens_per_s.{eager,aot}.batch_{1,8}: decode throughput through the engine;
  graphs: how many graphs a warmup builds (prompt + decode buckets; one serves every layer).

Usage: python bench/engine.py [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

LIMITS = ["--max-num-seqs", "8", "--max-num-batched-tokens", "64", "--max-model-len", "256", "--block-size", "32"]
PROMPTS = ["the cat watches the river and", "hello", "a small dog finds three apples", "the old engineer builds",
           "every student reads the long letter", "my neighbour opens", "the red fox follows", "three apples"]


def run(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "warmgraph", *args, *LIMITS, "--json"], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout), time.perf_counter() - t0


def decode_rates(cache: str) -> dict[str, dict[str, float]]:
    """Decode tokens/s at batch 1 and 8 for eager and aot (aot graphs loaded from ``cache``)."""
    import torch

    from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
    from warmgraph.models.loader import load_checkpoint
    from warmgraph.models.tiny import ensure_tiny_model

    torch.set_num_threads(1)  # tiny matmuls: extra threads only add barriers, for both backends alike
    model, tokenizer, _ = load_checkpoint(ensure_tiny_model())
    rates: dict[str, dict[str, float]] = {}
    for backend in ("eager", "aot"):
        limits = serving_limits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, block_size=32)
        engine = Engine(model, tokenizer, EngineConfig(serving=limits, backend=backend, cache=cache))
        engine.warmup()
        rates[backend] = {}
        for batch in (1, 8):
            best = 0.0
            for _ in range(3):
                stats = engine.generate(PROMPTS[:batch], SamplingParams(max_tokens=64))["stats"]
                best = max(best, stats["decode_tokens_per_s"] or 0.0)
            rates[backend][f"batch_{batch}"] = best
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="warmgraph-bench-engine-") as tmp:
        env = {**os.environ, "WARMGRAPH_CACHE_DIR": os.path.join(tmp, "cache"),
               "TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor"), "PYTHONWARNINGS": "ignore"}
        print("cold warmup ...", file=sys.stderr)
        cold, cold_wall = run(["warmup", "--workers", str(args.workers)], env)
        print("warm warmup ...", file=sys.stderr)
        warm, warm_wall = run(["warmup", "--workers", str(args.workers)], env)
        first, first_wall = run(["generate", "--prompt", "hello", "--max-tokens", "1"], env)
        os.environ.update(WARMGRAPH_CACHE_DIR=env["WARMGRAPH_CACHE_DIR"])
        print("decode throughput ...", file=sys.stderr)
        rates = decode_rates(env["WARMGRAPH_CACHE_DIR"])
    result = {
        "limits": dict(zip(LIMITS[::2], LIMITS[1::2])), "workers": args.workers,
        "graphs": cold["buckets"], "prompt_graphs": cold["prompt"], "decode_graphs": cold["decode"],
        "cold_warmup_s": cold["seconds"], "warm_warmup_s": warm["seconds"],
        "warm_over_cold": round(warm["seconds"] / cold["seconds"], 5),
        "cold_process_s": round(cold_wall, 2), "warm_process_s": round(warm_wall, 2),
        "cold_compiled": cold["compiled"], "warm_loaded": warm["loaded"],
        "start_to_first_token_s": round(first_wall, 2),
        "first_token_in_process_s": first["stats"]["time_to_first_token_s"],
        "decode_tokens_per_s": rates,
        "aot_vs_eager_decode_batch_1": round(rates["aot"]["batch_1"] / rates["eager"]["batch_1"], 2),
        "aot_vs_eager_decode_batch_8": round(rates["aot"]["batch_8"] / rates["eager"]["batch_8"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
