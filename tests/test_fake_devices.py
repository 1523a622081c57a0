"""The device fakes, and the vendor contract the adapters of ``warmgraph.compiler.devices`` rely on.

Each fake behaves as its hardware does, or refuses where the hardware misbehaves. Checked per fake:
device vs host memory (``placement``), capture that records without running (CUDA, NPU, HPU with
dry_run) or runs once (HPU), host memory and host syncs refused in a capture, replay order in a
shared pool, freed inputs at replay, ``is_current_stream_capturing``, and the vendor signatures
(torch 2.13 ``torch.cuda``, torch_npu ``torch.npu``, habana_frameworks ``hpu``). Then the adapters:
which keywords they pass, and how the real factories fail where a vendor stack is missing.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_devices import FakeCudaModule, FakeGraph, FakeHpuModule, FakeNpuModule
from torch import nn

from warmgraph.compiler.capture import CaptureBackend
from warmgraph.compiler.devices import CudaGraphAPI, NpuGraphAPI, get_device_api
from warmgraph.errors import ConfigError, WarmgraphError

MODULES: dict[str, Callable[[], Any]] = {"cuda": FakeCudaModule, "npu": FakeNpuModule, "hpu": FakeHpuModule}


@pytest.fixture(params=list(MODULES))
def fake(request: pytest.FixtureRequest) -> Iterator[Any]:
    module = MODULES[request.param]()
    with module.placement():
        yield module


def new_graph(fake: Any) -> FakeGraph:
    return getattr(fake, {"cuda": "CUDAGraph", "npu": "NPUGraph", "hpu": "HPUGraph"}[fake.name])()


@contextlib.contextmanager
def capture(fake: Any, graph: FakeGraph, **options: Any) -> Iterator[None]:
    """The vendor's ``graph(...)`` context manager on a side stream."""
    with fake.graph(graph, stream=fake.Stream(), **options):
        yield


def on_device(fake: Any, *values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=fake.device_type)


def test_placement_decides_what_is_device_memory(fake: Any) -> None:
    start = fake.memory_allocated()
    placed = [
        torch.zeros(4, device=fake.device_type),
        torch.ones(4).to(fake.device_type),
        torch.ones(4).to(device=torch.device(fake.device_type)),
        torch.full((2,), 3.0, device=fake.device_type),
    ]
    model = nn.Linear(4, 4).to(fake.device_type)  # Module.to moves (here: registers) every parameter
    derived = placed[0] + 1  # computed from device memory: on the device
    host = [torch.zeros(4), torch.ones(4).to(torch.float64)]
    assert all(map(fake.is_device_tensor, [*placed, model.weight, model.bias, derived]))
    assert not any(map(fake.is_device_tensor, host))
    assert fake.memory_allocated() - start == sum(t.nbytes for t in (*placed, model.weight, model.bias, derived))
    del placed, derived
    gc.collect()
    assert fake.memory_allocated() - start == model.weight.nbytes + model.bias.nbytes


def test_stream_capture_runs_nothing_and_leaves_garbage(fake: Any) -> None:
    x, state = on_device(fake, 1, 2, 3, 4), torch.zeros(4, device=fake.device_type)
    graph = new_graph(fake)
    with capture(fake, graph, **({"dry_run": True} if fake.name == "hpu" else {})):
        state.add_(x)
        out = state * 2
        steps = torch.arange(4, device=fake.device_type)
    assert torch.equal(state, torch.zeros(4))  # nothing ran: the in-place update is undone
    assert torch.isnan(out).all() and (steps == -1).all()  # new memory: never written yet
    graph.replay()
    assert torch.equal(state, x) and torch.equal(out, 2 * x) and torch.equal(steps, torch.arange(4))


def test_hpu_capture_runs_the_work_once() -> None:
    # The bridge launches the recipe at capture unless dry_run (hpu_habana_launch_op_pt.cpp).
    fake = FakeHpuModule()
    with fake.placement():
        x, state = on_device(fake, 1, 2), torch.zeros(2, device=fake.device_type)
        graph = fake.HPUGraph()
        with capture(fake, graph):
            state.add_(x)
            out = state * 2
        assert torch.equal(state, x) and torch.equal(out, 2 * x)
        graph.replay()
        assert torch.equal(state, 2 * x) and torch.equal(out, 4 * x)


def test_host_memory_in_a_capture_is_refused(fake: Any) -> None:
    x, host = on_device(fake, 1, 2, 3), torch.ones(3)
    bodies: list[tuple[Callable[[], Any], str]] = [
        (lambda: x + host, r"aten\.add\.Tensor reads host memory \(a tensor of shape \(3,\)"),
        (lambda: host.add_(x), r"aten\.add_\.Tensor writes host memory"),
        (lambda: torch.add(x, x, out=host), r"aten\.add\.out writes host memory"),
        (lambda: torch.ones(3), r"torch\.ones works on host memory"),  # a factory without device=
    ]
    for body, message in bodies:
        refused = pytest.raises(RuntimeError, match=message + r".*records only device work.*fake refuses")
        with refused, capture(fake, new_graph(fake)):
            body()
        assert fake.capturing is None and not fake.is_current_stream_capturing()
    assert torch.equal(host, torch.ones(3))


