"""The output description that answers vLLM's memory-profile run (``integrations.vllm.profile_run``).

vLLM itself is not needed: the graphs are traced with symbolic shapes, as Dynamo hands them to
the backend (placeholder and output metadata holding SymInt sizes).
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from warmgraph.errors import WarmgraphError
from warmgraph.integrations.vllm.profile_run import output_spec, skips_profile
from warmgraph.integrations.vllm.regions import token_source


def _traced(fn, *example: torch.Tensor) -> tuple[torch.fx.GraphModule, list]:
    """``fn`` traced with a symbolic size per input dimension, and the inputs as traced (fake)."""
    gm = make_fx(fn, tracing_mode="symbolic")(*example)
    return gm, [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]


def test_outputs_are_described_with_the_token_dimension() -> None:
    gm, fake = _traced(lambda ids: ((ids.float().unsqueeze(-1) * torch.ones(3)).to(torch.float16), ids + 1),
                       torch.arange(5))
    spec = output_spec(gm, fake, token_source(gm, fake))
    assert spec is not None
    spec = pickle.loads(pickle.dumps(spec))  # it travels in vLLM's artifact
    hidden, ids = spec.blank(7)
    assert hidden.shape == (7, 3) and hidden.dtype == torch.float16 and not hidden.any()
    assert ids.shape == (7,) and ids.dtype == torch.int64 and not ids.any()
    assert [t.shape for t in spec.blank(1)] == [(1, 3), (1,)]


def test_outputs_that_are_not_one_token_dimension_are_not_described() -> None:
    doubled, fake = _traced(lambda ids: torch.cat([ids, ids]), torch.arange(5))
    assert output_spec(doubled, fake, token_source(doubled, fake)) is None
    count, fake = _traced(lambda ids: (ids.sum(), ids.shape[0]), torch.arange(5))  # an int output
    assert output_spec(count, fake, token_source(count, fake)) is None
    total, fake = _traced(lambda ids: (ids.sum(),), torch.arange(5))  # a 0-d tensor is described
    spec = output_spec(total, fake, token_source(total, fake))
    assert spec is not None and spec.blank(9)[0].shape == ()


class _Config:
    def __init__(self, kv_bytes: int | None, device: str = "cpu") -> None:
        self.cache_config = type("CacheConfig", (), {"kv_cache_memory_bytes": kv_bytes})()
        self.device_config = type("DeviceConfig", (), {"device_type": device})()


def test_only_a_cpu_with_an_explicit_kv_cache_size_skips_the_profile_run() -> None:
    assert skips_profile(_Config(1 << 30), {}) is True
    assert skips_profile(_Config(None), {}) is False  # the run sizes the KV cache: it must run
    assert skips_profile(_Config(1 << 30, "cuda"), {}) is False  # it sizes workspaces there too
    assert skips_profile(_Config(1 << 30), {"WARMGRAPH_VLLM_SKIP_PROFILE": "0"}) is False
    for config in (_Config(1 << 30), _Config(None, "cuda")):  # a bad value is refused whatever the config
        with pytest.raises(WarmgraphError, match=r"WARMGRAPH_VLLM_SKIP_PROFILE='maybe'.*use 1 to skip"):
            skips_profile(config, {"WARMGRAPH_VLLM_SKIP_PROFILE": "maybe"})
