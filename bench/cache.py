"""Graph cache benchmark: warmup of the aot backend from an empty cache (cold) and a full one (warm),
each in a fresh process, and what torch's own on-disk caches give the inductor backend.

The model is the small decoder-block stack (``warmgraph.models.toy.DecoderStack``, 4 layers,
hidden 64, 4 heads), input ``(batch, 16, 64)`` plus lengths, bucketed on batch 1..8, fixed
seed. Every measurement is a fresh Python process (this script with ``--child``), timed from
the outside (``*_process_s``: interpreter, torch import, model, warmup, a check against
eager) and from the inside (``*_warmup_s``: the runner's own ``warmup().seconds``).

  aot: cold = empty graph cache (and an empty private TORCHINDUCTOR_CACHE_DIR: a new machine),
       warm = the same graph cache, now full. Goal: warm warmup <= 5% of cold.
  inductor: warmgraph stores no inductor graphs; cold = empty TORCHINDUCTOR_CACHE_DIR, warm =
       the same directory after one run (Inductor's FX graph cache and AOTAutograd cache are
       hits, Dynamo still traces every bucket). This is the data behind that decision.

Prints one JSON object on stdout; progress goes to stderr. Takes several minutes on 2 cores.

Usage: python bench/cache.py [--buckets 1,2,3,4,5,6,7,8] [--layers 4 --hidden 64 --seq 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL = 0.05  # warm warmup at most 5% of cold


def child(args: argparse.Namespace) -> None:
    """One warmup in this fresh process; prints one JSON line."""
    t0 = time.perf_counter()
    import torch

    import warmgraph
    from warmgraph.models.toy import DecoderStack

    buckets = [int(b) for b in args.buckets.split(",")]
    torch.manual_seed(0)
    model = DecoderStack(layers=args.layers, hidden=args.hidden, heads=4).eval()
    largest = max(buckets)
    example = (torch.randn(largest, args.seq, args.hidden), torch.full((largest,), args.seq))
    runner = warmgraph.compile(model, buckets=buckets, example_inputs=example, backend=args.backend,
                               cache=args.cache or None)
    startup_s = time.perf_counter() - t0
    report = runner.warmup()
    # A fast warmup is worth nothing if the graphs are wrong: check a padded and an exact batch.
    for n in sorted({max(1, largest - 1), largest}):
        x, lengths = torch.randn(n, args.seq, args.hidden), torch.randint(1, args.seq + 1, (n,))
        with torch.no_grad():
            expected = model(x, lengths)
        torch.testing.assert_close(runner(x, lengths), expected, rtol=1e-4, atol=1e-4)
    # torch's own cache counters: did Inductor's FX graph cache / the AOTAutograd cache hit?
    torch_counters: dict[str, int] = {}
    if "torch._dynamo.utils" in sys.modules:
        seen = sys.modules["torch._dynamo.utils"].counters
        for group, name in (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                            ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss")):
            torch_counters[name] = int(seen[group][name])
    print(json.dumps({"warmup_s": report.seconds, "startup_s": startup_s, "compiled": report.compiled,
                      "loaded": report.loaded, "counters": dict(runner.counters), "torch_caches": torch_counters}),
          flush=True)


def run_child(args: argparse.Namespace, backend: str, cache: Path | None, inductor_dir: Path,
              label: str, logs: Path) -> dict[str, Any]:
    """Run one warmup in a fresh process; its JSON plus the process's wall time."""
    cmd = [sys.executable, __file__, "--child", "--backend", backend, "--buckets", args.buckets,
           "--layers", str(args.layers), "--hidden", str(args.hidden), "--seq", str(args.seq)]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    log = logs / f"{label}.log"
    print(f"[bench/cache] {label}: {backend}, cache={cache}, TORCHINDUCTOR_CACHE_DIR={inductor_dir} ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    process_s = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"[bench/cache] {label} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_s"] = process_s
    print(f"[bench/cache] {label}: warmup {result['warmup_s']:.2f}s ({result['compiled']} compiled, "
          f"{result['loaded']} loaded), process {process_s:.2f}s", file=sys.stderr, flush=True)
    return result


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", default="1,2,3,4,5,6,7,8")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="aot", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from warmgraph.graph_cache import GraphCache

    n_buckets = len({int(b) for b in args.buckets.split(",")})
    work = Path(tempfile.mkdtemp(prefix="warmgraph-bench-cache-"))
    try:
        graphs, logs = work / "graphs", work / "logs"
        logs.mkdir()
        aot_cold = run_child(args, "aot", graphs, work / "inductor-aot", "aot cold", logs)
        cache_bytes = GraphCache(graphs).total_bytes()
        aot_warm = run_child(args, "aot", graphs, work / "inductor-aot", "aot warm", logs)
        assert aot_cold["compiled"] == n_buckets and aot_warm["loaded"] == n_buckets, (aot_cold, aot_warm)

        inductor_dir = work / "inductor"
        ind_cold = run_child(args, "inductor", None, inductor_dir, "inductor cold", logs)
        inductor_bytes = dir_bytes(inductor_dir)
        ind_warm = run_child(args, "inductor", None, inductor_dir, "inductor warm", logs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch  # only for the versions reported below; the measurements ran in the children

    ratio = aot_warm["warmup_s"] / aot_cold["warmup_s"]
    result: dict[str, Any] = {
        "model": {"name": "DecoderStack", "layers": args.layers, "hidden": args.hidden, "heads": 4,
                  "seq": args.seq},
        "buckets": [int(b) for b in args.buckets.split(",")],
        "num_buckets": n_buckets,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backend": "aot",
        "cold_warmup_s": round(aot_cold["warmup_s"], 4),
        "warm_warmup_s": round(aot_warm["warmup_s"], 4),
        "cold_process_s": round(aot_cold["process_s"], 3),
        "warm_process_s": round(aot_warm["process_s"], 3),
        "warm_over_cold": round(ratio, 5),
        "warm_process_over_cold_process": round(aot_warm["process_s"] / aot_cold["process_s"], 4),
        "cold_startup_s": round(aot_cold["startup_s"], 3),
        "warm_startup_s": round(aot_warm["startup_s"], 3),
        "cache_bytes": cache_bytes,
        "warm_bytes_loaded": aot_warm["counters"]["bytes_loaded"],
        "goal": f"warm <= {GOAL:.0%} of cold",
        "goal_met": ratio <= GOAL,
        "cold_counters": {k: aot_cold["counters"][k] for k in ("compiles", "cache_misses", "cache_writes")},
        "warm_counters": {k: aot_warm["counters"][k] for k in ("compiles", "cache_hits", "bytes_loaded")},
        "aot_cold_inductor_cache": "empty private TORCHINDUCTOR_CACHE_DIR (a new machine)",
        "aot_cold_torch_caches": aot_cold["torch_caches"],
        "inductor": {
            "cold_warmup_s": round(ind_cold["warmup_s"], 4),
            "warm_warmup_s": round(ind_warm["warmup_s"], 4),
            "cold_process_s": round(ind_cold["process_s"], 3),
            "warm_process_s": round(ind_warm["process_s"], 3),
            "warm_over_cold": round(ind_warm["warmup_s"] / ind_cold["warmup_s"], 4),
            "warm_process_over_cold_process": round(ind_warm["process_s"] / ind_cold["process_s"], 4),
            "torchinductor_cache_bytes": inductor_bytes,
            "cold_torch_caches": ind_cold["torch_caches"],
            "warm_torch_caches": ind_warm["torch_caches"],
            "warm_vs_aot_warm_warmup": round(ind_warm["warmup_s"] / aot_warm["warmup_s"], 1),
            "caches": "TORCHINDUCTOR_CACHE_DIR: Inductor FX graph cache + AOTAutograd cache (torch defaults)",
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
