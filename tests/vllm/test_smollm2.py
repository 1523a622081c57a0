"""The real default model (SmolLM2-135M-Instruct from its GGUF) through warmgraph's backend."""

from __future__ import annotations

from pathlib import Path

from vllm_helpers import MODE2, PROMPTS, run_llm, vllm_env

CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_cold_and_warm_equal_vllm_eager(tmp_path: Path) -> None:
    from warmgraph.models.smollm2 import ensure_smollm2

    model = ensure_smollm2(tmp_path / "models", progress=False)
    prompts = [*PROMPTS, CHAT]
    eager, _ = run_llm(model, vllm_env(tmp_path / "eager"), {"mode": 0}, prompts=prompts)
    env = vllm_env(tmp_path / "wg")
    cold, _ = run_llm(model, env, MODE2, prompts=prompts)
    assert cold["tokens"] == eager["tokens"]  # three prompts decode together: the dynamic graphs
    # the chat prompt alone decodes one token per step: the size-1 graphs, streaming the weights
    warm, log = run_llm(model, env, MODE2, prompts=[CHAT])
    assert warm["tokens"] == eager["tokens"][-1:]
    # 30 layers cut at their attentions: 31 pieces, 3 distinct (the 29 between two attentions are
    # one), each a streamed size-1 graph and a dynamic one
    assert sorted(cold["pieces"]) == [1, 1, 29] and warm["streaming"] is True
    assert cold["weights_source"] == "recovered" and warm["weights_source"] == "cache"
    assert cold["counters"]["compiles"] == 6 and warm["counters"]["compiles"] == 0
    assert warm["counters"]["cache_hits"] == 6 and "load failure" not in log
    assert warm["counters"]["replays"] >= 6 and warm["counters"]["stale_weights"] == 0


def test_smollm2_piecewise_compiles_each_distinct_piece_once(tmp_path: Path) -> None:
    """Mode 3 splits the 30 layers into 31 pieces; the 29 between two attentions are the same
    computation, so warmgraph compiles 3 graphs (first, middle, last) and loads the rest."""
    from warmgraph.models.smollm2 import ensure_smollm2

    model = ensure_smollm2(tmp_path / "models", progress=False)
    eager, _ = run_llm(model, vllm_env(tmp_path / "eager"), {"mode": 0})
    env = vllm_env(tmp_path / "wg", WARMGRAPH_VLLM="piecewise")
    cold, _ = run_llm(model, env)
    warm, log = run_llm(model, env)
    assert cold["tokens"] == eager["tokens"] and warm["tokens"] == eager["tokens"]
    assert cold["piecewise"]["compiles"] == 3 and cold["piecewise"]["cache_hits"] == 28
    assert warm["piecewise"]["compiles"] == 0 and warm["piecewise"]["cache_hits"] == 31
    assert "load failure" not in log
