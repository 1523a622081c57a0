"""CaptureBackend and the device graph adapters, on the CPU through faithful fakes of each vendor API.

The fakes (``tests/fake_devices.py``, tested in ``test_fake_devices.py``) record without running,
refuse host memory, replay recorded ops over the same tensors and clobber later graphs of a shared
pool, so these tests fail if the recipe relies on anything a device does not do. Each runs over
CUDA, NPU, HPU and HPU with dry_run (the ``dev`` fixture of ``capture_setup.py``); a real CUDA test
runs where CUDA exists. This file holds the capture recipe: warm-ups, one capture, replay without
Python, streams, the inner backend, options and errors; ``test_capture_memory.py`` holds what the
graph holds: static inputs and where they live, pools, and static outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import capture_setup
import pytest
import torch
from capture_setup import Setup, Tiny, eager
from fake_devices import FakeCudaModule, FakeHpuModule

from warmgraph.compiler.base import Backend
from warmgraph.compiler.capture import CaptureBackend, CapturedGraph
from warmgraph.compiler.devices import CudaGraphAPI, DeviceGraphAPI, HpuGraphAPI, get_device_api
from warmgraph.errors import ConfigError, WarmgraphError

dev = capture_setup.dev  # the fixture: each test runs once per fake device setup


def test_protocols_are_met(dev: Setup) -> None:
    assert isinstance(dev.api, DeviceGraphAPI) and dev.api.device_type == "cpu"
    backend = dev.backend()
    assert isinstance(backend, Backend)
    assert (backend.name, backend.can_persist, backend.captures) == (dev.name, False, True)


def test_replay_after_copy_matches_eager(dev: Setup) -> None:
    model, static = dev.model(), dev.tensor(4, 8)
    graph = dev.backend(debug=True).compile(model, [static])
    assert isinstance(graph, CapturedGraph)
    for seed in (1, 2):
        new = dev.tensor(4, 8, seed=seed)
        static.copy_(new)
        torch.testing.assert_close(graph(static), eager(model, new))


def test_capture_leaves_inputs_alone_and_outputs_garbage_until_first_replay(dev: Setup) -> None:
    model, static = dev.model(), dev.tensor(4, 8)
    graph = dev.backend(num_warmups=1).compile(model, [static])
    if dev.runs_at_capture:
        torch.testing.assert_close(graph.static_outputs, eager(model, static))
    else:  # recorded, not run: the pool memory holds whatever was there
        assert torch.isnan(graph.static_outputs).all()
    torch.testing.assert_close(graph(static), eager(model, static))


def test_in_place_state_changes_only_where_the_device_runs_the_work(dev: Setup) -> None:
    # A KV-cache-like buffer updated in place, a view, and a tuple of outputs.
    def step(x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache.add_(x)
        return cache.t() * 2, cache.sum(dim=0)

    x, cache = dev.tensor(3, 4), torch.zeros(3, 4, device=dev.device)
    graph = dev.backend(num_warmups=2).compile(step, [x, cache])
    # Two warm-ups; the capture adds once more only on an HPU without dry_run.
    torch.testing.assert_close(cache, x * (2 + dev.runs_at_capture))
    ref_cache, outs = cache.clone(), graph.static_outputs
    for seed in (3, 4):
        new = dev.tensor(3, 4, seed=seed)
        x.copy_(new)
        got = graph(x, cache)
        want = step(new, ref_cache)
        assert got is outs
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(cache, ref_cache)


def test_warmups_then_one_capture_and_no_python_on_replay(dev: Setup) -> None:
    model, static = dev.model(log=dev.fake.calls), dev.tensor(4, 8)
    graph = dev.backend(num_warmups=3).compile(model, [static])
    calls = [c[0] for c in dev.fake.calls]
    begin = calls.index("capture_begin")
    assert calls[:begin].count("fn") == 3
    # The warm-ups ran on the capture stream, then the device was synchronized before capture.
    warm_enter = calls.index("stream_enter")
    assert calls[warm_enter + 1 : warm_enter + 4] == ["fn"] * 3
    assert "synchronize" in calls[warm_enter + 4 : begin]
    assert calls[begin:] == ["capture_begin", "fn", "capture_end", "stream_exit", "synchronize"]
    assert dev.fake.count("capture_begin") == 1 and model.calls == 4

    for _ in range(5):
        graph(static)
    assert dev.fake.count("replay") == 5 and graph.replays == 5
    assert model.calls == 4  # replay re-launches device work, never the Python function
    assert all(c == ("replay", graph.graph.id) for c in dev.fake.calls[-5:])


def test_is_current_stream_capturing_exactly_during_capture(dev: Setup) -> None:
    seen: list[bool] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(dev.fake.is_current_stream_capturing())
        return x * 2

    static = dev.tensor(3)
    graph = dev.backend(num_warmups=2).compile(fn, [static])
    assert seen == [False, False, True] and not dev.fake.is_current_stream_capturing()
    graph(static)
    assert seen == [False, False, True]


def test_zero_warmups(dev: Setup) -> None:
    model, static = dev.model(), dev.tensor(2, 8)
    graph = dev.backend(num_warmups=0).compile(model, [static])
    assert model.calls == 1
    torch.testing.assert_close(graph(static), eager(model, static))


def test_inference_mode_capture(dev: Setup) -> None:
    model = dev.model()
    with torch.inference_mode():
        static = dev.tensor(4, 8)
        graph = dev.backend().compile(model, [static])
        new = dev.tensor(4, 8, seed=3)
        static.copy_(new)
        torch.testing.assert_close(graph(static), eager(model, new))


class CountingInner:
    """A tiny inner backend (what CaptureBackend uses of one): compile wraps ``fn`` and counts calls."""

    def __init__(self) -> None:
        self.compiles: list[tuple[Any, ...]] = []
        self.calls = 0

    def compile(self, fn: Callable[..., Any], example_inputs: Any) -> Callable[..., Any]:
        self.compiles.append(tuple(example_inputs))

        def compiled(*args: Any) -> Any:
            self.calls += 1
            return fn(*args)

        return compiled

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "counting", "option": 7}


def test_inner_backend_compiles_once_then_is_captured(dev: Setup) -> None:
    inner, model, static = CountingInner(), dev.model(), dev.tensor(4, 8)
    backend = dev.backend(inner=inner, num_warmups=2)  # type: ignore[arg-type]
    graph = backend.compile(model, [static])
    assert len(inner.compiles) == 1 and inner.compiles[0][0] is static
    assert inner.calls == 3 and model.calls == 3  # two warm-ups and the capture, through the inner code
    for _ in range(4):
        graph(static)
    assert inner.calls == 3
    torch.testing.assert_close(graph(static), eager(model, static))
    assert backend.fingerprint()["inner"] == {"backend": "counting", "option": 7}


def test_save_load_and_fingerprint(dev: Setup, tmp_path: Path) -> None:
    backend = dev.backend(num_warmups=3)
    graph = backend.compile(dev.model(), [dev.tensor(2, 8)])
    with pytest.raises(NotImplementedError, match=r"cannot be written to disk.*re-captured at start"):
        backend.save(graph, tmp_path)
    with pytest.raises(NotImplementedError, match="re-captured at start from the inner backend"):
        backend.load(tmp_path, dev.model(), [dev.tensor(2, 8)])
    fp = backend.fingerprint()
    assert fp["backend"] == dev.name and fp["device_api"] == dev.fake.name
    assert fp["inner"] is None and fp["num_warmups"] == 3
    assert fp["torch"] == torch.__version__ and "debug" in fp


def test_capture_error_ends_the_capture_and_propagates(dev: Setup) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        if dev.fake.capturing is not None:
            raise ValueError("boom inside capture")
        return x * 2

    with pytest.raises(ValueError, match="boom inside capture"):
        dev.backend().compile(broken, [dev.tensor(2)])
    calls = [c[0] for c in dev.fake.calls]
    assert calls[calls.index("capture_begin") :][:3] == ["capture_begin", "capture_end", "stream_exit"]
    assert dev.fake.capturing is None and dev.fake.current.is_default
    assert not dev.fake.is_current_stream_capturing()


def test_bad_options() -> None:
    api = CudaGraphAPI(FakeCudaModule())
    with pytest.raises(ConfigError, match="num_warmups must be an integer >= 0, got -1"):
        CaptureBackend(api, "cuda_graph", num_warmups=-1)
    with pytest.raises(ConfigError, match="needs a name"):
        CaptureBackend(api, "")


def test_hpu_wrap_module_defaults_as_vllm_gaudi() -> None:
    fake = FakeHpuModule()
    with fake.placement():
        model = Tiny().to(fake.device_type)
        assert HpuGraphAPI(fake).wrap_module(model) is model
        options = {"asynchronous": False, "disable_tensor_cache": True, "dry_run": False, "max_graphs": None}
        assert fake.calls[-1] == ("wrap_in_hpu_graph", model, options)
        x, y = torch.randn(2, 8, device="cpu"), torch.randn(2, 8, device="cpu")
        first = model(x)  # the bridge's first call captures (a dry run: the tensor cache is off) and replays
        torch.testing.assert_close(first, eager(model, x))
        assert model(y) is first and model.calls == 1  # same shapes: inputs copied in, graph replayed
        torch.testing.assert_close(first, eager(model, y))
    HpuGraphAPI(fake).wrap_module(Tiny(), disable_tensor_cache=False, max_graphs=4)
    assert fake.calls[-1][2]["max_graphs"] == 4 and fake.calls[-1][2]["disable_tensor_cache"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_capture() -> None:
    model = Tiny(log=[]).cuda()
    backend = CaptureBackend(get_device_api("cuda"), "cuda_graph", num_warmups=2, debug=True)
    with torch.no_grad():
        with pytest.raises(WarmgraphError, match=r"argument 'x' \(input 0\) is a tensor on cpu"):
            backend.compile(model, [torch.randn(4, 8)])
        statics = [torch.randn(n, 8, device="cuda") for n in (16, 4)]
        graphs = [backend.compile(model, [s]) for s in statics]
        assert backend.pool is not None and all(g.graph.pool() == backend.pool for g in graphs)
        assert all(r.device_bytes is not None for r in backend.captures_log)
        for static, graph in zip(statics, graphs):
            for _ in range(2):
                new = torch.randn(static.shape, device="cuda")
                static.copy_(new)
                out = graph(static)
                assert out is graph.static_outputs
                torch.testing.assert_close(out, eager(model, new))
        assert model.calls == 6  # 2 x (two warm-ups + capture); replays run no Python
        with pytest.raises(WarmgraphError, match="argument 'x'"):
            graphs[0](torch.randn(16, 8, device="cuda"))
