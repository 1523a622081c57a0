"""vLLM general plugin: ``WARMGRAPH_VLLM=1`` makes warmgraph vLLM's compile backend, no flags needed.

Registered as the ``vllm.general_plugins`` entry point ``warmgraph``; vLLM loads it in every
process (front end, engine core, workers), several times: ``register`` is idempotent. Whatever
``WARMGRAPH_VLLM`` says, it refuses warmgraph's backend in mode 1 on CPU (``check_mode``).

With ``WARMGRAPH_VLLM=1`` it wraps the current platform's ``check_and_update_config`` (the hook
where platforms adjust the config) so that after it, a mode-2 config with vLLM's default
``inductor`` backend uses warmgraph's backend instead. On CPU vLLM's default mode 3 becomes
exactly that. A config that names another backend, or mode 0 (``--enforce-eager``), is left as
it is. On CUDA the default stays mode 3 (piecewise): the plugin says so and changes nothing;
pass ``-cc '{"mode": 2, "backend": "warmgraph.integrations.vllm.backend"}'`` for the whole graph.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from warmgraph.errors import WarmgraphError

log = logging.getLogger("vllm.warmgraph")  # under "vllm": printed by vLLM's own log handler
_ON = ("1", "true", "on", "yes")
_OFF = ("", "0", "false", "off", "no")


def enabled(env: dict[str, str] | None = None) -> bool:
    """Whether ``WARMGRAPH_VLLM`` asks for the backend; WarmgraphError for a value it cannot mean."""
    env = os.environ if env is None else env
    value = env.get("WARMGRAPH_VLLM", "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    if value == "piecewise":
        raise WarmgraphError("WARMGRAPH_VLLM=piecewise (mode 3, a CompilerInterface) is not built yet; "
                             "use WARMGRAPH_VLLM=1 (mode 2, the whole-model graph)")
    raise WarmgraphError(f"WARMGRAPH_VLLM={value!r} is not understood; use 1 to turn warmgraph's backend on, 0 off")


def register() -> None:
    """The entry point vLLM calls: wraps the platform's config hook (see the module docstring)."""
    enabled()  # a value it cannot mean is an error in every process, not only when compiling
    from vllm.platforms import current_platform

    platform = type(current_platform)
    original = platform.check_and_update_config
    if getattr(original, "_warmgraph", False):
        return

    def check_and_update_config(cls: type, vllm_config: Any) -> None:
        original.__func__(cls, vllm_config)
        check_mode(vllm_config.compilation_config, current_platform.is_cpu())
        if enabled():
            use_backend(vllm_config.compilation_config)

    check_and_update_config._warmgraph = True  # type: ignore[attr-defined]
    platform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[method-assign]


def check_mode(compilation_config: Any, on_cpu: bool) -> None:
    """Refuse warmgraph's backend in mode 1 on CPU: vLLM's CPU runner never calls a mode-1 backend,
    so the model would run eagerly without a word."""
    from vllm.config import CompilationMode

    from warmgraph.integrations.vllm import BACKEND

    mode_1 = compilation_config.mode == CompilationMode.STOCK_TORCH_COMPILE
    if on_cpu and mode_1 and compilation_config.backend == BACKEND:
        raise WarmgraphError("compilation mode 1 never calls a compile backend on vLLM's CPU runner, so the model "
                             f"would run eagerly; use mode 2: compilation_config={{'mode': 2, 'backend': '{BACKEND}'}}")


def use_backend(compilation_config: Any) -> bool:
    """Point a mode-2 config with the default backend at warmgraph's; True when it did."""
    from vllm.config import CompilationMode

    from warmgraph.integrations.vllm import BACKEND

    mode = compilation_config.mode
    if mode == CompilationMode.DYNAMO_TRACE_ONCE and compilation_config.backend in ("inductor", "", BACKEND):
        compilation_config.backend = BACKEND
        log.info("warmgraph: vLLM compiles through warmgraph's backend (WARMGRAPH_VLLM=1)")
        return True
    if mode == CompilationMode.VLLM_COMPILE:
        log.warning("warmgraph: WARMGRAPH_VLLM=1 leaves mode 3 (piecewise) as it is; pass -cc "
                    '\'{"mode": 2, "backend": "%s"}\' to run the whole graph through warmgraph', BACKEND)
    elif mode != CompilationMode.NONE:
        log.info("warmgraph: compilation mode %s with backend %r is left as it is", mode, compilation_config.backend)
    return False
