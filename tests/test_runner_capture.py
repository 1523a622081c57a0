"""The runner over graph capture, on the CPU through faithful fakes of the three device APIs.

The fakes replay recorded ops over the captured tensors, so a runner that forgot to copy a
call's inputs into the static buffers, or moved them, would return wrong numbers here.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule

import warmgraph
from warmgraph import BucketSet
from warmgraph.compiler.devices import CudaGraphAPI, HpuGraphAPI, NpuGraphAPI
from warmgraph.compiler.registry import get_backend
from warmgraph.models.toy import MLP, CausalAttention
from warmgraph.runtime import Dims

DEVICES = {
    "cuda_graph": (CudaGraphAPI, FakeCudaModule),
    "acl_graph": (NpuGraphAPI, FakeNpuModule),
    "hpu_graph": (HpuGraphAPI, FakeHpuModule),
}


def make_backend(name: str, **options):  # type: ignore[no-untyped-def]
    api_cls, fake_cls = DEVICES[name]
    fake = fake_cls()
    return get_backend(name, api=api_cls(fake), debug=True, **options), fake


@pytest.mark.parametrize("name", list(DEVICES))
def test_capture_largest_first_one_pool_and_correct_replays(name: str) -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    backend, fake = make_backend(name)
    runner = warmgraph.compile(model, buckets=[1, 2, 4, 8], example_inputs=(torch.randn(8, 64),), backend=backend)
    runner.warmup()
    # Largest first, each after its warm-up runs, into one shared pool where the device has pools.
    assert [rec.shapes[0] for rec in backend.captures_log] == [(8, 64), (4, 64), (2, 64), (1, 64)]
    assert all(rec.warmups == 2 for rec in backend.captures_log)
    if name != "hpu_graph":
        assert fake.count("graph_pool_handle") == 1
    static = {b: [t.data_ptr() for t in runner._static[b]] for b in runner.buckets}
    for n in [3, 8, 1, 5, 3]:
        x = torch.randn(n, 64)
        expected = model(x).detach()
        got = runner(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Buffers never move after capture (debug mode also checks this on every replay).
    assert {b: [t.data_ptr() for t in runner._static[b]] for b in runner.buckets} == static
    assert runner.counters["compiles"] == 4 and runner.counters["replays"] == 5
    assert fake.count("replay") == 5


def test_captured_outputs_are_copied_unless_asked_not_to() -> None:
    model = MLP().eval()
    backend, _ = make_backend("cuda_graph")
    runner = warmgraph.compile(model, buckets=[4], example_inputs=(torch.randn(4, 64),), backend=backend)
    runner.warmup()
    first = runner(torch.ones(4, 64))
    kept = first.clone()
    runner(torch.zeros(4, 64))
    assert torch.equal(first, kept)  # a later replay did not change an earlier result
    views = warmgraph.compile(model, buckets=[4], example_inputs=(torch.randn(4, 64),),
                              backend=make_backend("cuda_graph")[0], copy_outputs=False)
    views.warmup()
    a = views(torch.ones(4, 64))
    views(torch.zeros(4, 64))
    assert torch.equal(a, model(torch.zeros(4, 64)).detach())  # the documented footgun, opted into


def test_capture_two_dimensional_padding_with_fill_values() -> None:
    torch.manual_seed(0)
    model = CausalAttention().eval()
    dims = Dims(inputs=[{0: "batch", 1: "seq"}, {0: "batch"}], fill=[0, 0], outputs=[{0: "batch", 1: "seq"}])
    backend, _ = make_backend("acl_graph")
    runner = warmgraph.compile(model, buckets=BucketSet([(2, 8), (4, 16)], dims=("batch", "seq")), dims=dims,
                               example_inputs=(torch.randn(4, 16, 64), torch.tensor([16] * 4)), backend=backend)
    runner.warmup()
    for b, s in itertools.product([1, 3, 4], [2, 8, 11]):
        x, lengths = torch.randn(b, s, 64), torch.randint(1, s + 1, (b,))
        torch.testing.assert_close(runner(x, lengths), model(x, lengths).detach(), rtol=1e-5, atol=1e-6)
    # The padded rows of the lengths buffer hold the fill value, not a previous call's data.
    static_lengths = runner._static[(4, 16)][1]
    runner(torch.randn(1, 16, 64), torch.tensor([16]))
    assert static_lengths[1:].tolist() == [0, 0, 0]
