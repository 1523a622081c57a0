"""CaptureBackend and the device graph adapters, on the CPU through faithful fakes of each vendor API.

The fakes (``tests/fake_devices.py``) replay the recorded aten ops over the same tensors, so
these tests fail if a graph is fed a new tensor instead of the static buffer, if the Python
function runs on replay, or if outputs are fresh objects. A real CUDA test runs where CUDA exists.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule, FakeStream
from torch import nn

from warmgraph.compiler.base import Backend
from warmgraph.compiler.capture import CaptureBackend, CapturedGraph
from warmgraph.compiler.devices import (
    CudaGraphAPI,
    DeviceGraphAPI,
    HpuGraphAPI,
    NpuGraphAPI,
    get_device_api,
)
from warmgraph.errors import ConfigError, WarmgraphError

DEVICES = {
    "cuda": (FakeCudaModule, CudaGraphAPI, "cuda_graph"),
    "npu": (FakeNpuModule, NpuGraphAPI, "acl_graph"),
    "hpu": (FakeHpuModule, HpuGraphAPI, "hpu_graph"),
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
    def __init__(self, kind: str) -> None:
        fake_cls, api_cls, name = DEVICES[kind]
        self.kind = kind
        self.fake = fake_cls()
        self.api: DeviceGraphAPI = api_cls(self.fake)
        self.name = name

    def backend(self, **options: Any) -> CaptureBackend:
        return CaptureBackend(self.api, self.name, **options)


@pytest.fixture(params=sorted(DEVICES))
def dev(request: pytest.FixtureRequest) -> Setup:
    return Setup(request.param)


def eager(model: Tiny, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.gelu(x @ model.w + model.b)


def test_protocols_are_met(dev: Setup) -> None:
    assert isinstance(dev.api, DeviceGraphAPI)
    backend = dev.backend()
    assert isinstance(backend, Backend)
    assert (backend.name, backend.can_persist, backend.captures) == (dev.name, False, True)


def test_replay_after_copy_matches_eager(dev: Setup) -> None:
    model = Tiny()
    static = torch.randn(4, 8)
    graph = dev.backend(debug=True).compile(model, [static])
    assert isinstance(graph, CapturedGraph)
    for seed in (1, 2):
        new = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))
        static.copy_(new)
        torch.testing.assert_close(graph(static), eager(model, new))


def test_debug_names_the_argument_that_was_not_copied(dev: Setup) -> None:
    model = Tiny()
    static = torch.randn(4, 8)
    graph = dev.backend(debug=True).compile(model, [static])
    with pytest.raises(WarmgraphError, match=r"argument 'x' \(input 0\) is not the static buffer.*copy_"):
        graph(torch.randn(4, 8))
    with pytest.raises(WarmgraphError, match="takes 1 inputs, got 2"):
        graph(static, static)


def test_without_copy_replay_returns_the_stale_result(dev: Setup) -> None:
    # The fake is faithful: a new tensor is ignored, the graph reads the static buffer.
    model = Tiny()
    static = torch.randn(4, 8)
    before = eager(model, static)
    graph = dev.backend().compile(model, [static])  # debug off: nothing checks the argument
    new = torch.randn(4, 8) + 5
    out = graph(new)
    torch.testing.assert_close(out, before)
    assert not torch.allclose(out, eager(model, new))


def test_debug_detects_a_moved_buffer(dev: Setup) -> None:
    static = torch.randn(4, 8)
    graph = dev.backend(debug=True).compile(Tiny(), [static])
    assert graph.input_ptrs == (static.data_ptr(),)
    static.set_(torch.randn(4, 8))  # same object, new storage: the graph still reads the old one
    with pytest.raises(WarmgraphError, match=r"argument 'x' .* moved from address"):
        graph(static)


def test_warmups_then_one_capture_and_no_python_on_replay(dev: Setup) -> None:
    model = Tiny(log=dev.fake.calls)
    static = torch.randn(4, 8)
    graph = dev.backend(num_warmups=3).compile(model, [static])
    calls = [c[0] for c in dev.fake.calls]
    begin = calls.index("capture_begin")
    assert calls[:begin].count("fn") == 3
    # The warm-ups ran on the capture stream, then the device was synchronized before capture.
    warm_enter = calls.index("stream_enter")
    assert calls[warm_enter + 1 : warm_enter + 4] == ["fn"] * 3
    assert "synchronize" in calls[warm_enter + 4 : begin]
    assert calls[begin:] == ["capture_begin", "fn", "capture_end", "stream_exit", "synchronize"]
    assert dev.fake.count("capture_begin") == 1
    assert model.calls == 4

    for _ in range(5):
        graph(static)
    assert dev.fake.count("replay") == 5 and graph.replays == 5
    assert model.calls == 4  # replay re-launches device work, never the Python function
    log = dev.fake.calls
    assert all(c == ("replay", graph.graph.id) for c in log[-5:])


def test_zero_warmups(dev: Setup) -> None:
    model = Tiny()
    static = torch.randn(2, 8)
    graph = dev.backend(num_warmups=0).compile(model, [static])
    assert model.calls == 1
    torch.testing.assert_close(graph(static), eager(model, static))


def test_one_pool_and_one_stream_largest_bucket_first(dev: Setup) -> None:
    model = Tiny()
    backend = dev.backend(num_warmups=1)
    rows = (16, 8, 2)
    statics = [torch.randn(n, 8) for n in rows]
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
        assert dev.kind == "hpu" and not hasattr(dev.fake, "graph_pool_handle")
        assert all(c[1] is None for c in begins)
        assert backend.pool is None

    assert [r.shapes for r in backend.captures_log] == [((n, 8),) for n in rows]
    assert all(r.warmups == 1 and r.seconds >= 0 for r in backend.captures_log)
    for static, graph in zip(statics, graphs):
        new = torch.randn(static.shape)
        static.copy_(new)
        torch.testing.assert_close(graph(static), eager(model, new))


def test_static_outputs_are_the_same_objects(dev: Setup) -> None:
    model = Tiny()
    static = torch.randn(4, 8)
    ptr = static.data_ptr()
    graph = dev.backend(debug=True).compile(model, [static])
    first = graph(static)
    first_values = first.clone()
    static.copy_(torch.randn(4, 8))
    second = graph(static)
    assert first is second is graph.static_outputs
    assert not first.requires_grad  # captured without autograd, although w and b are parameters
    assert not torch.equal(first_values, second)  # overwritten in place by the next replay
    assert graph.static_inputs[0] is static and static.data_ptr() == ptr == graph.input_ptrs[0]


def test_tuple_outputs_views_and_in_place_state(dev: Setup) -> None:
    # A KV-cache-like buffer updated in place, a view, and a tuple of outputs.
    def step(x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache.add_(x)
        return cache.t() * 2, cache.sum(dim=0)

    x, cache = torch.randn(3, 4), torch.zeros(3, 4)
    graph = dev.backend(num_warmups=2).compile(step, [x, cache])
    ref_cache = cache.clone()  # warm-ups and capture each ran the function once
    outs = graph.static_outputs
    for seed in (3, 4):
        new = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
        x.copy_(new)
        got = graph(x, cache)
        want = step(new, ref_cache)
        assert got is outs
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(cache, ref_cache)


def test_inference_mode_capture(dev: Setup) -> None:
    model = Tiny()
    with torch.inference_mode():
        static = torch.randn(4, 8)
        graph = dev.backend().compile(model, [static])
        new = torch.randn(4, 8)
        static.copy_(new)
        torch.testing.assert_close(graph(static), eager(model, new))


class CountingInner:
    """A tiny inner backend: compile wraps ``fn`` and counts compiles and calls of the result."""

    name = "counting"
    can_persist = True
    captures = False

    def __init__(self) -> None:
        self.compiles: list[tuple[Any, ...]] = []
        self.calls = 0

    def compile(self, fn: Callable[..., Any], example_inputs: Any) -> Callable[..., Any]:
        self.compiles.append(tuple(example_inputs))

        def compiled(*args: Any) -> Any:
            self.calls += 1
            return fn(*args)

        return compiled

    def save(self, graph: Any, directory: Path) -> list[str]:
        return []

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Any) -> Any:
        return self.compile(fn, example_inputs)

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "option": 7}


def test_inner_backend_compiles_once_then_is_captured(dev: Setup) -> None:
    inner = CountingInner()
    model = Tiny()
    static = torch.randn(4, 8)
    backend = dev.backend(inner=inner, num_warmups=2)
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
    graph = backend.compile(Tiny(), [torch.randn(2, 8)])
    with pytest.raises(NotImplementedError, match=r"cannot be written to disk.*re-captured at start"):
        backend.save(graph, tmp_path)
    with pytest.raises(NotImplementedError, match="re-captured at start from the inner backend"):
        backend.load(tmp_path, Tiny(), [torch.randn(2, 8)])
    fp = backend.fingerprint()
    assert fp["backend"] == dev.name and fp["device_api"] == dev.kind
    assert fp["inner"] is None and fp["num_warmups"] == 3
    assert fp["torch"] == torch.__version__ and "debug" in fp


def test_capture_error_ends_the_capture_and_propagates(dev: Setup) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        if dev.fake.capturing is not None:
            raise ValueError("boom inside capture")
        return x * 2

    with pytest.raises(ValueError, match="boom inside capture"):
        dev.backend().compile(broken, [torch.randn(2)])
    calls = [c[0] for c in dev.fake.calls]
    assert calls[calls.index("capture_begin") :][:3] == ["capture_begin", "capture_end", "stream_exit"]
    assert dev.fake.capturing is None and dev.fake.current.is_default


def test_fake_rejects_host_sync_during_capture(dev: Setup) -> None:
    def syncs(x: torch.Tensor) -> torch.Tensor:
        return x * x.sum().item()

    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        dev.backend().compile(syncs, [torch.randn(3)])


def test_bad_options() -> None:
    api = CudaGraphAPI(FakeCudaModule())
    with pytest.raises(ConfigError, match="num_warmups must be an integer >= 0, got -1"):
        CaptureBackend(api, "cuda_graph", num_warmups=-1)
    with pytest.raises(ConfigError, match="needs a name"):
        CaptureBackend(api, "")


def test_npu_adapter_passes_only_known_keywords() -> None:
    fake = FakeNpuModule()
    with pytest.raises(TypeError):  # the fake mirrors torch.npu.graph exactly
        fake.graph(fake.NPUGraph(), pool=None, stream=None, bogus=True)  # type: ignore[call-arg]
    api = NpuGraphAPI(fake, capture_error_mode="thread_local")
    graph = CaptureBackend(api, "acl_graph").compile(Tiny(), [torch.randn(2, 8)])
    assert graph.graph.capture_error_mode == "thread_local"
    assert graph.graph.auto_dispatch_capture is False


def test_hpu_wrap_module() -> None:
    fake = FakeHpuModule()
    model = Tiny()
    assert HpuGraphAPI(fake).wrap_module(model) is model
    assert fake.calls[-1] == (
        "wrap_in_hpu_graph",
        model,
        {
            "asynchronous": False,
            "disable_tensor_cache": True,
            "dry_run": False,
            "max_graphs": None,
        },
    )
    HpuGraphAPI(fake).wrap_module(model, disable_tensor_cache=False, max_graphs=4)
    assert fake.calls[-1][2]["max_graphs"] == 4 and fake.calls[-1][2]["disable_tensor_cache"] is False


def test_get_device_api_unknown_name() -> None:
    with pytest.raises(ConfigError, match="'tpu' is unknown; use one of: cuda, npu, hpu"):
        get_device_api("tpu")


def test_missing_vendor_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the package were not installed,
    # so this holds on machines where torch_npu or habana_frameworks do exist.
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    with pytest.raises(WarmgraphError, match=r"'torch_npu'.*pip install torch-npu"):
        get_device_api("npu")
    for mod in ("habana_frameworks", "habana_frameworks.torch", "habana_frameworks.torch.hpu"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(WarmgraphError, match="'habana_frameworks'"):
        get_device_api("hpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WarmgraphError, match=r"torch.cuda.is_available\(\) is False"):
        get_device_api("cuda")


@pytest.mark.parametrize(("name", "package"), [("npu", "torch_npu"), ("hpu", "habana_frameworks")])
def test_real_factories_on_this_machine(name: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        with pytest.raises(WarmgraphError, match=package):
            get_device_api(name)
    else:  # the vendor stack is here: the factory either works or says the device is unavailable
        try:
            assert get_device_api(name).name == name
        except WarmgraphError as exc:
            assert "is_available() is False" in str(exc)


def test_real_cuda_factory_on_this_machine() -> None:
    if torch.cuda.is_available():
        assert get_device_api("cuda").name == "cuda"
    else:
        with pytest.raises(WarmgraphError, match=r"CUDA graphs need a CUDA device"):
            get_device_api("cuda")


def test_importing_does_not_load_vendor_packages() -> None:
    code = (
        "import sys, warmgraph.compiler.capture, warmgraph.compiler.devices\n"
        "bad = [m for m in sys.modules if m.startswith(('torch_npu', 'habana_frameworks'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_capture() -> None:
    model = Tiny(log=[]).cuda()
    backend = CaptureBackend(get_device_api("cuda"), "cuda_graph", num_warmups=2, debug=True)
    with torch.no_grad():
        statics = [torch.randn(n, 8, device="cuda") for n in (16, 4)]
        graphs = [backend.compile(model, [s]) for s in statics]
        assert backend.pool is not None and all(g.graph.pool() == backend.pool for g in graphs)
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
