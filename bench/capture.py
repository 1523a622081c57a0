"""CUDA-graph benchmark: a small decoder step at batch 1 to 64, eager vs cuda_graph vs
inductor-then-capture, through GraphRunner. Needs an NVIDIA GPU.

Prints one JSON object: per backend, warmup seconds and microseconds per call at each
batch size (the runner pads to the next bucket), plus speed-ups over eager. Without CUDA it
prints ``{"skipped": "..."}`` and exits 0: there is nothing honest to time on a CPU.

Usage: python bench/capture.py [--layers 4 --hidden 256 --seq 1]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import warmgraph
from warmgraph.compiler.registry import get_backend
from warmgraph.models.toy import DecoderStack

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def us_per_call(fn: Any, iters: int = 200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq", type=int, default=1, help="tokens per sequence in the step (1: decode)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device: run this on an NVIDIA GPU"}))
        return
    torch.manual_seed(0)
    model = DecoderStack(args.layers, args.hidden, heads=8).cuda().eval()
    example = (torch.randn(64, args.seq, args.hidden, device="cuda"), torch.full((64,), args.seq, device="cuda"))
    backends = {
        "eager": "eager",
        "cuda_graph": get_backend("cuda_graph"),
        "inductor_then_capture": get_backend("cuda_graph", inner="inductor"),
    }
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "model": vars(args), "warmup_s": {}, "us_per_call": {}}
    for name, backend in backends.items():
        runner = warmgraph.compile(model, buckets=list(BATCHES), example_inputs=example, backend=backend)
        result["warmup_s"][name] = round(runner.warmup().seconds, 2)
        timings = {}
        for b in BATCHES:
            x = (torch.randn(b, args.seq, args.hidden, device="cuda"), torch.full((b,), args.seq, device="cuda"))
            torch.testing.assert_close(runner(*x), model(*x).detach(), rtol=2e-3, atol=2e-3)
            timings[f"batch_{b}"] = round(us_per_call(lambda r=runner, x=x: r(*x)), 1)
        result["us_per_call"][name] = timings
    eager = result["us_per_call"]["eager"]
    result["speedup_vs_eager"] = {
        name: {k: round(eager[k] / v, 2) for k, v in t.items()}
        for name, t in result["us_per_call"].items() if name != "eager"
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
