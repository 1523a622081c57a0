"""The reference engine's configuration: serving limits (nested, vLLM's names), graphs, device.

The CLI takes its defaults and choices from here, so each default is written once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmgraph.bucketing.plans import STRATEGIES, ServingConfig
from warmgraph.compiler.base import Backend
from warmgraph.compiler.registry import DEVICES as REGISTRY_DEVICES
from warmgraph.errors import ConfigError
from warmgraph.quant.settings import Fp8Settings

DEVICES = ("auto", *REGISTRY_DEVICES)


def serving_limits(max_num_seqs: int = 4, max_num_batched_tokens: int = 64, max_model_len: int = 256,
                   block_size: int = 64, num_blocks: int | None = None,
                   max_num_prefill_seqs: int = 1) -> ServingConfig:
    """The engine's serving limits; ``num_blocks`` None: room for ``max_num_seqs`` sequences of
    ``max_model_len`` tokens. The defaults give 12 graphs with the exponential plan."""
    for name, value in (("max_model_len", max_model_len), ("block_size", block_size),
                        ("max_num_seqs", max_num_seqs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{name} is {value!r}; {flag} must be a positive integer")
    if num_blocks is None:
        num_blocks = max_num_seqs * math.ceil(max_model_len / block_size)
    return ServingConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                         max_model_len=max_model_len, num_blocks=num_blocks, block_size=block_size,
                         max_num_prefill_seqs=max_num_prefill_seqs)


DEFAULT_SERVING = serving_limits()


def _busy_elsewhere() -> float:
    """How many other tasks want a CPU now: the kernel's count of runnable tasks (the 4th field
    of /proc/loadavg, which includes this process) minus this one; the 1-minute load average
    where there is no /proc. A count now, not an average, so a run that just ended does not
    lower the next run's threads."""
    try:
        running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        return max(0, int(running) - 1)
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def default_threads(cores: int | None = None, busy: float | None = None, env: dict[str, str] | None = None) -> int:
    """Torch threads for a command-line run: ``$OMP_NUM_THREADS`` when set (its first value, as
    OpenMP reads it), else the cores this process may use minus the ones other work is using
    now, at least 1. ConfigError for an ``OMP_NUM_THREADS`` OpenMP would not accept.

    Why not every core: OpenMP threads spin at barriers, so a thread that shares its core with
    another busy process stalls every matmul; on a 2-core machine with one other busy process,
    two threads decoded 3-4 times slower than one, and 10-20 times slower was seen under heavier
    load. ``cores``, ``busy`` and ``env`` are for tests; they default to this machine's values.
    """
    env = os.environ if env is None else env
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "OMP_NUM_THREADS" in env:
        first = env["OMP_NUM_THREADS"].strip().split(",")[0].strip()
        if not first.isdigit() or int(first) < 1:
            raise ConfigError(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']!r} is not a positive integer; unset it or "
                              "set it to a thread count such as 1")
        return min(int(first), cores)
    busy = _busy_elsewhere() if busy is None else busy
    return max(1, min(cores, cores - round(busy)))


@dataclass(frozen=True)
class EngineConfig:
    """How the engine serves: limits, the bucket plan, the backend, the device, the graph cache.

    ``backend``: a name (``auto``: the best for the device; ``eager``, ``inductor``, ``aot``;
    ``cuda_graph``, ``acl_graph``, ``hpu_graph`` capture, optionally over a compiler, e.g.
    ``cuda_graph:aot``) or a Backend instance. ``device``: ``auto`` (``$WARMGRAPH_DEVICE``, else
    the first accelerator found, else cpu) or one of cpu, cuda, npu, hpu. ``cache``: True (the
    default root), a directory, a GraphCache, or None/False.
    """

    serving: ServingConfig = DEFAULT_SERVING
    strategy: str = "exponential"
    bucket_file: str | None = None
    backend: str | Backend = "auto"
    device: str = "auto"
    cache: Any = True
    threads: int | None = None  # torch threads for this process; None: leave torch's setting
    fp8: Fp8Settings | None = None  # FP8 checkpoints only; None: from the environment (Fp8Settings.from_env)

    def __post_init__(self) -> None:
        if not isinstance(self.serving, ServingConfig):
            raise ConfigError(f"EngineConfig.serving must be a ServingConfig, got {type(self.serving).__name__}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"EngineConfig.strategy={self.strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
        if self.strategy == "file" and not self.bucket_file:
            raise ConfigError("strategy 'file' needs a bucket file: pass --bucket-file PATH")
        if self.device not in DEVICES:
            raise ConfigError(f"EngineConfig.device={self.device!r} is unknown; use one of {', '.join(DEVICES)}")
        if self.threads is not None:
            cores = os.cpu_count() or 1
            if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= cores:
                raise ConfigError(f"threads is {self.threads!r}; --threads must be from 1 to the {cores} cores here")
        if self.bucket_file and self.strategy != "file":
            raise ConfigError(f"--bucket-file is given but the strategy is {self.strategy!r}; add --strategy file "
                              "to use it, or drop --bucket-file")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; ``temperature`` 0 is greedy."""

    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens is {self.max_tokens!r}; --max-tokens must be at least 1")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ConfigError(f"temperature is {self.temperature!r}; --temperature must be a finite number >= 0 "
                              "(0 is greedy)")
        if not (isinstance(self.top_p, (int, float)) and math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p is {self.top_p!r}; --top-p must be in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise ConfigError(f"seed is {self.seed!r}; --seed must be an integer from 0 to 2**64 - 1")
