"""Runtime benchmark: dispatch overhead of GraphRunner, and calls/s of eager, inductor and aot.

The model is a small decoder-block stack (``warmgraph.models.toy.DecoderStack``: RMSNorm,
causal attention with a padding mask, SwiGLU), input ``(batch, seq, hidden)`` plus lengths,
bucketed on batch. Prints one JSON object:

  dispatch_overhead_us: runner call minus a direct call of the same graph, at an exact
      bucket shape and at a shape that needs padding (the padding copies included);
  calls_per_s.<backend>.batch_<n>: through the runner, best of several timed rounds;
  aot_vs_eager_batch_1: the speed-up goal (>= 2x);
  warmup_s.<backend>: time to compile both buckets.

Usage: python bench/runtime.py [--layers 4 --hidden 64 --seq 16 --seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

import warmgraph
from warmgraph.models.toy import DecoderStack

BATCHES = (1, 8)


def rate(fn: Callable[[], Any], seconds: float, rounds: int = 5) -> float:
    """Calls per second, best of ``rounds`` rounds of about ``seconds / rounds`` each."""
    fn()
    per_round = seconds / rounds
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= per_round and n >= 20:
                break
        best = max(best, n / elapsed)
    return best


def dispatch_overhead(example: tuple[torch.Tensor, torch.Tensor], seconds: float) -> dict[str, float]:
    """Runner call minus a direct call of the same graph, on a graph so cheap that the
    difference is not lost in the graph's own timing noise (it does not depend on the graph).

    ``exact_bucket``: a call already at a bucket's shape (validation, lookup, dispatch).
    ``padded_5_to_8``: a call padded from batch 5 to 8 (adds the padding copies of both
    inputs and the output slice: work any padding scheme must do, measured here on this CPU).
    """

    def graph(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return x

    runner = warmgraph.compile(graph, buckets=list(BATCHES), example_inputs=example, backend="eager")
    runner.warmup()
    small = (example[0][:5].clone(), example[1][:5].clone())
    prepadded = runner._padded((8,), (5,), small)
    return {
        "exact_bucket": round(
            1e6 / rate(lambda: runner(*example), seconds) - 1e6 / rate(lambda: graph(*example), seconds), 2
        ),
        "padded_5_to_8": round(
            1e6 / rate(lambda: runner(*small), seconds) - 1e6 / rate(lambda: graph(*prepadded), seconds), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DecoderStack(args.layers, args.hidden, heads=4).eval()
    inputs = {b: (torch.randn(b, args.seq, args.hidden), torch.full((b,), args.seq)) for b in BATCHES}
    result: dict[str, Any] = {"model": {"layers": args.layers, "hidden": args.hidden, "seq": args.seq},
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "warmup_s": {}, "calls_per_s": {}}
    runners = {}
    for backend in ("eager", "inductor", "aot"):
        runner = warmgraph.compile(model, buckets=list(BATCHES), example_inputs=inputs[8], backend=backend)
        result["warmup_s"][backend] = round(runner.warmup().seconds, 2)
        runners[backend] = runner
        result["calls_per_s"][backend] = {
            f"batch_{b}": round(rate(lambda r=runner, x=inputs[b]: r(*x), args.seconds)) for b in BATCHES
        }
        for b in BATCHES:  # every backend gives the eager answer
            torch.testing.assert_close(runner(*inputs[b]), model(*inputs[b]).detach(), rtol=1e-4, atol=1e-4)
        assert runner.counters["recompiles"] == 0 and runner.counters["eager_fallbacks"] == 0

    result["dispatch_overhead_us"] = dispatch_overhead(inputs[8], args.seconds)
    eager1 = result["calls_per_s"]["eager"]["batch_1"]
    result["aot_vs_eager_batch_1"] = round(result["calls_per_s"]["aot"]["batch_1"] / eager1, 2)
    result["inductor_vs_eager_batch_1"] = round(result["calls_per_s"]["inductor"]["batch_1"] / eager1, 2)
    result["aot_vs_eager_batch_8"] = round(
        result["calls_per_s"]["aot"]["batch_8"] / result["calls_per_s"]["eager"]["batch_8"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
