"""Static buffers of capture runners: one largest-bucket allocation, contiguous per-bucket views,
declared fill values in every padded element, and bound state by reference, never copied."""

from __future__ import annotations

import pytest
import torch

from warmgraph import BucketSet
from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.runtime.buffers import StaticBuffers
from warmgraph.runtime.dims import BOUND, Dims, resolve_layout

BUCKETS = BucketSet([(1, 4), (2, 8), (4, 2)], dims=("batch", "seq"))


def setup() -> tuple[StaticBuffers, torch.Tensor, torch.Tensor]:
    cache = torch.randn(10, 3)  # state: bound, never copied
    weight = torch.randn(3, 3)
    example = (torch.zeros(1, 1, 3), torch.zeros(1, dtype=torch.long), cache, weight, torch.zeros(5))
    dims = Dims(inputs=[{0: "batch", 1: "seq"}, {0: "batch"}, BOUND, BOUND, None], fill=[0.5, -1])
    return StaticBuffers(resolve_layout(example, BUCKETS, dims), BUCKETS), cache, weight


def test_memory_is_one_largest_bucket_set_and_nothing_for_bound_state() -> None:
    buffers, cache, weight = setup()
    # hidden: the largest bucket by its own size is (2, 8): 2*8*3 floats; ids: batch 4 longs; the
    # static argument 5 floats; the bound cache and weight: 0 bytes.
    assert buffers.nbytes == 2 * 8 * 3 * 4 + 4 * 8 + 5 * 4
    for bucket in BUCKETS:
        views = buffers.for_bucket(bucket)
        assert views[2] is cache and views[3] is weight  # the caller's tensors themselves, in every bucket
        assert views[0].shape == (bucket[0], bucket[1], 3) and views[0].is_contiguous()
    flat = {buffers.for_bucket(b)[0].untyped_storage().data_ptr() for b in BUCKETS}
    assert len(flat) == 1  # one allocation shared by every bucket's view


def test_fill_writes_values_and_the_declared_padding() -> None:
    buffers, cache, weight = setup()
    hidden, ids = torch.randn(1, 5, 3), torch.tensor([7])
    views, padded = buffers.fill((2, 8), (1, 5), [hidden, ids, cache, weight, torch.ones(5)])
    assert torch.equal(views[0][:1, :5], hidden)
    assert (views[0][1:] == 0.5).all() and (views[0][:, 5:] == 0.5).all()
    assert views[1].tolist() == [7, -1]
    assert torch.equal(views[4], torch.ones(5))
    assert padded == (2 * 8 - 1 * 5) * 3 + (2 - 1)
    # A later call of the same bucket overwrites everything, padding included.
    views, _ = buffers.fill((2, 8), (2, 8), [torch.zeros(2, 8, 3), torch.tensor([1, 2]), cache, weight, torch.ones(5)])
    assert (views[0] == 0).all() and views[1].tolist() == [1, 2]


def test_a_bound_tensor_that_moved_is_refused() -> None:
    buffers, cache, weight = setup()
    args = [torch.randn(1, 4, 3), torch.tensor([1]), cache, weight, torch.ones(5)]
    buffers.fill((1, 4), (1, 4), args)
    replaced = cache.clone()  # same values, other memory: a captured graph would read the old address
    with pytest.raises(WarmgraphError, match=r"bound argument 2 is at address .* update it in place"):
        buffers.fill((1, 4), (1, 4), [args[0], args[1], replaced, weight, args[4]])
    cache.set_(torch.randn(10, 3))  # the same tensor object, moved
    with pytest.raises(WarmgraphError, match="bound argument 2"):
        buffers.fill((1, 4), (1, 4), args)


def test_bound_needs_a_tensor_and_takes_no_fill() -> None:
    with pytest.raises(ConfigError, match="binds argument 0, which is not a tensor"):
        resolve_layout((3,), BucketSet([1]), Dims(inputs=[BOUND]))
    with pytest.raises(ConfigError, match="bound"):
        resolve_layout((torch.zeros(1), torch.zeros(2)), BucketSet([1]), Dims(inputs=[{0: 0}, BOUND], fill=[0, 1]))