def test_a_host_scalar_is_baked_in_at_capture(fake: Any) -> None:
    x, scale = on_device(fake, 1, 2), torch.tensor(2.0)  # 0-dim host: CUDA kernels take CPU scalars
    graph = new_graph(fake)
    with capture(fake, graph):
        out = x * scale
    scale.fill_(5.0)
    graph.replay()
    assert torch.equal(out, 2 * x)


def test_host_syncs_are_refused_during_capture(fake: Any) -> None:
    x = on_device(fake, 1, 0, 3)
    for body in (lambda: x.sum().item(), lambda: x.nonzero(), lambda: torch.equal(x, x)):
        with pytest.raises(RuntimeError, match="not permitted when stream"), capture(fake, new_graph(fake)):
            body()
    with pytest.raises(RuntimeError, match="synchronize is not permitted"), capture(fake, new_graph(fake)):
        fake.synchronize()


def test_freed_input_raises_at_replay_where_the_graph_holds_addresses(fake: Any) -> None:
    graph = new_graph(fake)
    x = on_device(fake, 1, 2)
    with capture(fake, graph):
        out = x + 1
    del x
    gc.collect()
    if fake.name == "hpu":  # HPUGraph::capture_end keeps the input tensors: nothing was freed
        graph.replay()
        assert torch.equal(out, torch.tensor([2.0, 3.0]))
    else:
        with pytest.raises(RuntimeError, match=r"reads 1 input\(s\) freed since capture.*check_input_liveness"):
            graph.replay()


def test_cuda_check_input_liveness_raises_torch_s_error() -> None:
    fake = FakeCudaModule()
    with fake.placement():
        graph, x = fake.CUDAGraph(), on_device(fake, 1, 2)
        with capture(fake, graph, check_input_liveness=True):
            x * 2
        del x
        gc.collect()
        with pytest.raises(RuntimeError, match=r"CUDA graph replay detected 1 dead tensor\(s\)"):
            graph.replay()


@pytest.mark.parametrize("name", ["cuda", "npu"])
def test_replay_order_in_a_shared_pool(name: str) -> None:
    fake = MODULES[name]()
    with fake.placement():
        x, pool, stream = on_device(fake, 1, 2), fake.graph_pool_handle(), fake.Stream()
        first, second, alone = new_graph(fake), new_graph(fake), new_graph(fake)
        with fake.graph(first, pool=pool, stream=stream):
            a = x * 2
        with fake.graph(second, pool=pool, stream=stream):
            b = x * 3
        with fake.graph(alone, stream=stream):  # a private pool
            c = x * 4
        assert first.pool() is second.pool() is pool and alone.pool() is not pool
        for graph in (second, alone, first):
            graph.replay()
        assert torch.isnan(b).all()  # first may reuse memory second was given: replay in capture order
        assert torch.equal(a, 2 * x) and torch.equal(c, 4 * x)
        second.replay()
        alone.replay()
        assert torch.equal(a, 2 * x) and torch.equal(b, 3 * x)  # later graphs never clobber earlier ones
        second.reset()
        first.replay()
        assert torch.equal(b, 3 * x)  # a reset graph's memory is no longer the pool's


def test_is_current_stream_capturing(fake: Any) -> None:
    graph, other = new_graph(fake), fake.Stream()
    assert not fake.is_current_stream_capturing()
    with capture(fake, graph):
        assert fake.is_current_stream_capturing()
        with fake.stream(other):  # CUDA/NPU: capture is per stream; HPU: the flag is the stream's
            assert not fake.is_current_stream_capturing()
    assert not fake.is_current_stream_capturing()


def test_hpu_only_graph_sets_the_capturing_flag() -> None:
    # Bridge 1.19.0 graphs.py: graph.__enter__ sets capture_stream.is_capture; capture_begin does not.
    fake = FakeHpuModule()
    graph = fake.HPUGraph()
    with fake.stream(fake.Stream()):
        graph.capture_begin()
        assert fake.capturing is graph and not fake.is_current_stream_capturing()
        graph.capture_end()


def test_cuda_keep_graph_instantiates_on_first_replay() -> None:
    fake = FakeCudaModule()
    with fake.placement():
        x, kept, plain = on_device(fake, 1.0), fake.CUDAGraph(keep_graph=True), fake.CUDAGraph()
        with pytest.raises(RuntimeError, match="capture_end\\(\\) must have been called"):
            kept.instantiate()
        for graph in (kept, plain):
            with capture(fake, graph):
                x + 1
        with pytest.raises(RuntimeError, match="only when keep_graph=true"):
            plain.instantiate()  # capture_end instantiated it already
        kept.replay()
        kept.replay()
        plain.replay()
    assert fake.count("instantiate") == 1 and fake.calls[-4] == ("instantiate", kept.id)
    explicit = fake.CUDAGraph(keep_graph=True)
    with fake.placement():
        x = on_device(fake, 1.0)  # torch.tensor(..., device=) copies from the host: not inside a capture
        with capture(fake, explicit, enable_annotations=True):
            x * 2
    explicit.instantiate()
    explicit.instantiate()  # allowed with keep_graph: re-instantiates
    explicit.replay()
    assert fake.count("instantiate") == 3 and explicit.enable_annotations


