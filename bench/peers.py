"""Peers benchmark: warmgraph (aot) against transformers and llama.cpp on SmolLM2-135M-Instruct. One JSON object.

Every peer runs the same model (warmgraph and transformers: the fp32 directory converted
from the GGUF, loaded as fp32 or bf16; llama.cpp: the original Q4_1 GGUF) on the same
prompt token ids, greedily, with the same thread count, in one process. Peers run
interleaved, in a rotated order each round, for ``--repeats`` rounds; the JSON holds medians.

  ttft_s: wall time of one generate call that prefills one prompt and returns its first token;
  decode_tokens_per_s.batch_{1,8}: ``(tokens of a call asking N+1 new tokens - tokens of a call
    asking 1) / (difference of the two calls' wall times)``: N decode steps, prefill and per-call
    setup cancel out. Batch 8 is the first 8 prompts (transformers: left padding; warmgraph:
    one prefill step per prompt, then decode steps of all 8). llama.cpp's high-level API decodes
    one sequence, so its batch 8 is not measured;
  ratios: warmgraph's speedup, >1 means warmgraph is faster (decode: warmgraph tok/s over the
    peer's; ttft: the peer's seconds over warmgraph's);
  setup: load and warm-up seconds, untimed (warmgraph's includes compiling or loading graphs);
  greedy: whether warmgraph and transformers give identical tokens in fp32, and how many
    leading tokens each other peer shares with warmgraph fp32 (bf16 and Q4_1 may diverge).

Usage: python bench/peers.py [--threads 1] [--tokens 32] [--repeats 3] [--cache-dir DIR] [--quick]
                             [--autotune] [--gemm] [--dtypes fp32,bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Plain continuations that do not reach EOS within ~64 greedy tokens, so every call decodes fully.
PROMPTS = ["The history of the printing press begins", "Here is a short story about a lighthouse keeper:",
           "The three most important ideas in physics are", "Write a recipe for bread. Step 1:",
           "A good way to start the morning is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The main reasons to learn a second language are"]
DTYPES = ("fp32", "bf16")
LLAMA_BATCH8 = ("not measured: llama-cpp-python's high-level Llama decodes one sequence; batching needs the "
                "low-level llama_batch / n_seq_max API, which this benchmark does not drive")

Run = Callable[[int, int], list[list[int]]]  # (batch size, new tokens) -> generated ids per prompt


@dataclass
class Peer:
    name: str
    run: Run
    setup: dict[str, Any]
    batch8: bool = True
    samples: dict[str, list[float]] = field(default_factory=dict)
    tokens_b1: list[int] = field(default_factory=list)  # batch-1 greedy output of the first round
    full_length: bool = True


def log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def trim(ids: list[int], eos: set[int], n: int) -> list[int]:
    """The first ``n`` ids, cut after the first EOS."""
    for i, t in enumerate(ids[:n]):
        if t in eos:
            return ids[:i + 1]
    return ids[:n]


# Inductor's own C++ GEMM templates, benchmarked against ATen (MKL) per matmul at compile time:
# MKL's fp32 matrix-vector kernel stays on one thread at SmolLM2's sizes, the template does not.
AUTOTUNE = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


@contextlib.contextmanager
def gemm_only() -> Iterator[None]:
    """While building a peer: every projection through ``F.linear`` (MKL), one-row decode included,
    as warmgraph's graphs were before ``warmgraph.models.linear`` streamed one-row products. The
    graph fingerprint hashes the function swapped in, so these graphs have cache keys of their own."""
    from warmgraph.models import linear

    saved = linear.streams_row
    linear.streams_row = lambda x: False
    try:
        yield
    finally:
        linear.streams_row = saved


def warmgraph_peer(model_dir: Path, dtype: str, threads: int, cache: Path, max_model_len: int,
                   autotune: bool = False, suffix: str = "") -> Peer:
    from warmgraph.compiler.aot import AOTBackend
    from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
    from warmgraph.models.loader import load_checkpoint

    t0 = time.perf_counter()
    model, tokenizer, _ = load_checkpoint(model_dir, dtype)
    limits = serving_limits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=max_model_len, block_size=64)
    configs = AUTOTUNE if autotune else {}
    backend = AOTBackend(configs) if configs else "aot"
    engine = Engine(model, tokenizer, EngineConfig(serving=limits, backend=backend, device="cpu", cache=str(cache),
                                                   threads=threads))
    load_s = time.perf_counter() - t0
    report = engine.warmup()

    def run(batch: int, n: int) -> list[list[int]]:
        out = engine.generate(PROMPTS[:batch], SamplingParams(max_tokens=n))
        return [c["token_ids"] for c in out["completions"]]

    setup = {"load_s": round(load_s, 2), "compile_warmup_s": round(report.seconds, 2), "graphs": len(report.entries),
             "compiled": report.compiled, "loaded_from_cache": report.loaded, "backend": engine.backend_name,
             "inductor_configs": configs,
             "limits": {"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": max_model_len,
                        "block_size": 64}}
    return Peer(f"warmgraph.{dtype}{suffix}", run, setup)


def transformers_peer(model_dir: Path, dtype: str, ids: list[list[int]], eos: set[int]) -> Peer:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
    pad = next(iter(eos))

    def run(batch: int, n: int) -> list[list[int]]:
        rows = ids[:batch]
        width = max(map(len, rows))
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                 use_cache=True, pad_token_id=pad)
        return [trim(row, eos, n) for row in out[:, width:].tolist()]

    setup = {"load_s": round(time.perf_counter() - t0, 2), "attn_implementation": model.config._attn_implementation,
             "execution": "eager PyTorch (not compiled), generate(do_sample=False, use_cache=True)"}
    return Peer(f"transformers.{dtype}", run, setup)


def llama_cpp_peer(threads: int, n_ctx: int, ids: list[list[int]], eos: set[int]) -> Peer | dict[str, str]:
    try:
        import llama_cpp
    except ImportError as exc:
        return {"skipped": f"llama-cpp-python is not installed; pip install llama-cpp-python to compare ({exc})"}
    from warmgraph.models.smollm2 import locate_gguf

    low: Any = llama_cpp.llama_cpp
    fields = [f[0] for f in getattr(low.llama_model_params, "_fields_", [])]
    defaults = low.llama_model_default_params
    if "use_extra_bufts" in fields:  # Llama() has no argument for it: patch the defaults it starts from
        def no_extra_bufts() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = no_extra_bufts
    t0 = time.perf_counter()
    try:
        llm = llama_cpp.Llama(model_path=str(locate_gguf()), n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
    finally:
        low.llama_model_default_params = defaults

    def run(batch: int, n: int) -> list[list[int]]:
        assert batch == 1, LLAMA_BATCH8
        llm.reset()  # no prompt-prefix reuse between calls: every call prefills
        out: list[int] = []
        for token in llm.generate(ids[0], temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            out.append(int(token))
            if token in eos or len(out) >= n:
                break
        return [out]

    setup = {"load_s": round(time.perf_counter() - t0, 2), "version": getattr(llama_cpp, "__version__", "?"),
             "gguf": locate_gguf().name, "n_ctx": n_ctx,
             "use_extra_bufts": (False if "use_extra_bufts" in fields else "not in this version's model params"),
             "why_no_extra_bufts": "repacked Q4_1 weight buffers crashed on AMX processors elsewhere"}
    return Peer("llama.cpp", run, setup, batch8=False)


def measure(peer: Peer, tokens: int, first_round: bool) -> None:
    """One round of a peer: TTFT and decode rates at batch 1 and 8 by the N+1-minus-1 difference."""
    for batch in (1, 8) if peer.batch8 else (1,):
        t0 = time.perf_counter()
        one = peer.run(batch, 1)
        t1 = time.perf_counter()
        many = peer.run(batch, tokens + 1)
        t2 = time.perf_counter()
        decoded = sum(map(len, many)) - sum(map(len, one))
        peer.full_length &= all(len(o) == tokens + 1 for o in many)
        peer.samples.setdefault(f"decode_batch_{batch}", []).append(decoded / ((t2 - t1) - (t1 - t0)))
        if batch == 1:
            peer.samples.setdefault("ttft_s", []).append(t1 - t0)
            if first_round:
                peer.tokens_b1 = many[0]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def summarize(peer: Peer) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in peer.samples.items()}
    rates: dict[str, Any] = {"batch_1": round(med["decode_batch_1"], 2)}
    rates["batch_8"] = round(med["decode_batch_8"], 2) if peer.batch8 else LLAMA_BATCH8
    return {"ttft_s": round(med["ttft_s"], 4), "decode_tokens_per_s": rates, "all_outputs_full_length":
            peer.full_length, "samples": {k: [round(x, 4) for x in v] for k, v in peer.samples.items()},
            "setup": peer.setup}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """warmgraph's speedup over each peer: tok/s over tok/s, and the peer's TTFT over warmgraph's."""
    out: dict[str, Any] = {}
    for dtype, suffix in ((d, s) for d in DTYPES for s in ("", ".gemm")):
        if f"warmgraph.{dtype}{suffix}" not in results:
            continue
        wg = results[f"warmgraph.{dtype}{suffix}"]
        peers = [f"transformers.{dtype}"] + (["llama.cpp"] if "ttft_s" in results.get("llama.cpp", {}) else [])
        for name in peers:
            other = results[name]
            key = f"warmgraph.{dtype}{suffix}/{name}"
            for batch in ("batch_1", "batch_8"):
                a, b = wg["decode_tokens_per_s"][batch], other["decode_tokens_per_s"][batch]
                if isinstance(b, float | int) and b > 0:
                    out[f"{key} decode {batch}"] = round(a / b, 3)
            out[f"{key} ttft"] = round(other["ttft_s"] / wg["ttft_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 1 by default: on this 2-core shared machine transformers decoded 3x slower with 2 threads
    # than with 1 (another job held a core); pass --threads 2 on an idle machine.
    parser.add_argument("--threads", type=int, default=1, help="threads for every peer (torch, OMP, llama.cpp)")
    parser.add_argument("--tokens", type=int, default=32, help="decode tokens per measurement (N)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="warmgraph graph cache (default: <warmgraph cache root>/bench-peers, warm on reruns)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 tokens, 1 round")
    parser.add_argument("--autotune", action="store_true",
                        help="warmgraph's aot graphs with Inductor's C++ GEMM templates autotuned against ATen")
    parser.add_argument("--gemm", action="store_true",
                        help="also warmgraph.DTYPE.gemm: graphs whose one-row products go through F.linear (MKL), "
                             "as before warmgraph streamed them")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of fp32,bf16")
    args = parser.parse_args()
    dtypes = [d for d in DTYPES if d in args.dtypes.split(",")]
    if not dtypes or set(args.dtypes.split(",")) - set(DTYPES):
        parser.error(f"--dtypes {args.dtypes}: use a comma-separated subset of {','.join(DTYPES)}")
    if args.quick:
        args.tokens, args.repeats = 4, 1
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree notes, once per graph load
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before torch is imported
    import torch

    from warmgraph.graph_cache.store import default_root
    from warmgraph.models.builtin import builtin_model_dir
    from warmgraph.models.loader import load_checkpoint

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cache = args.cache_dir or default_root() / "bench-peers"
    model_dir = builtin_model_dir("smollm2")
    _, tokenizer, config = load_checkpoint(model_dir, "fp32")
    ids = [list(tokenizer.encode(p).ids) for p in PROMPTS]
    eos = set(config.eos_token_ids)
    need = max(map(len, ids)) + args.tokens + 2
    max_model_len = 128
    while max_model_len < need:
        max_model_len *= 2
    peers: list[Peer] = []
    for dtype in dtypes:
        log(f"warmgraph {dtype}: load and warm up (graphs in {cache}; the first run compiles them)")
        peers.append(warmgraph_peer(model_dir, dtype, args.threads, cache, max_model_len, args.autotune))
        log(f"warmgraph {dtype}: {peers[-1].setup}")
        if args.gemm:
            with gemm_only():
                peers.append(warmgraph_peer(model_dir, dtype, args.threads, cache, max_model_len, args.autotune,
                                            suffix=".gemm"))
            log(f"warmgraph {dtype} gemm: {peers[-1].setup}")
        log(f"transformers {dtype}: load")
        peers.append(transformers_peer(model_dir, dtype, ids, eos))
    log("llama.cpp: load")
    llama = llama_cpp_peer(args.threads, max(512, max_model_len), ids, eos)
    if isinstance(llama, Peer):
        peers.append(llama)
    for peer in peers:  # untimed first calls: allocations, lazy initialisation
        log(f"{peer.name}: first calls (untimed)")
        for batch in (1, 8) if peer.batch8 else (1,):
            peer.run(batch, 2)
    for r in range(args.repeats):
        for i in range(len(peers)):
            peer = peers[(i + r) % len(peers)]
            log(f"round {r + 1}/{args.repeats}: {peer.name}")
            measure(peer, args.tokens, r == 0)
    results: dict[str, dict[str, Any]] = {p.name: summarize(p) for p in peers}
    if not isinstance(llama, Peer):
        results["llama.cpp"] = llama
    first = dtypes[0]  # fp32 unless only bf16 runs
    base = next(p for p in peers if p.name == f"warmgraph.{first}").tokens_b1
    ref = next(p for p in peers if p.name == f"transformers.{first}").tokens_b1
    result = {
        "model": "SmolLM2-135M-Instruct", "model_dir": str(model_dir), "threads": args.threads,
        "autotune": args.autotune, "gemm": args.gemm, "dtypes": dtypes,
        "tokens": args.tokens, "repeats": args.repeats, "quick": args.quick, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "prompt_tokens": [len(i) for i in ids], "batch_1_prompt": PROMPTS[0],
        "method": {
            "decode": "(tokens(N+1 new) - tokens(1 new)) / (t(N+1 new) - t(1 new)), whole generate calls, per peer",
            "ttft": "wall time of a generate call for 1 new token on one prompt (prefill + first token)",
            "statistic": "median over rounds; peers interleaved, order rotated each round",
            "ratios": "warmgraph speedup: >1 means warmgraph faster",
        },
        "results": results,
        "ratios": ratios(results),
        "greedy": {
            f"{first}_warmgraph_equals_transformers": base == ref,
            f"common_prefix_with_warmgraph_{first}": {p.name: f"{common_prefix(base, p.tokens_b1)}/{len(base)}"
                                                      for p in peers if p.name != f"warmgraph.{first}"},
            f"warmgraph_{first}_text": tokenizer.decode(base),
        },
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
