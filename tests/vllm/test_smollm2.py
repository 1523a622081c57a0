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
    warm, log = run_llm(model, env, MODE2, prompts=prompts)
    assert cold["tokens"] == eager["tokens"] and warm["tokens"] == eager["tokens"]
    assert cold["counters"]["compiles"] == 1 and warm["counters"]["compiles"] == 0
    assert warm["counters"]["cache_hits"] == 1 and "load failure" not in log
