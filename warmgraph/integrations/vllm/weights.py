"""The layer weights that one-token calls stream (``stream``): recovered from vLLM's oneDNN
handles once, then kept in warmgraph's graph cache, checked against the handles at every start.

vLLM frees each CPU layer's weight once it has prepacked it into a oneDNN handle, so the
weights come back from the handles (``recover``): the handle's product with an identity matrix
is the weight transposed, exactly (each output is one weight times 1.0 plus zeros). That is a
GEMM of ``in`` rows per matrix: 3.8 s for SmolLM2-135M in fp32 on one core of the 2-core AVX2
machine (vLLM's worker runs on one core), the largest part of a warm engine start after vLLM's
own warm-up run. So the first start stores what it recovered in the graph cache, and later
starts load it instead (0.7 s there, the checksum of the 425 MB file included).

A cached copy is found by a fingerprint of the handles: every matrix's shape and dtype and the
exact values of ``SAMPLED_COLUMNS`` of its columns, taken through the handle the same exact way
(columns of the identity). A loaded copy is used only if it ``agrees`` with every handle: those
columns and ``CHECKED_COLUMNS`` more, drawn afresh at every start, equal bit for bit, and a
product with a random sign vector (also drawn afresh) within float rounding of the handle's.
Otherwise it is recovered again and stored over the old copy. The file's sha256, checked by the
cache on every load, catches damage on disk; the fresh draws leave no fixed column or direction
in which a wrong copy could pass start after start. Entries hold model weights, so ``warmgraph
cache export`` leaves them out unless a filter names them.

Recovery is skipped, with a warning, when the copy would take more than ``MEMORY_SHARE`` of the
available memory, and stopped (the weights freed) once it is on course to take more than
``RECOVER_SECONDS``; it grows as ``in`` times the parameters, so a 1B model would take minutes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from warmgraph.errors import CacheWriteError
from warmgraph.graph_cache.key import CacheKey, make_key
from warmgraph.graph_cache.store import GraphCache
from warmgraph.integrations.vllm.stream import Linear

log = logging.getLogger("vllm.warmgraph")
MEMORY_SHARE = 0.25  # the most of the available memory the recovered weights may take
RECOVER_SECONDS = 10.0  # the most a start may spend recovering weights
SAMPLED_COLUMNS = 8  # exact columns per matrix in the fingerprint
CHECKED_COLUMNS = 16  # more exact columns per matrix, drawn at every load
_BLOCK = 256  # identity rows per product in ``recover``: bounds its temporary memory
_FILE = "weights.safetensors"


class StreamSkipped(Exception):
    """Streaming is not possible or not worth it here; the message says why, in one line."""


def _mm(handle: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
    out = torch.empty((x.shape[0], out_features), dtype=x.dtype)
    torch.ops._C.onednn_mm(out, x, None, handle)
    return out


def columns(handle: torch.Tensor, linear: Linear, index: Sequence[int]) -> torch.Tensor:
    """The weight's columns ``index`` as an (len(index), out) tensor, exactly: the handle's
    product with those rows of the identity."""
    eye = torch.zeros((len(index), linear.in_features), dtype=linear.dtype)
    eye[torch.arange(len(index)), torch.as_tensor(list(index), dtype=torch.long)] = 1
    return _mm(handle, eye, linear.out_features)


def recover(handle: torch.Tensor, linear: Linear) -> torch.Tensor:
    """The (out, in) weight behind a oneDNN handle, exactly, ``_BLOCK`` columns at a time."""
    weight = torch.empty((linear.out_features, linear.in_features), dtype=linear.dtype)
    for start in range(0, linear.in_features, _BLOCK):
        stop = min(start + _BLOCK, linear.in_features)
        weight[:, start:stop] = columns(handle, linear, range(start, stop)).t()
    if not torch.isfinite(weight).all():  # 0 * inf is NaN: such a weight cannot come back
        raise StreamSkipped("a layer weight is not finite, so it cannot be recovered exactly")
    return weight


def _sampled(linear: Linear) -> list[int]:
    n = min(SAMPLED_COLUMNS, linear.in_features)
    return sorted({round(i * (linear.in_features - 1) / max(n - 1, 1)) for i in range(n)})


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()  # any dtype, bf16 included


def agrees(handle: torch.Tensor, linear: Linear, weight: torch.Tensor,
           generator: torch.Generator | None = None) -> bool:
    """Whether ``weight`` is the handle's: the fingerprint's columns and ``CHECKED_COLUMNS``
    random ones equal bit for bit, and its product with a random sign vector within float
    rounding of the handle's. Draws from ``generator``, by default one seeded afresh.

    The bound: the handle's output is rounded once to ``linear.dtype`` (``eps * |output|``) and
    both sides accumulate ``in`` products in float32 in their own order (at most about
    ``sqrt(in) * eps32`` times the row's L1 norm, for sums of random sign), each with a factor
    4 of margin.
    """
    if weight.shape != (linear.out_features, linear.in_features) or weight.dtype != linear.dtype:
        return False
    if generator is None:
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    drawn = torch.randint(0, linear.in_features, (CHECKED_COLUMNS,), generator=generator).tolist()
    index = sorted(set(_sampled(linear)) | set(drawn))
    if not torch.equal(weight[:, index].t(), columns(handle, linear, index)):
        return False
    probe = (torch.randint(0, 2, (1, linear.in_features), generator=generator) * 2 - 1).to(linear.dtype)
    expected = _mm(handle, probe, linear.out_features).float()
    got = probe.float() @ weight.float().t()
    row_l1 = torch.linalg.vector_norm(weight.float(), 1, dim=1)  # = |probe| @ |weight|.T
    eps32 = torch.finfo(torch.float32).eps
    tolerance = 4 * (torch.finfo(linear.dtype).eps * expected.abs()
                     + math.sqrt(linear.in_features) * eps32 * row_l1)
    return bool(((expected - got).abs() <= tolerance + 1e-30).all())


class Weights:
    """The weights recovered or loaded in this process, by handle, with the handle objects they
    belong to, and where they came from (``source``: "recovered" or "cache")."""

    def __init__(self) -> None:
        self.by_handle: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(handle) -> (handle, weight)
        self.seconds = 0.0
        self.source = ""
        self.store_error = ""  # why a recovered copy could not be stored, if it could not

    def put(self, handle: torch.Tensor, weight: torch.Tensor) -> None:
        self.by_handle[id(handle)] = (handle, weight)

    def get(self, handle: torch.Tensor) -> torch.Tensor | None:
        entry = self.by_handle.get(id(handle))
        return entry[1] if entry is not None and entry[0] is handle else None

    def clear(self) -> None:
        self.by_handle.clear()

    @property
    def total_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for _, w in self.by_handle.values())


def weights_key(todo: Sequence[tuple[torch.Tensor, Linear]]) -> CacheKey:
    """The cache key of the weights behind ``todo``'s handles: their fingerprint (module docstring)."""
    digest = hashlib.sha256()
    shapes = []
    for handle, lin in todo:
        shapes.append([lin.out_features, lin.in_features, str(lin.dtype)])
        digest.update(repr(shapes[-1]).encode())
        digest.update(_bytes(columns(handle, lin, _sampled(lin))))
    graph = {"name": "vllm-weights", "fingerprint": digest.hexdigest(), "matrices": len(shapes),
             "bytes": sum(lin.nbytes for _, lin in todo)}
    backend = {"backend": "weights", "format": "safetensors", "torch": torch.__version__}
    return make_key(graph=graph, bucket=(), backend=backend, device={"type": "cpu"}, env={})


def _load(cache: GraphCache, key: CacheKey, todo: Sequence[tuple[torch.Tensor, Linear]],
          warn: bool) -> list[torch.Tensor] | None:
    """The cached copy under ``key`` if it is there and ``agrees`` with every handle, else None
    (with a warning when ``warn`` and a copy was there but unusable)."""
    from safetensors.torch import load_file

    entry = cache.lookup(key)  # None, or an entry whose files passed their sha256
    if entry is None:
        return None
    try:
        tensors = load_file(str(entry.path / _FILE))
        loaded = [tensors.get(f"w{i}") for i in range(len(todo))]
        usable = len(tensors) == len(todo) and all(
            w is not None and agrees(h, lin, w) for w, (h, lin) in zip(loaded, todo))
        reason = "do not match vLLM's handles"
    except Exception as exc:  # a file safetensors or oneDNN refuses: recovering is the way out
        usable, reason = False, f"are unusable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if not usable:
        if warn:
            log.warning("warmgraph: the cached layer weights %s; recovering them again", reason)
        return None
    cache.touch(entry)
    return loaded  # type: ignore[return-value]


def _store(cache: GraphCache, key: CacheKey, weights: list[torch.Tensor], seconds: float) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path) -> list[str]:
        save_file({f"w{i}": w for i, w in enumerate(weights)}, str(tmp / _FILE))
        return [_FILE]

    cache.store(key, write, seconds, extra={"kind": "vllm-weights", "holds_weights": True})


