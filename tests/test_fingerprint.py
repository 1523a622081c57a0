"""The graph fingerprint: whatever changes the compiled graph changes the key; weights a module binds
at load do not. A key shared by two different functions would serve one's graph to the other."""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from warmgraph.compiler.fingerprint import MAX_HASHED_BYTES, fingerprint, input_specs
from warmgraph.graph_cache.key import canonical_hash
from warmgraph.models.toy import MLP

X = (torch.zeros(2, 4),)


def key(fn: Any) -> str:
    fp = fingerprint(fn, X)
    assert fp.persistable, fp.reason
    return canonical_hash(fp.factors)


def _defaults(k: float) -> Any:
    return lambda x, k=k: x * k


def _kwdefaults(k: float) -> Any:
    def f(x: torch.Tensor, *, k: float = k) -> torch.Tensor:
        return x * k

    return f


def _base(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def _decorated(k: float) -> Any:
    @functools.wraps(_base)
    def wrapper(x: torch.Tensor) -> torch.Tensor:
        return _base(x) * k

    return wrapper


class _Cast(torch.nn.Module):
    def __init__(self, dtype: torch.dtype, cfg: dict[str, int], k: int) -> None:
        super().__init__()
        self.dtype, self.cfg, self._k = dtype, cfg, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.cfg["mul"] * self._k).to(self.dtype)


@pytest.mark.parametrize(("a", "b"), [
    (_defaults(2.0), _defaults(3.0)),
    (_kwdefaults(2.0), _kwdefaults(3.0)),
    (_decorated(2.0), _decorated(3.0)),
    (_Cast(torch.float32, {"mul": 1}, 1), _Cast(torch.float16, {"mul": 1}, 1)),
    (_Cast(torch.float32, {"mul": 1}, 1), _Cast(torch.float32, {"mul": 5}, 1)),
    (_Cast(torch.float32, {"mul": 1}, 1), _Cast(torch.float32, {"mul": 1}, 7)),
], ids=["defaults", "keyword-defaults", "decorator-closure", "module-dtype", "module-dict", "module-private"])
def test_what_changes_the_graph_changes_the_key(a: Any, b: Any) -> None:
    assert key(a) != key(b)


SCALE = 2.0
TABLE = torch.ones(4)


class _Config:
    scale = 1.0

    def __init__(self) -> None:
        self.scale = 2.0


CONFIG = _Config()


def _nested_global(x: torch.Tensor) -> torch.Tensor:
    def inner(y: torch.Tensor) -> torch.Tensor:
        return y * SCALE

    return inner(x)


def _reads_config(x: torch.Tensor) -> torch.Tensor:
    return x * CONFIG.scale


class _ReadsTable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * TABLE


@pytest.mark.parametrize("fn", [_nested_global, _reads_config, _ReadsTable()], ids=["nested", "config", "table"])
def test_globals_the_code_reads_are_part_of_the_key(fn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key(fn)
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "SCALE", 3.0)
    monkeypatch.setattr(CONFIG, "scale", 3.0)
    monkeypatch.setattr(here, "TABLE", torch.full((4,), 5.0))
    assert key(fn) != before


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_helper_function_a_module_calls_is_part_of_the_key(tmp_path: Path) -> None:
    # The same class source in two files whose module-level helper differs (an edit to rms_norm, say).
    net = ("import torch\n\nclass Base(torch.nn.Module):\n    pass\n\n"
           "class Net(Base):\n    def forward(self, x):\n        return helper(x)\n\n")
    (tmp_path / "v1.py").write_text(net + "def helper(x):\n    return x + 1\n")
    (tmp_path / "v2.py").write_text(net + "def helper(x):\n    return x + 2\n")
    assert key(_load(tmp_path / "v1.py", "wg_fp_v1").Net()) != key(_load(tmp_path / "v2.py", "wg_fp_v2").Net())


def test_weights_and_identical_functions_do_not_change_the_key() -> None:
    torch.manual_seed(0)
    base = key(MLP())
    torch.manual_seed(1)
    assert key(MLP()) == base  # a fine-tune: other weights, same graphs
    assert key(MLP(hidden=64, inner=256)) != base
    assert key(MLP().train()) != key(MLP().eval())
    assert key(_defaults(2.0)) == key(_defaults(2.0))


def _power(x: torch.Tensor, n: int = 3) -> torch.Tensor:
    return x if n == 0 else _power(x, n - 1) * 2


class _Opt:
    def __init__(self) -> None:
        self.mode = "fast"


def test_recursion_and_constants_and_limits() -> None:
    assert fingerprint(_power, X).persistable  # a recursive function is described once, not forever
    # A constant argument whose repr holds an address is described by its attributes, the same in every process.
    assert input_specs([_Opt()]) == input_specs([_Opt()]) == [
        {"value": {"object": f"{__name__}._Opt", "attrs": {"mode": "fast"}}}]
    big = torch.zeros(MAX_HASHED_BYTES // 4 + 1)
    huge = fingerprint(lambda t: t + big, X)
    assert not huge.persistable and "MB of tensors" in (huge.reason or "") and "not cached" in (huge.reason or "")
    lock = threading.Lock()
    odd = fingerprint(lambda t: t * 2 if lock.locked() else t, X)  # a lock has no description
    assert not odd.persistable and "cannot fingerprint" in (odd.reason or "")
