"""The runner over graph capture, on the CPU through faithful fakes of the three device APIs.

The fakes record only device work and replay it over the captured tensors, so a runner that
forgot to copy a call's inputs into the static buffers, moved them, copied state it should
read by reference, or captured host memory, would return wrong numbers or fail here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule

import warmgraph
from warmgraph import BucketSet
from warmgraph.compiler.devices import CudaGraphAPI, HpuGraphAPI, NpuGraphAPI
from warmgraph.compiler.registry import get_backend
from warmgraph.errors import BucketMissError, WarmgraphError
from warmgraph.models.toy import MLP, CausalAttention
from warmgraph.runtime import Dims
from warmgraph.runtime.dims import BOUND
from warmgraph.runtime.runner import State

DEVICES = {
    "cuda_graph": (CudaGraphAPI, FakeCudaModule),
    "acl_graph": (NpuGraphAPI, FakeNpuModule),
    "hpu_graph": (HpuGraphAPI, FakeHpuModule),
}


@pytest.fixture(params=list(DEVICES))
def device(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """(backend name, fake module), with the fake's device placement active for the test."""
    fake = DEVICES[request.param][1]()
    with fake.placement():
        yield request.param, fake


def make_backend(name: str, fake: Any, **options: Any) -> Any:
    api_cls = DEVICES[name][0]
    return get_backend(name, api=api_cls(fake, device_type=fake.device_type), debug=True, **options)


def on_device(module: torch.nn.Module) -> torch.nn.Module:
    return module.to("cpu").eval()  # "cpu" is the fakes' device memory; inside placement() this places it


def test_capture_largest_first_one_pool_and_correct_replays(device: tuple[str, Any]) -> None:
    name, fake = device
    torch.manual_seed(0)
    model = on_device(MLP())
    backend = make_backend(name, fake)
    runner = warmgraph.compile(model, buckets=[1, 2, 4, 8], example_inputs=(torch.randn(8, 64),), backend=backend)
    report = runner.warmup()
    # Largest first, each after its warm-up runs, into one shared pool where the device has pools.
    assert [rec.shapes[0] for rec in backend.captures_log] == [(8, 64), (4, 64), (2, 64), (1, 64)]
    assert all(rec.warmups == 2 for rec in backend.captures_log)
    assert report.captured == 4 and all(runner.states[b] is State.SEALED for b in runner.buckets)
    if name != "hpu_graph":
        assert fake.count("graph_pool_handle") == 1
    static = {b: [t.data_ptr() for t in runner.buffers.for_bucket(b)] for b in runner.buckets}
    for n in [3, 8, 1, 5, 3]:
        x = torch.randn(n, 64)
        expected = model(x).detach()
        torch.testing.assert_close(runner(x), expected, rtol=1e-5, atol=1e-6)
    # Buffers never move after capture (debug mode also checks this on every replay).
    assert {b: [t.data_ptr() for t in runner.buffers.for_bucket(b)] for b in runner.buckets} == static
    assert runner.counters["captures"] == 4 and runner.counters["replays"] == 5
    assert fake.count("replay") == 5
    # One flat allocation at the largest bucket: 8 rows of 64 floats, whatever the number of buckets.
    assert runner.buffers.nbytes == 8 * 64 * 4


def test_captured_outputs_are_copied_unless_asked_not_to(device: tuple[str, Any]) -> None:
    name, fake = device
    model = on_device(MLP())
    runner = warmgraph.compile(model, buckets=[4], example_inputs=(torch.randn(4, 64),),
                               backend=make_backend(name, fake))
    runner.warmup()
    first = runner(torch.ones(4, 64))
    kept = first.clone()
    runner(torch.zeros(4, 64))
    assert torch.equal(first, kept)  # a later replay did not change an earlier result
    views = warmgraph.compile(model, buckets=[4], example_inputs=(torch.randn(4, 64),),
                              backend=make_backend(name, fake), copy_outputs=False)
    views.warmup()
    a = views(torch.ones(4, 64))
    views(torch.zeros(4, 64))
    assert torch.equal(a, model(torch.zeros(4, 64)).detach())  # the documented footgun, opted into


def test_capture_two_dimensional_padding_with_fill_values(device: tuple[str, Any]) -> None:
    name, fake = device
    torch.manual_seed(0)
    model = on_device(CausalAttention())
    dims = Dims(inputs=[{0: "batch", 1: "seq"}, {0: "batch"}], fill=[0, 3], outputs=[{0: "batch", 1: "seq"}])
    runner = warmgraph.compile(model, buckets=BucketSet([(2, 8), (4, 16)], dims=("batch", "seq")), dims=dims,
                               example_inputs=(torch.randn(4, 16, 64), torch.tensor([16] * 4)),
                               backend=make_backend(name, fake))
    runner.warmup()
    for b, s in itertools.product([1, 3, 4], [2, 8, 11]):
        x, lengths = torch.randn(b, s, 64), torch.randint(1, s + 1, (b,))
        torch.testing.assert_close(runner(x, lengths), model(x, lengths).detach(), rtol=1e-5, atol=1e-6)
    # The padded rows of the lengths buffer hold the declared fill value, not a previous call's data.
    static_lengths = runner.buffers.for_bucket((4, 16))[1]
    runner(torch.randn(1, 16, 64), torch.tensor([16]))
    assert static_lengths.tolist() == [16, 3, 3, 3]