def recover_all(weights: Weights, calls: list[tuple[list[Any], list[Linear]]],
                cache: GraphCache | None = None) -> list[list[torch.Tensor | None]]:
    """The weights of every (piece inputs, linears) in ``calls``, one copy per handle: loaded
    from ``cache`` when a copy there agrees with the handles, else recovered (and then stored
    there; a failed store is noted in ``weights.store_error``, never raised).

    StreamSkipped, with ``weights`` cleared, when a handle is not a tensor, the copies would take
    more than ``MEMORY_SHARE`` of the available memory, recovery is on course to take more than
    ``RECOVER_SECONDS``, or oneDNN refuses a product.
    """
    todo: dict[int, tuple[torch.Tensor, Linear]] = {}
    for inputs, linears in calls:
        for lin in linears:
            handle = inputs[lin.handle_input]
            if not isinstance(handle, torch.Tensor):
                raise StreamSkipped("a layer's oneDNN handle is computed inside vLLM's graph, not passed to it")
            todo.setdefault(id(handle), (handle, lin))
    need = sum(lin.nbytes for _, lin in todo.values())
    available = available_memory()
    if need > MEMORY_SHARE * available:
        raise StreamSkipped(f"the weight copies need {need / 1e6:.0f} MB, over a quarter of the "
                            f"{available / 1e6:.0f} MB available")
    pairs = list(todo.values())
    weights.source, weights.store_error = "", ""
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            found = _from_cache(weights, cache, pairs) if cache is not None else _recover(pairs)
        weights.source = weights.source or "recovered"
        for (handle, _), weight in zip(pairs, found):
            weights.put(handle, weight)
        weights.seconds = time.perf_counter() - t0
        return [[weights.get(inputs[lin.handle_input]) for lin in linears] for inputs, linears in calls]
    except RuntimeError as exc:  # oneDNN refused a product
        weights.clear()
        raise StreamSkipped(f"oneDNN could not multiply by the identity ({str(exc).splitlines()[0]})") from exc
    except StreamSkipped:
        weights.clear()
        raise


