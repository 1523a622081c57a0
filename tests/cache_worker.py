"""One warmup through the graph cache, as a separate process, for the fault tests and benchmarks.

Usage::

    python tests/cache_worker.py --cache DIR [--buckets 1,2] [--backend aot] [--model mlp] [--seed 0]

Builds a toy model with a fixed seed (so every process has the same weights), compiles a
runner with ``cache=DIR``, runs ``warmup()``, compares the runner with eager at a few real
shapes, and prints ONE JSON line on stdout: counters, compiled, loaded, warmup seconds, max
abs error, pid. Exits 1 when an output does not match eager. Everything else (warnings,
torch's chatter) goes to stderr.

It imports only the standard library, torch and warmgraph: it runs where the tests run but
needs nothing from pytest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()

# Run as a script, sys.path[0] is tests/: make the checkout's warmgraph importable even
# when it is not installed in the interpreter that runs this file.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import warmgraph  # noqa: E402
from warmgraph.models.toy import MLP, DecoderStack  # noqa: E402

SEQ, HIDDEN = 16, 64


def build(model: str, largest: int) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    """The model and one call's example inputs at the largest bucket."""
    if model == "mlp":
        return MLP(HIDDEN).eval(), (torch.randn(largest, HIDDEN),)
    if model == "decoder":
        example = (torch.randn(largest, SEQ, HIDDEN), torch.full((largest,), SEQ))
        return DecoderStack(layers=4, hidden=HIDDEN, heads=4).eval(), example
    raise SystemExit(f"unknown model {model!r}; use mlp or decoder")


def inputs_for(model: str, n: int) -> tuple[Any, ...]:
    if model == "mlp":
        return (torch.randn(n, HIDDEN),)
    # Ragged lengths, some rows shorter than the sequence: the padding mask is exercised too.
    return (torch.randn(n, SEQ, HIDDEN), torch.randint(1, SEQ + 1, (n,)))


def check_shapes(buckets: list[int]) -> list[int]:
    """The smallest and largest bucket exactly, and one batch between them that needs padding."""
    lo, hi = min(buckets), max(buckets)
    between = [n for n in range(lo + 1, hi) if n not in buckets]
    return sorted({lo, hi, *between[-1:]})


def wait_for_peers(barrier: Path, parties: int, timeout: float = 300.0) -> None:
    """Announce this process in ``barrier`` and wait until ``parties`` have: importing torch
    takes each process a different time, and the lock race is only real if warmups overlap."""
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob("*.ready"))) < parties:
        if time.monotonic() > deadline:
            print(f"worker {os.getpid()}: barrier timed out, starting anyway", file=sys.stderr, flush=True)
            return
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="graph cache root")
    parser.add_argument("--buckets", default="1,2", help="comma-separated batch buckets")
    parser.add_argument("--backend", default="aot")
    parser.add_argument("--model", default="mlp", choices=("mlp", "decoder"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store-delay", type=float, default=0.0,
                        help="seconds to sleep after the backend saved its files into tmp/ and before the entry is "
                             "finished (stands in for a slow disk, so a kill can land mid-write)")
    parser.add_argument("--barrier", default=None,
                        help="a directory: after startup, wait until --parties workers have reached it, so that "
                             "they all start warmup together (concurrency tests)")
    parser.add_argument("--parties", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    buckets = [int(b) for b in args.buckets.split(",") if b.strip()]
    torch.manual_seed(args.seed)
    model, example = build(args.model, max(buckets))
    runner = warmgraph.compile(model, buckets=buckets, example_inputs=example, backend=args.backend, cache=args.cache)
    if args.store_delay > 0:
        backend = runner.backend
        save = backend.save

        def slow_save(graph: Any, directory: Path) -> list[str]:
            names = save(graph, directory)
            print(f"worker {os.getpid()}: saved {names} into {directory}, holding {args.store_delay}s",
                  file=sys.stderr, flush=True)
            time.sleep(args.store_delay)
            return names

        backend.save = slow_save  # type: ignore[method-assign]
    import_s = time.perf_counter() - _T0
    if args.barrier:
        wait_for_peers(Path(args.barrier), args.parties)
    report = runner.warmup()

    torch.manual_seed(args.seed + 1)
    max_err, ok = 0.0, True
    for n in check_shapes(buckets):
        inputs = inputs_for(args.model, n)
        with torch.no_grad():
            expected = model(*inputs)
        got = runner(*inputs)
        if got.shape != expected.shape:
            ok, max_err = False, float("inf")
            break
        max_err = max(max_err, (got - expected).abs().max().item())
        ok = ok and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)

    result = {
        "pid": os.getpid(),
        "counters": dict(runner.counters),
        "compiled": report.compiled,
        "loaded": report.loaded,
        "warmup_s": round(report.seconds, 4),
        "startup_s": round(import_s, 4),
        "max_abs_err": max_err,
        "ok": bool(ok),
    }
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
