"""Which tensor dimensions follow which bucket dimension, learned once and checked on every call.

``Dims`` is what a user declares; ``Layout`` is it resolved against ``example_inputs`` and
the bucket set: per argument its kind, dtype, device, rank and fixed sizes, which of its
dimensions are bucketed, the padding fill; per output which dimensions to slice back.

Argument kinds:
  - ``bucketed``: some dimensions follow bucket dimensions; padded to the bucket with ``fill``;
  - ``static``: a tensor of fixed shape that changes value between calls (a capture backend
    copies it into a buffer);
  - ``bound``: state passed by reference (a KV cache, weights, scales). Never padded, never
    copied, never duplicated per bucket; a capture backend reads it where it was at capture;
  - ``constant``: a non-tensor argument, compiled in; every call must pass the same value.

Default (no ``Dims``): dimension 0 of every tensor argument follows the (single) bucket
dimension and is padded with zeros; dimension 0 of every output tensor is sliced back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.errors import ConfigError, WarmgraphError

DimMap = Mapping[int, "int | str"]
BOUND = "bound"  # a ``Dims.inputs`` entry: this argument is state passed by reference


@dataclass(frozen=True)
class Dims:
    """Declared bucketing of a step's arguments and outputs.

    ``inputs``: per positional argument, ``{tensor_dim: bucket_dim}`` (bucket_dim by name or
    index), None for an argument that is not bucketed, or ``BOUND`` for state passed by
    reference (see the module docstring). ``fill``: the padding value per
    argument (a list, or ``{arg_index: value}``), 0 where not given; -1 suits slot indices.
    ``outputs``: per output (a tensor, or the items of a tuple/list), ``{dim: bucket_dim}``
    to slice back, or None to return that output whole.
    """

    inputs: Sequence[DimMap | str | None] | None = None
    fill: Sequence[float] | Mapping[int, float] | None = None
    outputs: Sequence[DimMap | None] | None = None


@dataclass(frozen=True)
class ArgSpec:
    index: int
    kind: str  # "bucketed" | "static" | "bound" | "constant"
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    shape: tuple[int, ...] = ()
    bucketed: tuple[tuple[int, int], ...] = ()  # (tensor dim, bucket axis)
    fill: float = 0
    value: Any = None  # a constant: baked into the graph, so it must not change

    @property
    def is_tensor(self) -> bool:
        return self.kind != "constant"

    def shape_at(self, bucket: tuple[int, ...]) -> list[int]:
        """This argument's shape in ``bucket``."""
        shape = list(self.shape)
        for d, axis in self.bucketed:
            shape[d] = bucket[axis]
        return shape


@dataclass(frozen=True)
class Layout:
    args: tuple[ArgSpec, ...]
    outputs: tuple[tuple[tuple[int, int], ...] | None, ...] | None  # None: default (dim 0 of each tensor)
    axis_sources: tuple[tuple[int, int], ...] = field(default=())  # per bucket axis: (arg, dim) that sets it
    # The per-call checks flattened into plain tuples, for the hot path of ``real_shape``:
    # (index, dtype, device, rank, fixed (dim, size) pairs, bucketed (dim, axis) pairs,
    # the example tensor of a bound argument (passing that very tensor skips the checks)).
    tensor_checks: tuple[tuple[Any, ...], ...] = field(default=())
    constant_checks: tuple[tuple[int, Any], ...] = field(default=())
    bound: tuple[tuple[int, Any], ...] = field(default=())  # (index, example tensor) of bound arguments


def _axis(bucket_dim: int | str, buckets: BucketSet, where: str) -> int:
    if isinstance(bucket_dim, str):
        if bucket_dim not in buckets.dims:
            raise ConfigError(f"{where} names bucket dimension {bucket_dim!r}; the buckets have {buckets.dims}")
        return buckets.dims.index(bucket_dim)
    if not 0 <= bucket_dim < buckets.ndim:
        raise ConfigError(f"{where} names bucket dimension {bucket_dim}; the buckets have {buckets.ndim}")
    return bucket_dim


