"""Bucketing benchmark: strategies on the Azure traces at equal bucket counts, and lookup speed.

Prints one JSON object:
  traces.<name>.strategies.<strategy>: buckets, padding_waste, hit_rate at N buckets (prompt
      lengths, step 128, max 8192), with fitted also judged held out (fit on even rows,
      judged on odd rows) against fitting on the odd rows directly;
  traces.<name>.decode: decode (batch, blocks) shapes from a continuous-batching simulation,
      exponential plan vs fitted at the plan's bucket count;
  lookup: microseconds per single lookup (1-D, 3-D) and shapes/s of the batch path.

Usage: python bench/bucketing.py [--workloads DIR] [--buckets 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from warmgraph.bucketing import BucketSet
from warmgraph.bucketing.fitted import fit, fit_1d
from warmgraph.bucketing.plans import ServingConfig, plan_buckets
from warmgraph.bucketing.strategies import RangeSpec, at_count
from warmgraph.bucketing.workload import evaluate, read_requests, read_trace, simulate_decode

STEP, MAX = 128, 8192


def strategies_at(values: np.ndarray, n: int) -> dict[str, dict]:
    out = {}
    for name in ("exponential", "linear", "padding_aware", "fitted"):
        spec, buckets = at_count(RangeSpec(name, step=STEP, max=MAX), n, values)
        report = evaluate(buckets, values)
        out[name] = {"params": spec.params(), "num_buckets": len(buckets), "buckets": buckets.to_list(),
                     "padding_waste": round(report.padding_waste, 4), "hit_rate": round(report.hit_rate, 5)}
    train, test = values[0::2], values[1::2]
    held = evaluate(BucketSet(fit_1d(train, STEP, MAX, max_buckets=n)), test).padding_waste
    direct = evaluate(BucketSet(fit_1d(test, STEP, MAX, max_buckets=n)), test).padding_waste
    out["fitted"]["held_out"] = {"waste_fit_on_even_judged_on_odd": round(held, 4),
                                 "waste_fit_on_odd_judged_on_odd": round(direct, 4),
                                 "relative_gap": round(held / direct - 1, 4)}
    out["fitted_vs_exponential_waste_ratio"] = round(
        out["fitted"]["padding_waste"] / out["exponential"]["padding_waste"], 4)
    return out


def decode_comparison(path: Path) -> dict:
    context, generated = read_requests(path)
    config = ServingConfig(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=16384, num_blocks=16384)
    sim = simulate_decode(context, generated, max_num_seqs=256, block_size=128, max_model_len=16384)
    plan = plan_buckets(config, "exponential", env={})
    exp2d = BucketSet({(b[0], b[2]) for b in plan.decode}, dims=("batch", "blocks"))
    t0 = time.perf_counter()
    fitted = fit(sim.shapes, steps=(1, 128), maxes=(256, int(sim.shapes[:, 1].max())), max_buckets=len(exp2d),
                 dims=("batch", "blocks"))
    fit_s = time.perf_counter() - t0
    e, f = evaluate(exp2d, sim.shapes), evaluate(fitted, sim.shapes)
    return {"decode_steps": int(sim.steps), "exponential": {"num_buckets": len(exp2d), "padding_waste":
            round(e.padding_waste, 4), "hit_rate": round(e.hit_rate, 5)},
            "fitted": {"num_buckets": len(fitted), "padding_waste": round(f.padding_waste, 4),
                       "hit_rate": round(f.hit_rate, 5), "fit_seconds": round(fit_s, 2)}}


def per_call_us(fn, args: list, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a in args:
            fn(a)
        best = min(best, (time.perf_counter() - t0) / len(args))
    return best * 1e6


def lookup_speed() -> dict:
    rng = np.random.default_rng(0)
    one = BucketSet(fit_1d(rng.integers(1, MAX, 5000), STEP, MAX, max_buckets=12))
    plan = plan_buckets(ServingConfig(256, 8192, 32768, 4127), "exponential", env={})
    three = plan.prompt
    v1 = [int(x) for x in rng.integers(1, MAX, 20000)]
    v3 = [(1, int(q), int(c)) for q, c in zip(rng.integers(1, 8192, 20000), rng.integers(0, 200, 20000))]
    shapes1 = rng.integers(1, MAX, 1_000_000)
    shapes3 = np.stack([np.ones(1_000_000, dtype=np.int64), rng.integers(1, 8192, 1_000_000),
                        rng.integers(0, 200, 1_000_000)], axis=1)
    t0 = time.perf_counter()
    evaluate(one, shapes1)
    t1 = time.perf_counter()
    evaluate(three, shapes3)
    t2 = time.perf_counter()
    return {"single_1d_us": round(per_call_us(one.lookup, v1), 3),
            "single_3d_us": round(per_call_us(three.lookup, v3), 3),
            "buckets_1d": len(one), "buckets_3d": len(three),
            "batch_simulation_shapes_per_s_1d": round(1_000_000 / (t1 - t0)),
            "batch_simulation_shapes_per_s_3d": round(1_000_000 / (t2 - t1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parents[2] / "shared" / "workloads"
    parser.add_argument("--workloads", type=Path, default=default_dir)
    parser.add_argument("--buckets", type=int, default=12)
    args = parser.parse_args()
    result: dict = {"step": STEP, "max": MAX, "num_buckets": args.buckets, "traces": {}}
    for name in ("conv", "code"):
        path = args.workloads / f"azure_llm_inference_2023_{name}.csv"
        if not path.exists():
            print(json.dumps({"error": f"{path} not found; pass --workloads DIR"}))
            sys.exit(2)
        values = read_trace(path, "ContextTokens")
        result["traces"][name] = {"requests": len(values), "strategies": strategies_at(values, args.buckets),
                                  "decode": decode_comparison(path)}
    result["lookup"] = lookup_speed()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
