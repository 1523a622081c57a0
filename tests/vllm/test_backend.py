"""warmgraph's backend inside a real vLLM (mode 2): output, counters, warm starts, faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vllm_helpers import BACKEND, MODE2, run_llm, vllm_env


def _packages(caches: Path) -> list[Path]:
    return sorted((caches / "warmgraph" / "entries").glob("*/graph.pt2"))


def test_cold_then_warm_equals_vllm_eager(tiny_vllm_model: Path, eager_tokens: list[list[int]],
                                          tmp_path: Path) -> None:
    env = vllm_env(tmp_path, WARMGRAPH_VLLM_SIZES="1,2")
    cold, _ = run_llm(tiny_vllm_model, env, MODE2)
    assert cold["tokens"] == eager_tokens
    counters = cold["counters"]
    # two layers cut at their attentions: three distinct pieces (before, between, after), each
    # with sizes 1 and 2 and the dynamic graph: compiled (by forked workers), then loaded here;
    # size 1 streams the weights recovered from vLLM's oneDNN handles
    assert cold["pieces"] == [1, 1, 1] and cold["streaming"] is True and cold["weights_source"] == "recovered"
    assert cold["buckets"] == [[1], [2], [1, 16384]] * 3
    assert counters["compiles"] == 9 and counters["cache_writes"] == 9 and counters["cache_hits"] == 9
    assert counters["replays"] >= MAX_DECODE_STEPS  # the two prompts decode together: size 2
    assert counters["dynamic_calls"] >= 1  # the prefill
    # vLLM's memory-profile run (the KV cache size is explicit here) built the graphs, then was
    # answered with zeros instead of a forward pass of its largest token count
    assert counters["profile_runs_skipped"] == 1
    assert counters["eager_fallbacks"] == 0
    assert len(_packages(tmp_path)) == 9

    warm, log = run_llm(tiny_vllm_model, env, MODE2)
    assert warm["tokens"] == eager_tokens
    assert warm["counters"]["compiles"] == 0 and warm["counters"]["cache_hits"] == 9
    assert warm["sources"] == ["loaded"] * 9
    assert warm["streaming"] is True and warm["weights_source"] == "cache"  # stored by the cold start
    assert warm["counters"]["profile_runs_skipped"] == 1
    assert "Directly load AOT compilation" in log  # vLLM's own artifact loaded: Dynamo did not run
    assert "load failure" not in log

    # without streaming size 1 is another graph (vLLM's oneDNN products), compiled once, same
    # tokens; and with the profile run kept, it runs through the dynamic graphs
    plain, log = run_llm(tiny_vllm_model, {**env, "WARMGRAPH_VLLM_STREAM": "0", "WARMGRAPH_VLLM_SKIP_PROFILE": "0"},
                         MODE2)
    assert plain["tokens"] == eager_tokens and plain["streaming"] is False
    assert plain["counters"]["profile_runs_skipped"] == 0 and plain["counters"]["dynamic_calls"] >= 2
    assert plain["counters"]["compiles"] == 3 and plain["counters"]["cache_hits"] == 9
    assert "Directly load AOT compilation" in log  # the setting is read again after vLLM's artifact loads

    listing = subprocess.run([sys.executable, "-m", "warmgraph", "cache", "ls", "--vllm", "--vllm-root",
                              str(tmp_path / "vllm"), "--json"], capture_output=True, text=True, check=True)
    kinds = [e["kind"] for e in json.loads(listing.stdout)["entries"]]
    assert kinds == ["aot"]


MAX_DECODE_STEPS = 6  # 8 tokens each: the first comes from the prefill, the last step may be shared


def test_without_vllm_aot_and_a_damaged_package(tiny_vllm_model: Path, eager_tokens: list[list[int]],
                                                tmp_path: Path) -> None:
    # the graph compiled whole (WARMGRAPH_VLLM_CUT=0): one piece, and the default plan: the
    # streamed size 1 and the dynamic graph
    env = vllm_env(tmp_path, VLLM_USE_AOT_COMPILE="0", WARMGRAPH_VLLM_CUT="0")
    cold, _ = run_llm(tiny_vllm_model, env, MODE2)
    assert cold["tokens"] == eager_tokens
    assert cold["pieces"] == [1] and cold["buckets"] == [[1], [1, 16384]] and cold["counters"]["compiles"] == 2
    assert cold["counters"]["dynamic_calls"] > MAX_DECODE_STEPS  # it serves every other count, decode at 2

    warm, log = run_llm(tiny_vllm_model, env, MODE2)
    assert warm["tokens"] == eager_tokens
    assert warm["counters"]["compiles"] == 0 and warm["counters"]["cache_hits"] == 2
    assert "Directly load AOT compilation" not in log  # AOT off: Dynamo traced again, our graph loaded

    package = _packages(tmp_path)[0]
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    healed, _ = run_llm(tiny_vllm_model, env, MODE2)
    assert healed["tokens"] == eager_tokens
    assert healed["counters"]["compiles"] == 1 and healed["counters"]["cache_hits"] == 1


def test_mode_1_is_refused_not_run_eagerly(tiny_vllm_model: Path, tmp_path: Path) -> None:
    out, log = run_llm(tiny_vllm_model, vllm_env(tmp_path), {"mode": 1, "backend": BACKEND}, check=False)
    assert out is None
    assert "compilation mode 1 never calls a compile backend on vLLM's CPU runner" in log
    assert "'mode': 2" in log
