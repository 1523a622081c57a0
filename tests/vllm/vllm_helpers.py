"""Starting vLLM from a test: each start is a fresh subprocess with its own cache directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PROMPTS = ["The capital of France is", "Once upon a time, a small dog"]
MAX_TOKENS = 8
BACKEND = "warmgraph.integrations.vllm.backend"
MODE2 = {"mode": 2, "backend": BACKEND}
ARGS = ["--max-model-len", "128", "--max-num-seqs", "4", "--dtype", "float32"]  # llm_run.py's, as vLLM flags


def vllm_env(caches: Path, **extra: str) -> dict[str, str]:
    """The environment of a vLLM start: caches under ``caches``, a small KV cache, in-process engine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "WARMGRAPH_"))}
    env.update({
        "VLLM_CACHE_ROOT": str(caches / "vllm"), "WARMGRAPH_CACHE_DIR": str(caches / "warmgraph"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    })
    env.update(extra)
    return env


def run_llm(model: Path, env: dict[str, str], compilation_config: dict[str, Any] | None = None,
            prompts: list[str] = PROMPTS, check: bool = True) -> tuple[dict[str, Any] | None, str]:
    """One ``LLM()`` start and greedy generation; returns (its JSON, its stderr)."""
    spec = {"model": str(model), "prompts": prompts, "max_tokens": MAX_TOKENS,
            "compilation_config": compilation_config}
    proc = subprocess.run([sys.executable, str(HERE / "llm_run.py"), json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"vLLM run failed ({proc.returncode}):\n" + "\n".join(proc.stderr.splitlines()[-30:]))
    out = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return out, proc.stderr




def run_warmup(model: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """``warmgraph warmup --engine vllm`` with ``ARGS`` and ``extra``; its ``--json`` object."""
    proc = subprocess.run([sys.executable, "-m", "warmgraph", "warmup", "--engine", "vllm", str(model), *ARGS,
                           "--prompt", PROMPTS[0], "--max-tokens", str(MAX_TOKENS), "--json", *extra],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-30:])
    return json.loads(proc.stdout)  # one JSON object and nothing else on stdout
