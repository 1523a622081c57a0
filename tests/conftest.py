"""Shared test fixtures: paths to the real Azure traces beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

WORKLOADS = Path(__file__).resolve().parents[1].parent / "shared" / "workloads"


@pytest.fixture
def conv_trace() -> Path:
    path = WORKLOADS / "azure_llm_inference_2023_conv.csv"
    if not path.exists():
        pytest.skip("shared/workloads is not beside this checkout")
    return path


@pytest.fixture
def code_trace() -> Path:
    path = WORKLOADS / "azure_llm_inference_2023_code.csv"
    if not path.exists():
        pytest.skip("shared/workloads is not beside this checkout")
    return path
