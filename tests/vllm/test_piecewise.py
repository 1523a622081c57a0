"""Mode 3 (piecewise) through warmgraph's CompilerInterface, on CPU by the plugin's platform hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_helpers import run_llm, run_warmup, vllm_env

from warmgraph.errors import WarmgraphError


def test_piecewise_cold_and_warm_equal_vllm_eager(tiny_vllm_model: Path, eager_tokens: list[list[int]],
                                                  tmp_path: Path) -> None:
    env = vllm_env(tmp_path, WARMGRAPH_VLLM="piecewise")
    sizes = {"compile_sizes": [2]}  # mode left to vLLM's default (3); two prompts decode 2 tokens a step
    cold, log = run_llm(tiny_vllm_model, env, sizes)
    assert "through warmgraph (WARMGRAPH_VLLM=piecewise)" in log
    assert cold["tokens"] == eager_tokens
    assert cold["counters"] is None  # not the mode-2 backend
    pieces = cold["piecewise"]
    # two layers: three different pieces, each for the range and for size 2
    assert pieces["compiles"] == 6 and pieces["cache_writes"] == 6 and pieces["cache_hits"] == 0
    assert pieces["replays"] > 0 and pieces["dynamic_calls"] > 0  # decode on size 2, prefill on the range

    warm, log = run_llm(tiny_vllm_model, env, sizes)
    assert warm["tokens"] == eager_tokens
    assert warm["piecewise"]["compiles"] == 0 and warm["piecewise"]["cache_hits"] == 6
    assert "load failure" not in log and "Directly load" in log  # vLLM's own AOT artifact, then our graphs


def test_piecewise_warmup_then_llm_compiles_nothing(tiny_vllm_model: Path, eager_tokens: list[list[int]],
                                                    tmp_path: Path) -> None:
    env = vllm_env(tmp_path)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # vLLM's own processes, as a server runs
    warm = run_warmup(tiny_vllm_model, env, "--piecewise", "--for", "llm")
    assert warm["mode"] == 3 and warm["compiled"] == 3 and warm["loaded"] == 0
    assert [g["source"] for g in warm["graphs"]] == ["compiled"] * 3
    assert warm["token_ids"] == eager_tokens[0]
    # in-process this time: vLLM's own key changes with the executor, warmgraph's does not
    run, _ = run_llm(tiny_vllm_model, vllm_env(tmp_path, WARMGRAPH_VLLM="piecewise"))
    assert run["tokens"] == eager_tokens
    assert run["piecewise"]["compiles"] == 0 and run["piecewise"]["cache_hits"] == 3


def test_piecewise_refuses_vllm_mega_artifact(monkeypatch: pytest.MonkeyPatch) -> None:
    from warmgraph.integrations.vllm import plugin

    monkeypatch.setenv("WARMGRAPH_VLLM", "piecewise")
    monkeypatch.setenv("VLLM_USE_MEGA_AOT_ARTIFACT", "1")
    with pytest.raises(WarmgraphError, match="VLLM_USE_MEGA_AOT_ARTIFACT=0"):
        plugin.register()