def test_capture_misuse_is_refused(fake: Any) -> None:
    graph = new_graph(fake)
    with pytest.raises(RuntimeError, match="without a preceding successful capture"):
        graph.replay()
    with capture(fake, graph), pytest.raises(RuntimeError, match="already underway"):
        new_graph(fake).capture_begin()
    with pytest.raises(RuntimeError, match="already owns a captured graph"), capture(fake, graph):
        pass
    if fake.name != "hpu":  # wrap_in_hpu_graph itself captures on the default stream
        with pytest.raises(RuntimeError, match="non-default stream"):
            new_graph(fake).capture_begin()


SIGNATURE_MISTAKES: dict[str, list[Callable[[Any], Any]]] = {
    "cuda": [
        lambda f: f.CUDAGraph(pool=None),
        lambda f: f.CUDAGraph().capture_begin(dry_run=True),
        lambda f: f.graph(f.CUDAGraph(), auto_dispatch_capture=True),
        lambda f: f.graph(f.CUDAGraph(), dry_run=True),
    ],
    "npu": [
        lambda f: f.NPUGraph(keep_graph=True),
        lambda f: f.NPUGraph().capture_begin(check_input_liveness=True),
        lambda f: f.graph(f.NPUGraph(), check_input_liveness=True),
        lambda f: f.graph(f.NPUGraph(), enable_annotations=True),
    ],
    "hpu": [
        lambda f: f.HPUGraph().capture_begin(pool=None),
        lambda f: f.graph(f.HPUGraph(), pool=None),
        lambda f: f.graph(f.HPUGraph(), capture_error_mode="global"),
        lambda f: f.wrap_in_hpu_graph(nn.Linear(1, 1), keep_graph=True),
        lambda f: f.graph_pool_handle(),
    ],
}


@pytest.mark.parametrize("name", list(MODULES))
def test_keywords_the_vendor_lacks_are_refused(name: str) -> None:
    fake = MODULES[name]()
    for mistake in SIGNATURE_MISTAKES[name]:
        with pytest.raises((TypeError, AttributeError)):
            mistake(fake)
    if name != "hpu":  # HPU graphs have no capture error modes (see above)
        with pytest.raises(RuntimeError, match="Unknown capture error mode"):
            new_graph(fake).capture_begin(capture_error_mode="strict")


def test_hpu_wrap_in_hpu_graph_captures_per_shape_on_the_default_stream() -> None:
    fake = FakeHpuModule()
    calls: list[torch.Tensor] = []
    with fake.placement():
        module = nn.Linear(3, 2).to(fake.device_type)
        forward = module.forward

        def counted(x: torch.Tensor) -> torch.Tensor:
            calls.append(x)
            return forward(x)

        module.forward = counted  # type: ignore[method-assign]
        wrapped = fake.wrap_in_hpu_graph(module, max_graphs=1)
        x, y, z = (torch.randn(2, 3, device=fake.device_type) for _ in range(3))
        first = wrapped(x)  # captured on the default stream, run by the capture itself
        assert fake.calls[-2:] == [("capture_end",), ("stream_exit", fake.default)]
        assert wrapped(y) is first and len(calls) == 1
        torch.testing.assert_close(first, y @ module.weight.T + module.bias)
        assert wrapped(z, warmup_mode=True) is first and fake.count("replay") == 1  # warm-up skips replay
        wrapped(torch.randn(5, 3, device=fake.device_type))  # a new shape beyond max_graphs: eager
        assert len(calls) == 2 and fake.count("capture_begin") == 1


def test_adapters_pass_only_keywords_the_vendor_has() -> None:
    npu, cuda = FakeNpuModule(), FakeCudaModule()
    with npu.placement():
        api = NpuGraphAPI(npu, "thread_local", device_type=npu.device_type)
        graph = CaptureBackend(api, "acl_graph").compile(nn.Linear(2, 2).to("cpu"), [torch.ones(2, device="cpu")])
    assert graph.graph.capture_error_mode == "thread_local" and graph.graph.auto_dispatch_capture is False
    with cuda.placement():
        api = CudaGraphAPI(cuda, device_type=cuda.device_type, check_input_liveness=True)
        graph = CaptureBackend(api, "cuda_graph").compile(nn.Linear(2, 2).to("cpu"), [torch.ones(2, device="cpu")])
    assert graph.graph.check_input_liveness is True and graph.graph.capture_error_mode == "global"


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
    if importlib.util.find_spec(package) is None:
        with pytest.raises(WarmgraphError, match=package):
            get_device_api(name)
    else:  # the vendor stack is here: the factory works, or says the device or lazy mode is missing
        try:
            assert get_device_api(name).name == name
        except WarmgraphError as exc:
            assert "is_available() is False" in str(exc) or "lazy mode" in str(exc)


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