def _maps(seq: Sequence[DimMap | str | None], buckets: BucketSet,
          what: str) -> list[tuple[tuple[int, int], ...] | str | None]:
    out: list[tuple[tuple[int, int], ...] | str | None] = []
    for i, mapping in enumerate(seq):
        if mapping is None or mapping == BOUND:
            out.append(mapping)
            continue
        if isinstance(mapping, str) or not isinstance(mapping, Mapping):
            raise ConfigError(f"dims {what}[{i}] is {mapping!r}; give a {{tensor_dim: bucket_dim}} dict, None, "
                              f"or {BOUND!r}")
        out.append(tuple((int(d), _axis(b, buckets, f"dims {what}[{i}][{d}]")) for d, b in mapping.items()))
    return out


def resolve_layout(example_inputs: Sequence[Any], buckets: BucketSet, dims: Dims | None) -> Layout:
    """Check ``dims`` against the example call and the buckets; ConfigError on any mismatch."""
    n = len(example_inputs)
    if dims is None:
        if buckets.ndim != 1:
            raise ConfigError(
                f"the buckets have {buckets.ndim} dimensions {buckets.dims}; declare with dims=Dims(inputs=...) "
                "which argument dimensions follow them"
            )
        input_maps = [((0, 0),) if isinstance(t, torch.Tensor) else None for t in example_inputs]
        output_maps = None
        fills: dict[int, float] = {}
    else:
        raw_inputs = list(dims.inputs) if dims.inputs is not None else [None] * n
        if len(raw_inputs) != n:
            raise ConfigError(f"dims.inputs has {len(raw_inputs)} entries but example_inputs has {n} arguments")
        input_maps = _maps(raw_inputs, buckets, "inputs")
        output_maps = _maps(dims.outputs, buckets, "outputs") if dims.outputs is not None else None
        if output_maps is not None and BOUND in output_maps:
            raise ConfigError(f"dims.outputs cannot be {BOUND!r}; an output is sliced ({{dim: bucket_dim}}) "
                              "or returned whole (None)")
        fills = dict(enumerate(dims.fill)) if isinstance(dims.fill, Sequence) else dict(dims.fill or {})
    specs = []
    sources: dict[int, tuple[int, int]] = {}
    for i, (arg, mapping) in enumerate(zip(example_inputs, input_maps)):
        if not isinstance(arg, torch.Tensor):
            if mapping:
                what = "binds" if mapping == BOUND else "buckets"
                raise ConfigError(f"dims.inputs[{i}] {what} argument {i}, which is not a tensor")
            specs.append(ArgSpec(i, "constant", value=arg))
            continue
        if mapping == BOUND:
            if i in fills:
                raise ConfigError(f"dims.fill gives argument {i} a fill value, but it is bound (never padded)")
            specs.append(ArgSpec(i, "bound", arg.dtype, arg.device, tuple(arg.shape), value=arg))
            continue
        assert not isinstance(mapping, str)
        for d, axis in mapping or ():
            if not 0 <= d < arg.dim():
                raise ConfigError(f"dims.inputs[{i}] names dimension {d}, but argument {i} has {arg.dim()} dimensions")
            sources.setdefault(axis, (i, d))
        kind = "bucketed" if mapping else "static"
        specs.append(ArgSpec(i, kind, arg.dtype, arg.device, tuple(arg.shape), tuple(mapping or ()), fills.get(i, 0)))
    missing = [buckets.dims[a] for a in range(buckets.ndim) if a not in sources]
    if missing:
        raise ConfigError(f"no argument dimension follows bucket dimension(s) {missing}; add them to dims.inputs")
    tensor_checks = tuple(
        (sp.index, sp.dtype, sp.device, len(sp.shape),
         tuple((d, n) for d, n in enumerate(sp.shape) if d not in dict(sp.bucketed)), sp.bucketed,
         sp.value if sp.kind == "bound" else None)
        for sp in specs if sp.is_tensor
    )
    constant_checks = tuple((sp.index, sp.value) for sp in specs if sp.kind == "constant")
    bound = tuple((sp.index, sp.value) for sp in specs if sp.kind == "bound")
    return Layout(tuple(specs), None if output_maps is None else tuple(output_maps),  # type: ignore[arg-type]
                  tuple(sources[a] for a in range(buckets.ndim)), tensor_checks, constant_checks, bound)


