"""CaptureBackend and the device graph adapters, on the CPU through faithful fakes of each vendor API.

The fakes (``tests/fake_devices.py``, tested in ``test_fake_devices.py``) record without running,
refuse host memory, replay recorded ops over the same tensors and clobber later graphs of a shared
pool, so these tests fail if the recipe relies on anything a device does not do. Each runs over
CUDA, NPU, HPU and HPU with dry_run; a real CUDA test runs where CUDA exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule, FakeStream
from torch import nn

from warmgraph.compiler.base import Backend
from warmgraph.compiler.capture import CaptureBackend, CapturedGraph
from warmgraph.compiler.devices import CudaGraphAPI, DeviceGraphAPI, HpuGraphAPI, NpuGraphAPI, get_device_api
from warmgraph.errors import ConfigError, WarmgraphError

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


def test_backend_refuses_an_input_off_the_device_and_names_it(dev: Setup) -> None:
    def step(x: torch.Tensor, caches: list[torch.Tensor]) -> torch.Tensor:
        return x + caches[0]

    x, ok, elsewhere = dev.tensor(2), dev.tensor(2), torch.empty(2, device="meta")
    with pytest.raises(WarmgraphError, match=rf"argument 'caches\[1\]' \(input 1\) is a tensor on meta, but the "
                       rf"{dev.name} graph runs on 'cpu'.*\.to\('cpu'\).*non-capture backend such as aot"):
        dev.backend().compile(step, [x, [ok, elsewhere]])
    real_device = type(dev.api)(dev.fake)  # device_type of the real vendor: these CPU tensors are refused
    with pytest.raises(WarmgraphError, match=rf"argument 'x' \(input 0\) is a tensor on cpu, but .* '{dev.fake.name}'"):
        CaptureBackend(real_device, dev.name).compile(step, [x, [ok]])
    assert dev.fake.count("capture_begin") == 0 and dev.fake.count("stream_enter") == 0  # refused before warm-up


def test_fake_refuses_host_weights_in_a_capture(dev: Setup) -> None:
    host_model = Tiny()  # never moved to the device
    with pytest.raises(RuntimeError, match=r"aten\.mm\.default reads host memory \(a tensor of shape \(8, 8\)"):
        dev.backend().compile(host_model, [dev.tensor(4, 8)])
    assert dev.fake.capturing is None and dev.fake.count("capture_end") == 1


def test_debug_names_the_argument_that_was_not_copied(dev: Setup) -> None:
    static = dev.tensor(4, 8)
    graph = dev.backend(debug=True).compile(dev.model(), [static])
    with pytest.raises(WarmgraphError, match=r"argument 'x' \(input 0\) is not the static buffer.*copy_"):
        graph(dev.tensor(4, 8))
    with pytest.raises(WarmgraphError, match="takes 1 inputs, got 2"):
        graph(static, static)


def test_without_copy_replay_returns_the_stale_result(dev: Setup) -> None:
    # A new tensor is ignored, the graph reads the static buffer.
    model, static = dev.model(), dev.tensor(4, 8)
    before = eager(model, static)
    graph = dev.backend().compile(model, [static])  # debug off: nothing checks the argument
    new = dev.tensor(4, 8, seed=9) + 5
    out = graph(new)
    torch.testing.assert_close(out, before)
    assert not torch.allclose(out, eager(model, new))


def test_debug_detects_a_moved_buffer(dev: Setup) -> None:
    static = dev.tensor(4, 8)
    graph = dev.backend(debug=True).compile(dev.model(), [static])
    assert graph.input_ptrs == (static.data_ptr(),)
    static.set_(dev.tensor(4, 8))  # same object, new storage: the graph still reads the old one
    with pytest.raises(WarmgraphError, match=r"argument 'x' .* moved from address"):
        graph(static)


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


def test_one_pool_and_one_stream_largest_bucket_first(dev: Setup) -> None:
    model, backend = dev.model(), dev.backend(num_warmups=1)
    rows = (16, 8, 2)
    statics = [dev.tensor(n, 8) for n in rows]
    graphs = [backend.compile(model, [s]) for s in statics]

    begins = [c for c in dev.fake.calls if c[0] == "capture_begin"]
    assert len(begins) == 3
    assert len({id(c[2]) for c in begins}) == 1  # one capture stream, the backend's
    assert isinstance(begins[0][2], FakeStream) and not begins[0][2].is_default
    if dev.api.supports_pool:
        handles = [c for c in dev.fake.calls if c[0] == "graph_pool_handle"]
        assert len(handles) == 1
        token = handles[0][1]
        assert all(c[1] is token for c in begins)
        assert backend.pool is token and all(g.graph.pool() is token for g in graphs)
    else:
        assert dev.kind.startswith("hpu") and not hasattr(dev.fake, "graph_pool_handle")
        assert all(c[1] is None for c in begins) and backend.pool is None

    assert [r.shapes for r in backend.captures_log] == [((n, 8),) for n in rows]
    assert all(r.warmups == 1 and r.seconds >= 0 for r in backend.captures_log)
    # Device memory per capture: at least the output buffer (the fake never reuses pool memory).
    assert all(r.device_bytes >= 4 * 8 * n for r, n in zip(backend.captures_log, rows))
    for i, (static, graph) in enumerate(zip(statics, graphs)):
        new = dev.tensor(*static.shape, seed=i)
        static.copy_(new)
        torch.testing.assert_close(graph(static), eager(model, new))


def test_device_bytes_is_none_without_a_memory_counter(dev: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev.fake, "memory_allocated", None)  # as a vendor module without the counter
    backend = dev.backend()
    backend.compile(dev.model(), [dev.tensor(2, 8)])
    assert dev.api.memory_allocated() is None and backend.captures_log[0].device_bytes is None


def test_an_earlier_graph_of_the_pool_overwrites_later_outputs(dev: Setup) -> None:
    model, backend = dev.model(), dev.backend(num_warmups=0)
    big, small = dev.tensor(8, 8), dev.tensor(2, 8, seed=1)
    g_big, g_small = backend.compile(model, [big]), backend.compile(model, [small])
    want_big, want_small = eager(model, big), eager(model, small)
    kept = g_small(small)
    torch.testing.assert_close(kept, want_small)
    g_big(big)  # may write into memory it freed during capture, which g_small's output now uses
    if dev.api.supports_pool:
        assert torch.isnan(kept).all()
    else:  # HPU graphs have no shared pool
        torch.testing.assert_close(kept, want_small)
    torch.testing.assert_close(g_small(small), want_small)  # replaying a later graph spares earlier outputs
    torch.testing.assert_close(g_big.static_outputs, want_big)


def test_static_outputs_are_the_same_objects(dev: Setup) -> None:
    model, static = dev.model(), dev.tensor(4, 8)  # the graph reads the weights: keep the model alive
    ptr = static.data_ptr()
    graph = dev.backend(debug=True).compile(model, [static])
    first = graph(static)
    first_values = first.clone()
    static.copy_(dev.tensor(4, 8, seed=5))
    second = graph(static)
    assert first is second is graph.static_outputs
    assert not first.requires_grad  # captured without autograd, although w and b are parameters
    assert not torch.equal(first_values, second)  # overwritten in place by the next replay
    assert graph.static_inputs[0] is static and static.data_ptr() == ptr == graph.input_ptrs[0]


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