def _from_cache(weights: Weights, cache: GraphCache, pairs: list[tuple[torch.Tensor, Linear]]) -> list[torch.Tensor]:
    """The cached copy, or a recovered one stored in ``cache``. A copy is looked for first
    without the lock (entries appear whole, by rename), so warm starts never queue and a
    read-only cache still serves; on a miss, again under the key's lock, so of concurrent cold
    starts one recovers and the others load its copy. A cache that cannot be locked or written
    only costs the copy (``weights.store_error``)."""
    key = weights_key(pairs)
    found = None
    try:
        found = _load(cache, key, pairs, warn=False)
        if found is None:
            with cache.lock(key.hash):
                found = _load(cache, key, pairs, warn=True)
                if found is None:
                    t0 = time.perf_counter()
                    found = _recover(pairs)
                    weights.source = "recovered"
                    _store(cache, key, found, time.perf_counter() - t0)  # replaces a bad copy
    except CacheWriteError as exc:  # from the cache root, the lock or the store
        weights.store_error = str(exc)
    if found is None:
        found = _recover(pairs)
        weights.source = "recovered"
    weights.source = weights.source or "cache"
    return found


def _recover(pairs: list[tuple[torch.Tensor, Linear]]) -> list[torch.Tensor]:
    t0 = time.perf_counter()
    work = sum(lin.in_features * lin.nbytes for _, lin in pairs)
    done = 0
    recovered = []
    for handle, lin in pairs:
        recovered.append(recover(handle, lin))
        done += lin.in_features * lin.nbytes
        projected = (time.perf_counter() - t0) * work / done
        if projected > RECOVER_SECONDS:
            raise StreamSkipped(f"recovering the weights would take about {projected:.0f} s "
                                f"(more than {RECOVER_SECONDS:.0f} s)")
    return recovered


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil, which vLLM depends on)."""
    import psutil

    return int(psutil.virtual_memory().available)
