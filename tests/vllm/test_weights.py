"""The weights one-token calls stream: recovered from real oneDNN handles, cached, checked."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from warmgraph.errors import CacheWriteError
from warmgraph.graph_cache.files import sha256_file
from warmgraph.graph_cache.store import Entry, GraphCache
from warmgraph.integrations.vllm import weights as wmod
from warmgraph.integrations.vllm.stream import Linear


def _handle(weight: torch.Tensor) -> tuple[object, torch.Tensor]:
    """vLLM's prepacked handle of ``weight``; keep the first item alive: it frees the handle."""
    import vllm._custom_ops as ops

    handler = ops.create_onednn_mm(weight.t(), 32)
    return handler, handler.handler_tensor


def test_weight_recovery_is_refused_over_the_memory_share(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.randn(64, 32)
    _keep, handle = _handle(weight)
    linear = Linear(0, 64, 32, torch.float32)
    weights = wmod.Weights()
    monkeypatch.setattr(wmod, "available_memory", lambda: 4 * linear.nbytes - 1)
    with pytest.raises(wmod.StreamSkipped, match="over a quarter"):
        wmod.recover_all(weights, [([handle], [linear])])
    assert weights.total_bytes == 0
    monkeypatch.setattr(wmod, "available_memory", lambda: 4 * linear.nbytes)
    (got,) = wmod.recover_all(weights, [([handle], [linear]), ([handle], [linear])])[:1]
    assert torch.equal(got[0], weight) and weights.total_bytes == linear.nbytes  # one copy per handle
    assert weights.source == "recovered"
    with pytest.raises(wmod.StreamSkipped, match="computed inside"):
        wmod.recover_all(wmod.Weights(), [([None], [linear])])


def test_agrees_refuses_a_weight_that_is_not_the_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 1536) * 0.02
    _keep, handle = _handle(weight)
    linear = Linear(0, 96, 1536, torch.float32)
    for _ in range(5):  # fresh draws every time: none may refuse the handle's own weight
        assert wmod.agrees(handle, linear, weight)
    assert wmod.agrees(handle, linear, wmod.recover(handle, linear))
    unsampled = next(c for c in range(1536) if c not in wmod._sampled(linear))
    changed = weight.clone()
    changed[7, 0] += 1e-6  # a fingerprint column is compared bit for bit
    assert not wmod.agrees(handle, linear, changed)
    # An unsampled column is found by the random columns or the probe; without random columns
    # the probe alone must see a change of 5 % of a typical weight.
    changed = weight.clone()
    changed[7, unsampled] += 1e-3
    assert not wmod.agrees(handle, linear, changed)
    monkeypatch.setattr(wmod, "CHECKED_COLUMNS", 0)
    assert wmod.agrees(handle, linear, weight)
    assert not wmod.agrees(handle, linear, changed)
    assert not wmod.agrees(handle, linear, weight[:, :-1])
    assert not wmod.agrees(handle, linear, torch.zeros_like(weight))


Calls = list[tuple[list[torch.Tensor], list[Linear]]]


def _linears() -> tuple[list[tuple[object, torch.Tensor]], Calls, list[torch.Tensor]]:
    """Two real handles as one piece's calls, and their weights."""
    torch.manual_seed(1)
    mats = [torch.randn(48, 300), torch.randn(20, 64)]
    handles = [_handle(w) for w in mats]
    calls = [([handles[0][1], handles[1][1]], [Linear(0, 48, 300, torch.float32), Linear(1, 20, 64, torch.float32)])]
    return handles, calls, mats


def test_recovered_weights_are_cached_and_loaded_next_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = GraphCache(tmp_path / "cache")
    _keep, calls, mats = _linears()
    first = wmod.Weights()
    (got,) = wmod.recover_all(first, calls, cache)
    assert first.source == "recovered" and not first.store_error
    assert all(torch.equal(g, m) for g, m in zip(got, mats))
    (entry,) = cache.entries()
    assert entry.manifest["kind"] == "vllm-weights" and entry.manifest["graph_name"] == "vllm-weights"
    assert entry.manifest["holds_weights"] is True  # so "cache export" leaves it out
    assert entry.size >= sum(m.numel() * 4 for m in mats)

    def no_recovery(*args: object) -> None:
        raise AssertionError("recovered although the cache holds the weights")

    monkeypatch.setattr(wmod, "recover", no_recovery)
    second = wmod.Weights()
    (again,) = wmod.recover_all(second, calls, cache)
    assert second.source == "cache" and all(torch.equal(g, m) for g, m in zip(again, mats))
    assert second.total_bytes == first.total_bytes
    assert entry.usage()["hits"] == 1


