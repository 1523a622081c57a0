"""Static input buffers of a capture runner: allocated once, viewed per bucket, bound state by reference.

A captured device graph reads its inputs from fixed addresses, so every call copies its
tensors into the buffers the graph was captured with. The buffers are allocated once:

  - a *bucketed* argument gets one flat allocation holding its largest bucket; a bucket's
    buffer is the contiguous prefix of that allocation shaped for the bucket (contiguous,
    so a graph compiled for contiguous inputs reads it correctly);
  - a *static* argument (fixed shape, new values each call) gets one buffer of its shape,
    shared by every bucket;
  - a *bound* argument (a KV cache, weights, scales) gets nothing: the graph reads the
    caller's tensor where it was at capture. ``check_bound`` refuses a call whose bound
    tensor now lives elsewhere, because the graph would silently read the old address;
  - a *constant* (non-tensor) is passed as it is.

So the memory is one largest-bucket set of activations, whatever the number of buckets,
plus nothing for state. ``fill`` writes a call into a bucket's buffers: the real values
into the front, the declared fill value into every padded element (padded rows of a block
table point at a scratch block, padded slot ids at a scratch slot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from warmgraph.bucketing.buckets import Bucket, BucketSet
from warmgraph.errors import WarmgraphError
from warmgraph.runtime.dims import ArgSpec, Layout


class StaticBuffers:
    """The buffers of every bucket of one runner. See the module docstring."""

    def __init__(self, layout: Layout, buckets: BucketSet) -> None:
        self.layout = layout
        self._flat: dict[int, torch.Tensor] = {}
        for spec in layout.args:
            if spec.kind == "bucketed":
                most = max(math.prod(spec.shape_at(b)) for b in buckets)
                self._flat[spec.index] = torch.full((most,), spec.fill, dtype=spec.dtype, device=spec.device)
            elif spec.kind == "static":
                self._flat[spec.index] = torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
        self._views: dict[Bucket, list[Any]] = {}
        self._retired: list[torch.Tensor] = []  # allocations outgrown, still read by earlier captures
        self._bound_ptrs = {i: t.data_ptr() for i, t in layout.bound}

    @property
    def nbytes(self) -> int:
        """Bytes allocated for buffers (bound arguments cost nothing)."""
        return sum(t.numel() * t.element_size() for t in [*self._flat.values(), *self._retired])

    def for_bucket(self, bucket: Bucket) -> list[Any]:
        """The arguments a graph of ``bucket`` is captured with and replayed on (made once per bucket)."""
        views = self._views.get(bucket)
        if views is not None:
            return views
        views = []
        for spec in self.layout.args:
            if spec.kind == "bucketed":
                shape = spec.shape_at(bucket)
                flat = self._flat[spec.index]
                if math.prod(shape) > flat.numel():  # a bucket added after allocation (miss policy 'compile')
                    flat = self._grow(spec, math.prod(shape))
                views.append(flat[: math.prod(shape)].view(shape))
            elif spec.kind == "static":
                views.append(self._flat[spec.index])
            else:  # bound: the caller's tensor itself; constant: the value
                views.append(spec.value)
        self._views[bucket] = views
        return views

    def _grow(self, spec: ArgSpec, numel: int) -> torch.Tensor:
        # Graphs already captured read the old allocation, which their views keep alive; only
        # buckets made from now on use the new one.
        grown = torch.full((numel,), spec.fill, dtype=spec.dtype, device=spec.device)
        self._retired.append(self._flat[spec.index])
        self._flat[spec.index] = grown
        return grown

    def reset(self, bucket: Bucket) -> list[Any]:
        """``bucket``'s buffers set to each argument's fill value (zeros for static ones); returns them.

        A capture runs the function on its buffers (warm-ups, and on some devices the capture
        itself), which may write bound state at positions the buffers name (slot ids): they must
        hold padding, which points at scratch, not a previous call's values seen through another
        bucket's shape.
        """
        views = self.for_bucket(bucket)
        for spec in self.layout.args:
            if spec.kind == "bucketed":
                views[spec.index].fill_(spec.fill)
            elif spec.kind == "static":
                views[spec.index].zero_()
        return views

    def fill(self, bucket: Bucket, shape: tuple[int, ...], args: Sequence[Any]) -> tuple[list[Any], int]:
        """Copy one call's ``args`` (of bucket-space ``shape``) into ``bucket``'s buffers.

        Returns the buffers (the graph's arguments) and the number of padded elements written.
        """
        views = self.for_bucket(bucket)
        padded = 0
        for spec in self.layout.args:
            kind = spec.kind
            if kind == "constant":
                continue
            arg, buf = args[spec.index], views[spec.index]
            if kind == "bound":
                self.check_bound(spec.index, arg)
                continue
            if kind == "static":
                buf.copy_(arg)
                continue
            region = buf
            for d, axis in spec.bucketed:
                if shape[axis] != bucket[axis]:
                    region = region.narrow(d, 0, shape[axis])
            region.copy_(arg)
            if region is not buf:
                padded += buf.numel() - arg.numel()
                for d, axis in spec.bucketed:
                    extra = bucket[axis] - shape[axis]
                    if extra:
                        buf.narrow(d, shape[axis], extra).fill_(spec.fill)
        return views, padded

    def check_bound(self, index: int, arg: torch.Tensor) -> None:
        """Raise unless bound argument ``index`` is still at the address the graphs read."""
        expected = self._bound_ptrs[index]
        if arg.data_ptr() != expected:
            raise WarmgraphError(
                f"bound argument {index} is at address {arg.data_ptr():#x}, but the captured graphs read it at "
                f"{expected:#x}; bound state (KV cache, weights, scales) is passed by reference, so update it in "
                "place (copy_, index_copy_) instead of replacing or resizing it"
            )
