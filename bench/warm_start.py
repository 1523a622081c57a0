"""Warm process start to first token, against a bare ``import torch``. One JSON object.

Runs ``warmgraph generate --prompt "The capital of France is" --max-tokens 1`` on the default
model with a warm graph cache (one untimed run first fills it), and ``python -c "import torch"``
in the same interpreter, interleaved for ``--rounds`` rounds. Reports both medians, the ratio
of the medians (the goal is <= 1.3) and the median of the per-round ratios; the machine's speed
drifts between rounds, so only numbers from one run are compared.

Usage: python bench/warm_start.py [--rounds 7] [--cache-dir DIR] [--model smollm2|tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "The capital of France is"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "warmgraph"))
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    args = parser.parse_args()
    generate = [sys.executable, "-m", "warmgraph", "generate", "--model", args.model, "--cache-dir", args.cache_dir,
                "--prompt", PROMPT, "--max-tokens", "1", "--json"]
    first = subprocess.run(generate, check=True, capture_output=True, text=True)  # fills the cache if it is cold
    out = json.loads(first.stdout)
    bare, warm = [], []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr)
        bare.append(timed([sys.executable, "-c", "import torch"]))
        warm.append(timed(generate))
    result = {
        "model": out["model"], "prompt": PROMPT, "first_token": out["completions"][0]["text"], "rounds": args.rounds,
        "import_torch_s": [round(t, 3) for t in bare], "generate_1_token_s": [round(t, 3) for t in warm],
        "import_torch_median_s": round(statistics.median(bare), 3),
        "generate_median_s": round(statistics.median(warm), 3),
        "ratio_of_medians": round(statistics.median(warm) / statistics.median(bare), 3),
        "median_of_round_ratios": round(statistics.median(w / b for w, b in zip(warm, bare)), 3),
        "goal": "ratio <= 1.3",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
