"""One capture recipe for CUDA graphs, Ascend ACL graphs and Gaudi HPU graphs.

``CaptureBackend`` implements the Backend protocol (``base.py``) on top of a
``DeviceGraphAPI`` (``devices.py``). Per bucket it follows the recipe vLLM, SGLang and
nano-vllm share:

  1. compile with the inner backend, if any (compile, then capture);
  2. ``num_warmups`` eager calls on a side stream, then synchronize, so lazy
     initialisation, autotuning and allocator growth happen outside the capture;
  3. capture one call on the backend's capture stream into the backend's one memory pool.

Warm-ups and capture run under ``torch.no_grad()``: this is an inference recipe.

Contract:
  - ``example_inputs`` are the static input buffers, in the device memory of the graph
    (``api.device_type``); a tensor elsewhere is refused with a WarmgraphError that names it.
    The graph reads them at every replay; the caller copies each later call's inputs into
    them (``static.copy_(new)``) and passes those same tensors. A different tensor is silently
    ignored by the device, which is why ``debug=True`` checks identity and ``data_ptr()`` on
    every call. They must stay alive as long as the graph: it holds their addresses.
  - The graph returns the tensors produced during capture (the static outputs): the same
    Python objects on every replay. Copy or consume them before the next replay of this graph
    and before any replay of a graph captured earlier into the same pool: that graph may write
    into memory it freed during its capture, which later captures were given for their outputs.
    On CUDA and NPU, capture records work without running it, so the static outputs hold
    valid values only after the first replay, and the capture leaves inputs and state as they
    were. An HPU capture runs the work once (see ``devices.HpuGraphAPI``).
  - Every graph a backend instance captures shares one memory pool and one stream. Capture
    the largest bucket first so that smaller graphs fit in the memory the first one reserved;
    the order is the caller's (``captures_log`` records it, with the device memory each took).
  - Captured graphs hold device addresses and cannot be saved: ``save``/``load`` raise
    ``NotImplementedError``. A restart re-captures from the inner backend's cached code.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from warmgraph.compiler.base import Backend, CompiledGraph, torch_fingerprint
from warmgraph.compiler.devices import DeviceGraphAPI
from warmgraph.errors import ConfigError, WarmgraphError


@dataclass(frozen=True)
class CaptureRecord:
    """What one capture cost: the bucket's input shapes, warm-ups run, seconds spent, device memory taken."""

    shapes: tuple[tuple[int, ...] | None, ...]  # None for a non-tensor input
    warmups: int
    warmup_seconds: float
    capture_seconds: float
    # Growth of the device's memory_allocated() across the capture; None where the API cannot tell.
    device_bytes: int | None = None

    @property
    def seconds(self) -> float:
        return self.warmup_seconds + self.capture_seconds


class CapturedGraph:
    """A captured device graph over fixed input buffers; calling it replays the graph.

    Attributes: ``static_inputs`` (the buffers the graph reads), ``static_outputs`` (what
    every call returns), ``graph`` (the vendor graph object), ``input_ptrs`` (the inputs'
    ``data_ptr()`` at capture, None for non-tensors) and ``replays`` (calls so far).
    """

    def __init__(
        self,
        api: DeviceGraphAPI,
        graph: Any,
        static_inputs: tuple[Any, ...],
        static_outputs: Any,
        arg_names: tuple[str, ...],
        debug: bool = False,
    ) -> None:
        self.api = api
        self.graph = graph
        self.static_inputs = static_inputs
        self.static_outputs = static_outputs
        self.input_ptrs: tuple[int | None, ...] = tuple(_data_ptr(x) for x in static_inputs)
        self.arg_names = arg_names
        self.debug = debug
        self.replays = 0

    def __call__(self, *inputs: Any) -> Any:
        """Replay on ``inputs``, which must be ``static_inputs`` themselves (checked when ``debug``)."""
        if self.debug:
            self.check_inputs(inputs)
        self.api.replay(self.graph)
        self.replays += 1
        return self.static_outputs

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """Raise WarmgraphError unless ``inputs`` are the captured buffers, at their captured addresses."""
        if len(inputs) != len(self.static_inputs):
            raise WarmgraphError(
                f"captured graph takes {len(self.static_inputs)} inputs, got {len(inputs)}; "
                f"pass graph.static_inputs after copying the new values into them"
            )
        for i, (given, static) in enumerate(zip(inputs, self.static_inputs)):
            label = self.arg_names[i] if i < len(self.arg_names) else f"#{i}"
            if not isinstance(static, torch.Tensor):
                if given != static:
                    raise WarmgraphError(
                        f"argument {label!r} (input {i}) was {static!r} at capture, got {given!r}; the value is "
                        f"baked into the graph, so compile a graph for it"
                    )
                continue
            if given is not static:
                found = f"a {type(given).__name__}"
                if isinstance(given, torch.Tensor):
                    found = f"another tensor of shape {tuple(given.shape)}"
                raise WarmgraphError(
                    f"argument {label!r} (input {i}) is not the static buffer the graph was captured with "
                    f"(found {found}); the graph would ignore it and read the stale buffer: copy the new "
                    f"values into graph.static_inputs[{i}] with .copy_() and pass that tensor"
                )
            if static.data_ptr() != self.input_ptrs[i]:
                raise WarmgraphError(
                    f"argument {label!r} (input {i}) moved from address {self.input_ptrs[i]:#x} to "
                    f"{static.data_ptr():#x} since capture (was it resized or set_()?); the graph reads the "
                    f"old address: write into the buffer in place with .copy_()"
                )