def _rewrite(entry: Entry, data: bytes) -> None:
    """Put ``data`` in the entry's weights file with a manifest that vouches for it, as a
    colliding or hostile writer with access to the cache could."""
    path = entry.path / "weights.safetensors"
    path.write_bytes(data)
    manifest = entry.manifest
    manifest["files"]["weights.safetensors"] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    (entry.path / "manifest.json").write_text(json.dumps(manifest))


def test_a_cached_copy_that_disagrees_is_recovered_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file, save

    cache = GraphCache(tmp_path / "cache")
    _keep, calls, mats = _linears()
    wmod.recover_all(wmod.Weights(), calls, cache)
    (entry,) = cache.entries()
    # Another weight with the same fingerprint (it differs only in a column the key does not
    # sample), written with a valid checksum, as a colliding entry would be.
    tensors = load_file(str(entry.path / "weights.safetensors"))
    unsampled = next(c for c in range(300) if c not in wmod._sampled(calls[0][1][0]))
    tensors["w0"][3, unsampled] += 0.5
    _rewrite(entry, save(tensors))
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "recovered" and all(torch.equal(g, m) for g, m in zip(got, mats))
    # ...and the recovered copy replaced it: the next start loads the right weights
    monkeypatch.setattr(wmod, "recover", lambda *a: pytest.fail("recovered a third time"))
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "cache" and all(torch.equal(g, m) for g, m in zip(got, mats))


def test_a_damaged_cached_copy_is_recovered_again(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path / "cache")
    _keep, calls, mats = _linears()
    wmod.recover_all(wmod.Weights(), calls, cache)
    (entry,) = cache.entries()
    path = entry.path / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in the last weight
    path.write_bytes(bytes(data))
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "recovered" and all(torch.equal(g, m) for g, m in zip(got, mats))
    assert len(cache.entries()) == 1  # replaced, not added


def test_an_unwritable_cache_costs_only_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = GraphCache(tmp_path / "cache")
    _keep, calls, mats = _linears()

    def full(*args: object, **kwargs: object) -> None:
        raise CacheWriteError("could not write cache entry: no space left on device; free space")

    monkeypatch.setattr(cache, "store", full)
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "recovered" and "no space left" in weights.store_error
    assert all(torch.equal(g, m) for g, m in zip(got, mats)) and cache.entries() == []


def test_an_unreadable_cached_copy_is_recovered_again(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path / "cache")
    _keep, calls, mats = _linears()
    wmod.recover_all(wmod.Weights(), calls, cache)
    (entry,) = cache.entries()
    _rewrite(entry, b"not a safetensors file")
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "recovered" and all(torch.equal(g, m) for g, m in zip(got, mats))
    (entry,) = cache.entries()
    assert entry.manifest["files"]["weights.safetensors"]["size"] > 1000  # replaced by the real copy


def test_a_cache_that_cannot_be_locked_still_serves_its_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = GraphCache(tmp_path / "cache")
    _keep, calls, mats = _linears()
    wmod.recover_all(wmod.Weights(), calls, cache)

    def read_only(key_hash: str) -> None:
        raise CacheWriteError(f"cannot lock cache key {key_hash[:12]}: read-only file system")

    monkeypatch.setattr(cache, "lock", read_only)
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "cache" and not weights.store_error
    cache.clear()
    weights = wmod.Weights()
    (got,) = wmod.recover_all(weights, calls, cache)
    assert weights.source == "recovered" and "read-only" in weights.store_error
    assert all(torch.equal(g, m) for g, m in zip(got, mats)) and cache.entries() == []


def test_concurrent_starts_recover_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _keep, calls, mats = _linears()
    recovered = []
    real = wmod.recover

    def counted(handle: torch.Tensor, linear: Linear) -> torch.Tensor:
        recovered.append(linear.handle_input)
        return real(handle, linear)

    monkeypatch.setattr(wmod, "recover", counted)
    results: list[tuple[str, list]] = []

    def start() -> None:
        weights = wmod.Weights()  # each start its own GraphCache: its own lock file handle
        (got,) = wmod.recover_all(weights, calls, GraphCache(tmp_path / "cache"))
        results.append((weights.source, got))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(recovered) == [0, 1]  # each matrix recovered by one start only
    assert sorted(source for source, _ in results) == ["cache", "cache", "recovered"]
    assert all(torch.equal(g, m) for _, got in results for g, m in zip(got, mats))


def test_recovery_over_the_time_budget_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = GraphCache(tmp_path / "cache")
    _keep, calls, _ = _linears()
    monkeypatch.setattr(wmod, "RECOVER_SECONDS", 0.0)
    weights = wmod.Weights()
    with pytest.raises(wmod.StreamSkipped, match=r"would take about \d+ s"):
        wmod.recover_all(weights, calls, cache)
    assert weights.total_bytes == 0 and cache.entries() == []
