"""vLLM general plugin: ``WARMGRAPH_VLLM=1`` makes warmgraph vLLM's compile backend, no flags needed.

Registered as the ``vllm.general_plugins`` entry point ``warmgraph``; vLLM loads it in every
process (front end, engine core, workers), several times: ``register`` is idempotent. Whatever
``WARMGRAPH_VLLM`` says, it refuses warmgraph's backend in mode 1 on CPU (``check_mode``).

It wraps two hooks of the current platform, where platforms adjust vLLM's config and name
its compiler: ``check_and_update_config`` and ``get_compile_backend``.

- ``WARMGRAPH_VLLM=1``: after the platform's own check, a mode-2 config with vLLM's default
  ``inductor`` backend uses warmgraph's backend instead. On CPU vLLM's default mode 3 becomes
  exactly that. A config that names another backend, or mode 0 (``--enforce-eager``), is left
  as it is. On CUDA the default stays mode 3 (piecewise): the plugin says so and changes
  nothing; pass ``-cc '{"mode": 2, "backend": "warmgraph.integrations.vllm.backend"}'``.
- ``WARMGRAPH_VLLM=piecewise``: mode 3 is kept (on CPU, restored after the platform turned it
  into mode 2) and the platform names warmgraph's ``CompilerInterface``
  (``integrations.vllm.piecewise``); ``VLLM_USE_MEGA_AOT_ARTIFACT`` is set to 0 unless set
  (to 1 it is refused: vLLM's mega artifact bundles Inductor's code, which this compiler has
  none of).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from warmgraph.errors import WarmgraphError

log = logging.getLogger("vllm.warmgraph")  # under "vllm": printed by vLLM's own log handler
_ON = ("1", "true", "on", "yes")
_OFF = ("", "0", "false", "off", "no")


def setting(env: dict[str, str] | None = None) -> str | None:
    """What ``WARMGRAPH_VLLM`` asks for: ``"graph"`` (mode 2), ``"piecewise"`` (mode 3) or None;
    WarmgraphError for a value it cannot mean."""
    env = os.environ if env is None else env
    value = env.get("WARMGRAPH_VLLM", "").strip().lower()
    if value in _OFF:
        return None
    if value in _ON:
        return "graph"
    if value == "piecewise":
        return "piecewise"
    raise WarmgraphError(f"WARMGRAPH_VLLM={value!r} is not understood; use 1 (the whole graph, mode 2), "
                         "piecewise (mode 3) or 0 (off)")


def enabled(env: dict[str, str] | None = None) -> bool:
    """Whether ``WARMGRAPH_VLLM`` asks for warmgraph in any mode."""
    return setting(env) is not None


def register() -> None:
    """The entry point vLLM calls: wraps the platform's hooks (see the module docstring)."""
    if setting() == "piecewise":
        mega = os.environ.setdefault("VLLM_USE_MEGA_AOT_ARTIFACT", "0").strip().lower()
        if mega not in ("0", "false"):
            raise WarmgraphError("WARMGRAPH_VLLM=piecewise needs VLLM_USE_MEGA_AOT_ARTIFACT=0 (vLLM's mega artifact "
                                 "bundles Inductor's code, which warmgraph's compiler has none of); unset it")
    from vllm.platforms import current_platform

    platform = type(current_platform)
    original = platform.check_and_update_config
    if getattr(original, "_warmgraph", False):
        return
    original_backend = platform.get_compile_backend

    def check_and_update_config(cls: type, vllm_config: Any) -> None:
        asked = vllm_config.compilation_config.mode
        original.__func__(cls, vllm_config)
        check_mode(vllm_config.compilation_config, current_platform.is_cpu())
        wanted = setting()
        if wanted == "graph":
            use_backend(vllm_config.compilation_config)
        elif wanted == "piecewise":
            use_piecewise(vllm_config.compilation_config, asked, current_platform.is_cpu())

    def get_compile_backend(cls: type) -> str:
        # vLLM asks in two places: a CompilationConfig filling in its default backend (answered
        # as the platform would, so that the config is vLLM's own: another backend there turns
        # all custom ops on), and make_compiler, for a config whose backend is neither
        # "inductor" nor "eager" (use_piecewise put warmgraph's there), at compile and at load.
        from vllm.config import CompilationConfig

        from warmgraph.integrations.vllm import PIECEWISE

        caller = sys._getframe(1).f_locals.get("self")
        if setting() == "piecewise" and not isinstance(caller, CompilationConfig):
            return PIECEWISE
        return original_backend.__func__(cls)

    check_and_update_config._warmgraph = True  # type: ignore[attr-defined]
    platform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[method-assign]
    platform.get_compile_backend = classmethod(get_compile_backend)  # type: ignore[method-assign]


def use_piecewise(compilation_config: Any, asked: Any, on_cpu: bool) -> bool:
    """Keep (or restore) mode 3 with warmgraph's ``CompilerInterface``; True when it did. vLLM's
    CPU platform turns mode 3 into mode 2 with Inductor; with ``piecewise`` that is undone."""
    from vllm.config import CompilationMode

    from warmgraph.integrations.vllm import PIECEWISE

    if asked != CompilationMode.VLLM_COMPILE or compilation_config.backend not in ("inductor", "", PIECEWISE):
        log.info("warmgraph: WARMGRAPH_VLLM=piecewise leaves compilation mode %s with backend %r as it is",
                 asked, compilation_config.backend)
        return False
    compilation_config.mode = CompilationMode.VLLM_COMPILE
    compilation_config.backend = PIECEWISE
    if compilation_config.compile_sizes is None:
        # vLLM completes the sizes only where CUDA graphs are in use; its piecewise runner needs a list
        compilation_config.post_init_cudagraph_sizes()
    if on_cpu:
        # vLLM never runs mode 3 on CPU, and the fusion passes its defaults may have turned on
        # (with `vllm serve`'s arguments they do) are only imported on GPUs: running them fails
        # with a NameError. They fuse FP8 quantisation and collectives, none of which is here.
        passes = compilation_config.pass_config
        for name in [n for n, v in vars(passes).items() if n.startswith(("fuse_", "enable_")) and v is True]:
            setattr(passes, name, False)
    log.info("warmgraph: vLLM compiles each piece through warmgraph (WARMGRAPH_VLLM=piecewise)")
    return True


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
                    '\'{"mode": 2, "backend": "%s"}\' to run the whole graph through warmgraph, or set '
                    "WARMGRAPH_VLLM=piecewise to compile its pieces through warmgraph", BACKEND)
    elif mode != CompilationMode.NONE:
        log.info("warmgraph: compilation mode %s with backend %r is left as it is", mode, compilation_config.backend)
    return False
