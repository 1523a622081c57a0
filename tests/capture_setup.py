"""The harness of the capture tests: a tiny model, and each fake device module with its adapter.

``dev`` runs a test once per setup (CUDA, NPU, HPU, HPU with dry_run) inside the fake's
``placement()``; ``test_capture.py`` and ``test_capture_memory.py`` import it with the helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule
from torch import nn

from warmgraph.compiler.capture import CaptureBackend
from warmgraph.compiler.devices import CudaGraphAPI, DeviceGraphAPI, HpuGraphAPI, NpuGraphAPI

SETUPS: dict[str, tuple[type, Callable[[Any], DeviceGraphAPI], str]] = {
    "cuda": (FakeCudaModule, lambda f: CudaGraphAPI(f, device_type=f.device_type), "cuda_graph"),
    "npu": (FakeNpuModule, lambda f: NpuGraphAPI(f, device_type=f.device_type), "acl_graph"),
    "hpu": (FakeHpuModule, lambda f: HpuGraphAPI(f, device_type=f.device_type), "hpu_graph"),
    "hpu-dry-run": (FakeHpuModule, lambda f: HpuGraphAPI(f, device_type=f.device_type, dry_run=True), "hpu_graph"),
}


class Tiny(nn.Module):
    """``gelu(x @ w + b)``; appends ("fn",) to ``log`` on every Python call, so replays show as absent."""

    def __init__(self, log: list[tuple[Any, ...]] | None = None, dim: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(dim, dim, generator=gen))
        self.b = nn.Parameter(torch.randn(dim, generator=gen))
        self.log = log
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.log is not None:
            self.log.append(("fn",))
        return F.gelu(x @ self.w + self.b)


class Setup:
    """A fake device module, its adapter, and helpers that place tensors and models in its device memory."""

    def __init__(self, kind: str) -> None:
        fake_cls, make_api, name = SETUPS[kind]
        self.kind = kind
        self.fake = fake_cls()
        self.api = make_api(self.fake)
        self.name = name
        self.device = self.fake.device_type
        # The Gaudi bridge launches the captured work at capture unless dry_run; stream capture never does.
        self.runs_at_capture = kind == "hpu"

    def backend(self, **options: Any) -> CaptureBackend:
        return CaptureBackend(self.api, self.name, **options)

    def tensor(self, *shape: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(self.device)

    def model(self, **options: Any) -> Tiny:
        return Tiny(**options).to(self.device)


@pytest.fixture(params=list(SETUPS))
def dev(request: pytest.FixtureRequest) -> Iterator[Setup]:
    setup = Setup(request.param)
    with setup.fake.placement():  # tensors placed with .to(dev.device) / device= are device memory
        yield setup


def eager(model: Tiny, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.gelu(x @ model.w + model.b)