def real_shape(args: Sequence[Any], layout: Layout) -> tuple[int, ...]:
    """The bucket-space shape of one call, after checking every argument against the layout.

    The fast path compares plain tuples; on any mismatch ``_explain`` re-checks slowly and
    raises the WarmgraphError that names the argument, what was expected and what came.
    """
    if len(args) != len(layout.args):
        _explain(args, layout)
    shape = [-1] * len(layout.axis_sources)
    for i, dtype, device, rank, fixed, bucketed, ref in layout.tensor_checks:
        arg = args[i]
        if arg is ref:  # the bound tensor itself: its dtype, device and shape are the example's
            continue
        try:
            size = arg.shape
            ok = arg.dtype is dtype and len(size) == rank and arg.device == device and arg.is_contiguous()
        except AttributeError:
            ok = False
        if not ok:
            _explain(args, layout)
        for d, n in fixed:
            if size[d] != n:
                _explain(args, layout)
        for d, axis in bucketed:
            current = shape[axis]
            if current < 0:
                shape[axis] = size[d]
            elif current != size[d]:
                _explain(args, layout)
    for i, value in layout.constant_checks:
        if args[i] is not value and args[i] != value:
            _explain(args, layout)
    return tuple(shape)


def _explain(args: Sequence[Any], layout: Layout) -> tuple[int, ...]:
    """The slow, thorough check: raises the precise error for the first mismatch."""
    if len(args) != len(layout.args):
        raise WarmgraphError(f"expected {len(layout.args)} arguments (as in example_inputs), got {len(args)}")
    shape: list[int | None] = [None] * len(layout.axis_sources)
    for spec, arg in zip(layout.args, args):
        i = spec.index
        if spec.kind == "constant":
            if arg is not spec.value and arg != spec.value:
                raise WarmgraphError(
                    f"argument {i}: expected {spec.value!r} (non-tensor arguments are compiled in), got {arg!r}"
                )
            continue
        if not isinstance(arg, torch.Tensor):
            raise WarmgraphError(f"argument {i}: expected a tensor, got {type(arg).__name__}")
        if arg.dtype != spec.dtype:
            raise WarmgraphError(f"argument {i}: expected dtype {spec.dtype}, got {arg.dtype}")
        if arg.device != spec.device:
            raise WarmgraphError(f"argument {i}: expected device {spec.device}, got {arg.device}")
        if arg.dim() != len(spec.shape):
            raise WarmgraphError(
                f"argument {i}: expected {len(spec.shape)} dimensions {spec.shape}, got {arg.dim()} {tuple(arg.shape)}"
            )
        if not arg.is_contiguous():
            raise WarmgraphError(f"argument {i} is not contiguous (strides {arg.stride()}); compiled graphs read "
                                 "their inputs as contiguous memory: pass it with .contiguous()")
        bucketed = dict(spec.bucketed)
        for d, size in enumerate(arg.shape):
            axis = bucketed.get(d)
            if axis is None:
                if size != spec.shape[d]:
                    raise WarmgraphError(
                        f"argument {i} dimension {d}: expected {spec.shape[d]} (not bucketed, from example_inputs), "
                        f"got {size}"
                    )
            elif shape[axis] is None:
                shape[axis] = size
            elif shape[axis] != size:
                src_arg, src_dim = layout.axis_sources[axis]
                raise WarmgraphError(
                    f"argument {i} dimension {d} is {size} but argument {src_arg} dimension {src_dim} is "
                    f"{shape[axis]}; both follow bucket dimension {axis} and must agree"
                )
    return tuple(s if s is not None else 0 for s in shape)