class CaptureBackend:
    """Backend that captures each bucket into a device graph, optionally after an inner compile.

    ``name`` is what the registry calls it ("cuda_graph", "acl_graph", "hpu_graph").
    ``inner`` compiles first (e.g. Inductor); None captures ``fn`` as it is.
    """

    can_persist = False
    captures = True

    def __init__(
        self,
        api: DeviceGraphAPI,
        name: str,
        inner: Backend | None = None,
        num_warmups: int = 2,
        debug: bool = False,
    ) -> None:
        if not isinstance(num_warmups, int) or isinstance(num_warmups, bool) or num_warmups < 0:
            raise ConfigError(f"num_warmups must be an integer >= 0, got {num_warmups!r}")
        if not name:
            raise ConfigError("a capture backend needs a name, e.g. 'cuda_graph'")
        self.api = api
        self.name = name
        self.inner = inner
        self.num_warmups = num_warmups
        self.debug = debug
        self.captures_log: list[CaptureRecord] = []
        # Created on the first compile, shared by every later capture: one pool lets the
        # smaller graphs reuse the memory of the largest, and sharing a pool requires
        # sharing the capture stream too (torch.cuda.graph's note on memory sharing).
        self._pool: Any | None = None
        self._stream: Any | None = None

    @property
    def pool(self) -> Any | None:
        """The memory-pool token every capture uses (None before the first, or without pools)."""
        return self._pool

    @property
    def stream(self) -> Any | None:
        """The capture stream (None before the first compile)."""
        return self._stream

    def compile(self, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        """Warm up and capture ``fn`` on ``example_inputs``, which become the graph's static buffers."""
        static_inputs = tuple(example_inputs)
        graph_fn = self.inner.compile(fn, static_inputs) if self.inner is not None else fn
        return self.capture(graph_fn, static_inputs, fn)

    def capture(
        self, graph_fn: Callable[..., Any], example_inputs: Sequence[Any], fn: Callable[..., Any] | None = None
    ) -> CompiledGraph:
        """Warm up and capture an already compiled ``graph_fn`` (e.g. the inner backend's graph
        loaded from the graph cache) on ``example_inputs``, the static buffers. ``fn`` names
        the arguments in debug messages."""
        static_inputs = tuple(example_inputs)
        arg_names = _arg_names(fn or graph_fn)
        self._check_devices(static_inputs, arg_names)
        if self._stream is None:
            self._stream = self.api.new_stream()
            if self.api.supports_pool:
                self._pool = self.api.graph_pool_handle()

        # No autograd: a replay does not record one, so outputs carrying a capture-time
        # grad_fn would back-propagate through stale saved tensors.
        with torch.no_grad():
            start = time.perf_counter()
            with self.api.warmup_stream(self._stream):
                for _ in range(self.num_warmups):
                    graph_fn(*static_inputs)
            self.api.synchronize()
            warmed = time.perf_counter()

            before = self._memory_allocated()
            graph = self.api.new_graph()
            with self.api.capture(graph, self._pool, self._stream):
                static_outputs = graph_fn(*static_inputs)
            self.api.synchronize()
            done = time.perf_counter()
            after = self._memory_allocated()

        self.captures_log.append(
            CaptureRecord(
                shapes=tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in static_inputs),
                warmups=self.num_warmups,
                warmup_seconds=warmed - start,
                capture_seconds=done - warmed,
                device_bytes=after - before if before is not None and after is not None else None,
            )
        )
        return CapturedGraph(self.api, graph, static_inputs, static_outputs, arg_names, self.debug)

    def _check_devices(self, static_inputs: tuple[Any, ...], arg_names: tuple[str, ...]) -> None:
        """Raise WarmgraphError naming the first input tensor that is not in the graph's device memory."""
        want = self.api.device_type
        for i, value in enumerate(static_inputs):
            label = arg_names[i] if i < len(arg_names) else f"#{i}"
            for path, t in _tensors_in(value, label):
                if t.device.type != want:
                    raise WarmgraphError(
                        f"argument {path!r} (input {i}) is a tensor on {t.device}, but the {self.name} graph runs on "
                        f"{want!r} and reads its inputs from {want} memory; move it with .to({want!r}) before "
                        f"capturing, or use a non-capture backend such as aot on the CPU"
                    )

    def _memory_allocated(self) -> int | None:
        counter = getattr(self.api, "memory_allocated", None)  # optional for adapters outside devices.py
        return counter() if counter is not None else None

    def save(self, graph: CompiledGraph, directory: Path) -> list[str]:
        raise NotImplementedError(
            f"{self.name}: captured device graphs hold device addresses and cannot be written to disk; "
            f"they are re-captured at start from the inner backend's cached code"
        )

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        raise NotImplementedError(
            f"{self.name}: captured device graphs cannot be loaded from disk; they are re-captured at "
            f"start from the inner backend's cached code (compile again)"
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device_api": self.api.name,
            "inner": self.inner.fingerprint() if self.inner is not None else None,
            "num_warmups": self.num_warmups,
            **torch_fingerprint(),
        }


def _data_ptr(x: Any) -> int | None:
    return x.data_ptr() if isinstance(x, torch.Tensor) else None


def _tensors_in(value: Any, path: str) -> list[tuple[str, torch.Tensor]]:
    """The tensors in an input, also inside lists, tuples and dicts (a KV cache per layer), with their paths."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, (list, tuple)):
        return [pair for j, item in enumerate(value) for pair in _tensors_in(item, f"{path}[{j}]")]
    if isinstance(value, dict):
        return [pair for k, item in value.items() for pair in _tensors_in(item, f"{path}[{k!r}]")]
    return []


def _arg_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    """Positional parameter names of ``fn`` (a module's ``forward``), for error messages; () if unknown."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return ()
    names: list[str] = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    return tuple(names)
