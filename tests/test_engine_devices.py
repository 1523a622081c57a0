"""The whole engine over each fake device (CUDA graphs, ACL graphs, HPU graphs): tokens equal to the
plain CPU engine on a mixed workload, zero eager fallbacks, one capture per bucket over state that is
never copied, and host work refused.

The fakes record only device work (``tests/fake_devices.py``), so an engine that left its model, KV
cache or step inputs in host memory, copied state into buffers, or padded with the wrong fill value
(padded slots must point at the scratch block) gives wrong tokens or an error here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule

from warmgraph.compiler.devices import CudaGraphAPI, HpuGraphAPI, NpuGraphAPI
from warmgraph.compiler.registry import get_backend
from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
from warmgraph.errors import ConfigError
from warmgraph.models.loader import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = {
    "cuda_graph": (CudaGraphAPI, FakeCudaModule),
    "acl_graph": (NpuGraphAPI, FakeNpuModule),
    "hpu_graph": (HpuGraphAPI, FakeHpuModule),
}
MIXED = serving_limits(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64, block_size=32,
                       max_num_prefill_seqs=2)
DTYPES = ("float32", "bfloat16")
PROMPTS = ["hello", "the cat watches the river", "a small dog finds three apples", "x", "the red fox and the old "
           "engineer build a wooden box"]


@pytest.fixture(scope="module")
def reference(default_ckpt: Path) -> dict[str, list[list[int]]]:
    """The plain CPU engine's greedy tokens, per dtype."""
    out = {}
    for dtype in DTYPES:
        model, tokenizer, _ = load_checkpoint(default_ckpt, dtype)
        engine = Engine(model, tokenizer, EngineConfig(backend="eager", device="cpu", cache=None, serving=MIXED))
        out[dtype] = [c["token_ids"] for c in engine.generate(PROMPTS, SamplingParams(max_tokens=8))["completions"]]
    return out


def _step_buffer_bytes(engine: Engine) -> int:
    """One largest-bucket set of each phase's int64 step inputs, from the steps' documented shapes
    (prefill ``ids, positions, slots (B, Q)``, ``ctx_blocks (B, C)``, ``ctx_lens, q_lens (B,)``; decode
    ``ids, positions, slots (B, 1)``, ``block_list, block_seq, block_pos (N,)``, ``ctx_lens (B,)``), and
    nothing for the model's weights and KV cache."""
    prompt, decode = engine.plan.prompt, engine.plan.decode
    prefill = 3 * max(b * q for b, q, _ in prompt) + max(b * c for b, _, c in prompt) + 2 * max(b for b, _, _ in prompt)
    step = 3 * max(b for b, _, _ in decode) + 3 * max(n for _, _, n in decode) + max(b for b, _, _ in decode)
    return 8 * (prefill + step)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(DEVICES))
def test_engine_over_a_fake_device_equals_the_cpu_engine(default_ckpt: Path, reference: dict[str, list[list[int]]],
                                                         name: str, dtype: str) -> None:
    api_cls, fake_cls = DEVICES[name]
    fake = fake_cls()
    backend = get_backend(name, api=api_cls(fake, device_type=fake.device_type), inner="eager", debug=True)
    with fake.placement():
        model, tokenizer, _ = load_checkpoint(default_ckpt, dtype)
        engine = Engine(model, tokenizer, EngineConfig(backend=backend, device="cpu", cache=None, serving=MIXED))
        assert all(fake.is_device_tensor(t) for t in engine.state)  # model, tables and KV cache on the device
        report = engine.warmup()
        graphs = len(engine.plan.prompt) + len(engine.plan.decode)
        assert report.captured == graphs and engine.counter("captures") == graphs
        out = engine.generate(PROMPTS, SamplingParams(max_tokens=8))
    assert [c["token_ids"] for c in out["completions"]] == reference[dtype]
    stats = out["stats"]
    assert stats["eager_fallbacks"] == 0 and stats["graph_replays"] == fake.count("replay") > 0
    assert any(kind == "prefill" and len(members) == 2 for kind, members in engine.last_schedule)
    assert report.buffer_bytes == _step_buffer_bytes(engine) < 4096  # state (weights, KV cache) costs nothing
    assert all(e.device_bytes is not None for e in report.entries)


def test_host_memory_in_a_capture_is_refused(default_ckpt: Path) -> None:
    fake = FakeCudaModule()
    backend = get_backend("cuda_graph", api=CudaGraphAPI(fake, device_type=fake.device_type), inner="eager")
    model, tokenizer, _ = load_checkpoint(default_ckpt)  # no placement: everything stays in host memory
    engine = Engine(model, tokenizer, EngineConfig(backend=backend, device="cpu", cache=None, serving=MIXED))
    with pytest.raises(RuntimeError, match="host memory"):
        engine.warmup()


def test_a_capture_backend_for_another_device_is_refused(default_ckpt: Path) -> None:
    fake: Any = FakeCudaModule()
    backend = get_backend("cuda_graph", api=CudaGraphAPI(fake))  # captures cuda work, as on hardware
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    with pytest.raises(ConfigError, match="captures cuda work, but the engine runs on cpu; use --device cuda"):
        Engine(model, tokenizer, EngineConfig(backend=backend, device="cpu", cache=None, serving=MIXED))
    assert torch.cuda.is_available() or fake.count("capture_begin") == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda_graph:eager"])  # over aot and inductor: bench/device_check.py
def test_engine_on_real_cuda_equals_eager(default_ckpt: Path, backend: str, tmp_path: Path) -> None:
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    eager = Engine(model, tokenizer, EngineConfig(backend="eager", device="cuda", cache=None, serving=MIXED))
    reference = [c["token_ids"] for c in eager.generate(PROMPTS, SamplingParams(max_tokens=8))["completions"]]
    engine = Engine(model, tokenizer, EngineConfig(backend=backend, device="cuda", cache=tmp_path, serving=MIXED))
    assert engine.state[0].is_cuda and engine.kv[0][0].is_cuda
    report = engine.warmup()
    assert report.captured == len(engine.plan.prompt) + len(engine.plan.decode)
    out = engine.generate(PROMPTS, SamplingParams(max_tokens=8))
    assert out["stats"]["eager_fallbacks"] == 0
    assert [c["token_ids"] for c in out["completions"]] == reference
