"""The cache key: every factor that makes a compiled graph valid, hashed into one name.

Factors: the cache format version, warmgraph and torch versions, the backend and its
options, the device (type, name, CPU instruction set), the graph fingerprint, the bucket,
and the environment variables that change generated code. All of them are written to the
entry's manifest, so ``warmgraph cache show`` can say why two entries differ.

The graph fingerprint is made by ``compiler.fingerprint``; here it is one factor among
the others. This module knows nothing of torch or of modules: factors in, a hash out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from warmgraph._version import __version__

FORMAT_VERSION = 1
# Inductor and Dynamo settings that change generated code; cache locations do not.
_ENV_PREFIXES = ("TORCHINDUCTOR_", "TORCH_COMPILE_", "TORCHDYNAMO_")
_ENV_IGNORED = {"TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE", "TORCH_COMPILE_CACHE_KEY_TAG"}


@dataclass(frozen=True)
class CacheKey:
    """A key: its factors (JSON-able) and their hash, plus the fields ``cache ls`` shows."""

    factors: dict[str, Any]
    hash: str
    graph_name: str
    backend: str
    bucket: tuple[int, ...]
    device: str


def canonical_hash(obj: Any) -> str:
    """sha256 of a canonical JSON encoding: the same factors always give the same name."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def codegen_env(env: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if env is None else env
    return {k: v for k, v in sorted(source.items()) if k.startswith(_ENV_PREFIXES) and k not in _ENV_IGNORED}


def make_key(
    *,
    graph: dict[str, Any],
    bucket: Sequence[int],
    backend: dict[str, Any],
    device: dict[str, Any],
    env: dict[str, str] | None = None,
    torch_version: str | None = None,
) -> CacheKey:
    """The key of one graph (one bucket of one function on one backend and device).

    ``torch_version`` defaults to the backend fingerprint's ``torch`` entry.
    """
    factors = {
        "format": FORMAT_VERSION,
        "warmgraph": __version__,
        "torch": torch_version if torch_version is not None else backend.get("torch"),
        "backend": backend,
        "device": device,
        "graph": graph,
        "bucket": list(bucket),
        "env": codegen_env(env),
    }
    return CacheKey(factors, canonical_hash(factors), graph.get("name", "?"), str(backend.get("backend", "?")),
                    tuple(int(b) for b in bucket), str(device.get("type", "?")))