def _accumulate(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    state[: x.shape[0]] += x @ weight  # state is written in place, as a KV cache is
    return state[: x.shape[0]] * 2


def test_bound_state_is_read_and_written_in_place_never_copied(device: tuple[str, Any]) -> None:
    name, fake = device
    state, weight = torch.zeros(8, 4, device="cpu"), torch.randn(4, 4, device="cpu")
    runner = warmgraph.compile(_accumulate, buckets=[2, 8], example_inputs=(torch.zeros(2, 4), state, weight),
                               dims=Dims(inputs=[{0: 0}, BOUND, BOUND]), backend=make_backend(name, fake))
    runner.warmup()
    ref_state, before = state.clone(), runner.buffers.nbytes
    assert before == 8 * 4 * 4  # the bucketed input only: the state and the weight cost no buffer
    assert all(runner.buffers.for_bucket(b)[1] is state for b in runner.buckets)  # one tensor, every bucket
    for n in (2, 5, 8):
        x = torch.randn(n, 4)
        got = runner(x, state, weight)
        ref_state[:n] += x @ weight  # padded rows are zeros: they add nothing
        torch.testing.assert_close(state, ref_state)  # updated in the caller's tensor, by the graph
        torch.testing.assert_close(got, ref_state[:n] * 2)
    with pytest.raises(WarmgraphError, match="bound argument 1"):
        runner(torch.randn(2, 4), state.clone(), weight)  # another tensor: the graph would not see it


def test_after_the_seal_only_the_compile_policy_builds(device: tuple[str, Any]) -> None:
    name, fake = device
    model = on_device(MLP())
    strict = warmgraph.compile(model, buckets=[2, 4], example_inputs=(torch.randn(4, 64),),
                               backend=make_backend(name, fake), miss_policy="error")
    strict.warmup(only=[(4,)])
    with pytest.raises(BucketMissError, match="needs bucket \\(2,\\), which warmup did not build"):
        strict(torch.randn(2, 64))
    eager = warmgraph.compile(model, buckets=[2, 4], example_inputs=(torch.randn(4, 64),),
                              backend=make_backend(name, fake))
    eager.warmup(only=[(4,)])
    x = torch.randn(2, 64)
    torch.testing.assert_close(eager(x), model(x).detach())
    assert eager.counters["captures"] == 1 and eager.counters["eager_fallbacks"] == 1
    assert eager.states[(2,)] is State.UNSEEN
    late = warmgraph.compile(model, buckets=[2, 4], example_inputs=(torch.randn(4, 64),),
                             backend=make_backend(name, fake), miss_policy="compile")
    late.warmup(only=[(4,)])
    torch.testing.assert_close(late(x), model(x).detach())
    assert late.counters["captures"] == 2 and late.counters["late_builds"] == 1
    assert late.states[(2,)] is State.SEALED


def test_host_memory_cannot_be_captured() -> None:
    fake = FakeCudaModule()
    model = MLP().eval()  # never placed on the device
    cuda = get_backend("cuda_graph", api=CudaGraphAPI(fake))  # the adapter as on hardware: device type cuda
    with pytest.raises(WarmgraphError, match="is a tensor on cpu, but the cuda_graph graph runs on 'cuda'"):
        warmgraph.compile(model, buckets=[4], example_inputs=(torch.randn(4, 64),), backend=cuda).warmup()
    # And the fake itself refuses host work, as a real capture would record none of it.
    runner = warmgraph.compile(model, buckets=[4], example_inputs=(torch.randn(4, 64),),
                               backend=make_backend("cuda_graph", fake))
    with pytest.raises(RuntimeError, match="host memory"):
        runner.warmup()


def test_a_bucket_built_on_first_use_leaves_bound_state_alone(device: tuple[str, Any]) -> None:
    # Without warmup, each bucket is captured when first needed; its warm-ups must run on padding,
    # not on the previous call's values seen through the new bucket's shape.
    name, fake = device
    state, weight = torch.zeros(8, 4, device="cpu"), torch.eye(4, device="cpu")
    runner = warmgraph.compile(_accumulate, buckets=[2, 8], example_inputs=(torch.zeros(2, 4), state, weight),
                               dims=Dims(inputs=[{0: 0}, BOUND, BOUND]), backend=make_backend(name, fake))
    runner(torch.ones(2, 4), state, weight)
    runner(torch.ones(5, 4), state, weight)  # bucket 8 is captured now
    assert state[:, 0].tolist() == [2, 2, 1, 1, 1, 0, 0, 0]
    assert runner.counters["captures"] == 2 and runner.counters["late_builds"] == 0
