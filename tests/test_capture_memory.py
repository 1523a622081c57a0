"""What a captured graph holds, over the fake device modules: its static inputs, pools and outputs.

Inputs must live in device memory and stay where they were at capture (``debug`` checks the
addresses), a new tensor passed at replay is ignored, graphs share one pool and one capture
stream and an earlier graph of the pool overwrites later outputs, and the static outputs are
the same tensors on every replay. Each test runs over every setup of ``capture_setup.py``;
the capture recipe itself is tested in ``test_capture.py``.
"""

from __future__ import annotations

import capture_setup
import pytest
import torch
from capture_setup import Setup, Tiny, eager
from fake_devices import FakeStream

from warmgraph.compiler.capture import CaptureBackend
from warmgraph.errors import WarmgraphError

dev = capture_setup.dev  # the fixture: each test runs once per fake device setup


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
