"""The reference engine: continuous batching of a Llama model through cached graphs.

Every model step runs its decoder layers through two GraphRunners, one for prefill buckets
``(batch, query_len, ctx_blocks)`` and one for decode buckets ``(batch, 1, blocks)``, taken
from the bucketing plan (exponential by default) for the engine's limits, exactly as
vllm-gaudi plans them. One graph per bucket serves all layers (the weights are graph
inputs), so a warmup compiles ``len(prompt buckets) + len(decode buckets)`` graphs whatever
the depth. Embedding, final norm, LM head and sampling run eagerly: they are a few ops.

Scheduling (as vllm-gaudi's): a step is either a prefill of up to ``max_num_prefill_seqs``
new requests (a long prompt is prefilled in chunks of ``max_num_batched_tokens``; later
chunks read earlier ones from the cache as context blocks) or a decode of every running
request. KV blocks for a request's whole length are reserved when it is admitted, so a
running request never waits for memory. A prompt that cannot fit ``max_model_len`` fails
alone with a clear message; the others complete.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from warmgraph.bucketing.buckets import Bucket
from warmgraph.bucketing.plans import Plan, ServingConfig, plan_buckets
from warmgraph.models.llama import LlamaForCausalLM
from warmgraph.models.paged import DecodeStep, PrefillStep, layer_weights
from warmgraph.runtime.dims import Dims
from warmgraph.runtime.report import BucketWarmup, WarmupReport
from warmgraph.runtime.runner import GraphRunner

_N_WEIGHTS = 9


@dataclass(frozen=True)
class EngineConfig:
    """Serving limits (vLLM's names) and how graphs are built."""

    max_num_seqs: int = 4
    max_num_batched_tokens: int = 64
    max_model_len: int = 256
    block_size: int = 64
    num_blocks: int | None = None  # None: enough for max_num_seqs sequences of max_model_len
    max_num_prefill_seqs: int = 1
    strategy: str = "exponential"
    bucket_file: str | None = None
    backend: str = "auto"
    cache: Any = True  # True, a directory, a GraphCache, or None/False

    def blocks(self) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        return self.max_num_seqs * math.ceil(self.max_model_len / self.block_size)

    def serving(self) -> ServingConfig:
        return ServingConfig(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                             max_model_len=self.max_model_len, num_blocks=self.blocks(), block_size=self.block_size,
                             max_num_prefill_seqs=self.max_num_prefill_seqs)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Request:
    prompt: str
    prompt_ids: list[int]
    params: SamplingParams
    index: int
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    cached: int = 0  # tokens whose K/V are in the cache
    error: str | None = None
    finish_reason: str | None = None
    first_token_s: float | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids


class Engine:
    """A model, its tokenizer, a KV cache and the two step runners. Not thread-safe."""

    def __init__(self, model: LlamaForCausalLM, tokenizer: Any, config: EngineConfig,
                 plan: Plan | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.mc = model.config
        self.plan = plan or plan_buckets(config.serving(), config.strategy, config.bucket_file)
        self.num_blocks = config.blocks()
        self.scratch = self.num_blocks  # the extra block that padding points at
        dtype = next(model.parameters()).dtype
        shape = (self.num_blocks + 1, config.block_size, self.mc.num_key_value_heads, self.mc.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype) for _ in range(self.mc.num_hidden_layers)]
        self.v_cache = [torch.zeros(shape, dtype=dtype) for _ in range(self.mc.num_hidden_layers)]
        self.weights = [layer_weights(layer) for layer in model.layers]
        self.prefill, self.decode = build_runners(self.mc, config, self.plan, self.k_cache[0], self.v_cache[0],
                                                  self.weights[0])
        self._free = list(range(self.num_blocks))

    # -- warmup ------------------------------------------------------------------------------

    def warmup(self, progress: bool = False, workers: int = 1) -> WarmupReport:
        """Build every prefill and decode graph (from the graph cache where it has them).

        With ``workers > 1`` and a persisting cache, the graphs the cache lacks are first
        compiled in that many worker processes; this process then loads them all.
        """
        t0 = time.perf_counter()
        compiled: dict[tuple[str, Bucket], tuple[float, str]] = {}
        if workers > 1 and self.prefill.persists:
            jobs = [("prefill", b) for b in self.prefill.missing_from_cache()]
            jobs += [("decode", b) for b in self.decode.missing_from_cache()]
            if len(jobs) > 1:
                compiled = self._compile_in_workers(jobs, workers, progress)
        entries = []
        for phase, runner in (("prefill", self.prefill), ("decode", self.decode)):
            for e in runner.warmup(progress=progress).entries:
                if (phase, e.bucket) in compiled:  # built by a worker, loaded here
                    e = BucketWarmup(e.bucket, compiled[(phase, e.bucket)][0], "compiled")
                entries.append(e)
        return WarmupReport(self.prefill.backend.name, entries, time.perf_counter() - t0)

    def _compile_in_workers(self, jobs: list[tuple[str, Bucket]], workers: int,
                            progress: bool) -> dict[tuple[str, Bucket], tuple[float, str]]:
        from warmgraph.models.config import dtype_name
        from warmgraph.runtime.parallel import compile_in_workers

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"compile in {workers} workers", unit="graph")

        def done(phase: str, bucket: Bucket, seconds: float, source: str) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{phase} {bucket} {'hit' if source == 'loaded' else 'miss'} {seconds:.1f}s")
                bar.update()

        try:
            return compile_in_workers(jobs, self.mc.to_hf(), self.config, dtype_name(self.k_cache[0].dtype),
                                      workers, done)
        finally:
            if bar is not None:
                bar.close()

    # -- generation --------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], params: SamplingParams = SamplingParams()) -> dict[str, Any]:
        """Complete every prompt; returns ``{"completions": [...], "stats": {...}}``."""
        start = time.perf_counter()
        replays0 = self.prefill.counters["replays"] + self.decode.counters["replays"]
        eager0 = self.prefill.counters["eager_fallbacks"] + self.decode.counters["eager_fallbacks"]
        requests = [self._request(i, p, params) for i, p in enumerate(prompts)]
        waiting = deque(r for r in requests if r.error is None)
        running: list[Request] = []
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        decode_s, decode_tokens = 0.0, 0
        while waiting or running:
            admitted = self._admit(waiting, running)
            if admitted:
                self._prefill_step(admitted, generator, start)
            else:
                if not running:
                    break
                t0 = time.perf_counter()
                self._decode_step(running, generator)
                decode_s += time.perf_counter() - t0
                decode_tokens += len(running)
            for r in [r for r in running if r.finish_reason is not None]:
                running.remove(r)
                self._release(r)
        total = time.perf_counter() - start
        replays = self.prefill.counters["replays"] + self.decode.counters["replays"] - replays0
        eager = self.prefill.counters["eager_fallbacks"] + self.decode.counters["eager_fallbacks"] - eager0
        ttft = [r.first_token_s for r in requests if r.first_token_s is not None]
        generated = sum(len(r.output_ids) for r in requests)
        return {
            "completions": [self._completion(r) for r in requests],
            "stats": {
                "seconds": round(total, 4),
                "time_to_first_token_s": round(min(ttft), 4) if ttft else None,
                "generated_tokens": generated,
                "tokens_per_s": round(generated / total, 2) if total > 0 else None,
                "decode_tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else None,
                "graph_replays": replays,
                "eager_fallbacks": eager,
            },
        }

    def _request(self, index: int, prompt: str, params: SamplingParams) -> Request:
        ids = list(self.tokenizer.encode(prompt).ids)
        bos = self.mc.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        r = Request(prompt, ids, params, index)
        if len(ids) + 1 > self.config.max_model_len:
            r.error = (f"prompt has {len(ids)} tokens but max_model_len is {self.config.max_model_len}; "
                       "shorten the prompt or raise --max-model-len")
            r.finish_reason = "error"
        return r

    def _admit(self, waiting: deque[Request], running: list[Request]) -> list[Request]:
        """Requests to prefill this step: those mid-prompt first, else new ones that fit."""
        chunking = [r for r in running if r.cached < len(r.prompt_ids)]
        if chunking:
            return chunking[: self.config.max_num_prefill_seqs]
        admitted: list[Request] = []
        while (waiting and len(running) < self.config.max_num_seqs
               and len(admitted) < self.config.max_num_prefill_seqs):
            r = waiting[0]
            total = min(len(r.prompt_ids) + r.params.max_tokens, self.config.max_model_len)
            need = math.ceil(total / self.config.block_size)
            if need > len(self._free):
                break
            waiting.popleft()
            r.blocks = [self._free.pop() for _ in range(need)]
            running.append(r)
            admitted.append(r)
        return admitted

    def _release(self, r: Request) -> None:
        self._free.extend(r.blocks)
        r.blocks = []

    def _slots(self, r: Request, positions: range) -> list[int]:
        bs = self.config.block_size
        return [r.blocks[p // bs] * bs + p % bs for p in positions]

    def _store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: list[int], rows: list[int],
               cols: list[int]) -> None:
        idx = torch.tensor(slots, dtype=torch.long)
        flat_k = self.k_cache[layer].view(-1, *self.k_cache[layer].shape[2:])
        flat_v = self.v_cache[layer].view(-1, *self.v_cache[layer].shape[2:])
        flat_k.index_copy_(0, idx, k[rows, cols])
        flat_v.index_copy_(0, idx, v[rows, cols])

    @torch.no_grad()
    def _prefill_step(self, batch: list[Request], generator: torch.Generator | None, start: float) -> None:
        budget = self.config.max_num_batched_tokens // len(batch)
        chunks = [(r.cached, min(len(r.prompt_ids), r.cached + budget)) for r in batch]
        q_len = max(end - begin for begin, end in chunks)
        ctx_blocks_n = max(math.ceil(begin / self.config.block_size) for begin, _ in chunks)
        ids = torch.zeros(len(batch), q_len, dtype=torch.long)
        positions = torch.zeros(len(batch), q_len, dtype=torch.long)
        ctx_blocks = torch.full((len(batch), ctx_blocks_n), self.scratch, dtype=torch.long)
        slots, rows, cols = [], [], []
        for i, (r, (begin, end)) in enumerate(zip(batch, chunks)):
            ids[i, : end - begin] = torch.tensor(r.prompt_ids[begin:end])
            positions[i, : end - begin] = torch.arange(begin, end)
            held = math.ceil(begin / self.config.block_size)
            ctx_blocks[i, :held] = torch.tensor(r.blocks[:held], dtype=torch.long)
            slots += self._slots(r, range(begin, end))
            rows += [i] * (end - begin)
            cols += list(range(end - begin))
        ctx_lens = torch.tensor([begin for begin, _ in chunks], dtype=torch.long)
        q_lens = torch.tensor([end - begin for begin, end in chunks], dtype=torch.long)
        hidden = self.model.embed(ids)
        cos, sin = self.model.rope_cos_sin(positions)
        for layer in range(self.mc.num_hidden_layers):
            hidden, k, v = self.prefill(hidden, cos, sin, ctx_blocks, ctx_lens, q_lens, self.k_cache[layer],
                                        self.v_cache[layer], *self.weights[layer])
            self._store(layer, k, v, slots, rows, cols)
        done = [i for i, (r, (_, end)) in enumerate(zip(batch, chunks)) if end == len(r.prompt_ids)]
        for r, (_, end) in zip(batch, chunks):
            r.cached = end
        if done:
            last = hidden[done, (q_lens[done] - 1)]
            tokens = self._sample(self.model.logits(last), [batch[i] for i in done], generator)
            now = time.perf_counter() - start
            for i, token in zip(done, tokens):
                batch[i].first_token_s = now
                self._append(batch[i], token)

    @torch.no_grad()
    def _decode_step(self, running: list[Request], generator: torch.Generator | None) -> None:
        bs = self.config.block_size
        ids = torch.tensor([[r.tokens[-1]] for r in running], dtype=torch.long)
        ctx = [r.cached for r in running]
        positions = torch.tensor(ctx, dtype=torch.long)[:, None]
        block_list, block_seq, block_pos = [], [], []
        for i, r in enumerate(running):
            held = math.ceil(r.cached / bs)
            block_list += r.blocks[:held]
            block_seq += [i] * held
            block_pos += list(range(held))
        hidden = self.model.embed(ids)
        cos, sin = self.model.rope_cos_sin(positions)
        args = (torch.tensor(block_list, dtype=torch.long), torch.tensor(block_seq, dtype=torch.long),
                torch.tensor(block_pos, dtype=torch.long), torch.tensor(ctx, dtype=torch.long))
        slots = [self._slots(r, range(r.cached, r.cached + 1))[0] for r in running]
        rows, cols = list(range(len(running))), [0] * len(running)
        for layer in range(self.mc.num_hidden_layers):
            hidden, k, v = self.decode(hidden, cos, sin, *args, self.k_cache[layer], self.v_cache[layer],
                                       *self.weights[layer])
            self._store(layer, k, v, slots, rows, cols)
        for r in running:
            r.cached += 1
        tokens = self._sample(self.model.logits(hidden[:, 0]), running, generator)
        for r, token in zip(running, tokens):
            self._append(r, token)

    def _sample(self, logits: torch.Tensor, batch: list[Request], generator: torch.Generator | None) -> list[int]:
        out = []
        for row, r in zip(logits.float(), batch):
            p = r.params
            if p.temperature <= 0:
                out.append(int(row.argmax()))
                continue
            probs = torch.softmax(row / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # always keeps the most likely token
                probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
            out.append(int(torch.multinomial(probs, 1, generator=generator)))
        return out

    def _append(self, r: Request, token: int) -> None:
        r.output_ids.append(token)
        if token in self.mc.eos_token_ids:
            r.finish_reason = "stop"
        elif len(r.output_ids) >= r.params.max_tokens:
            r.finish_reason = "length"
        elif len(r.tokens) >= self.config.max_model_len:
            r.finish_reason = "max_model_len"

    def _completion(self, r: Request) -> dict[str, Any]:
        text = self.tokenizer.decode(r.output_ids, skip_special_tokens=True) if r.output_ids else ""
        out = {"prompt": r.prompt, "text": text, "token_ids": r.output_ids, "finish_reason": r.finish_reason}
        if r.error:
            out["error"] = r.error
        return out


def step_dims(decode: bool, scratch: int) -> Dims:
    """Which step arguments follow which bucket dimension, and their padding fills."""
    rest: list[dict[int, Any] | None] = [None] * (2 + _N_WEIGHTS)  # k/v caches and weights: passed whole
    bq = {0: "batch", 1: "query_len"}
    if decode:
        inputs = [bq, bq, bq, {0: "blocks"}, {0: "blocks"}, {0: "blocks"}, {0: "batch"}, *rest]
        fill = [0, 0, 0, scratch, -1, 0, 0]
    else:
        inputs = [bq, bq, bq, {0: "batch", 1: "ctx_blocks"}, {0: "batch"}, {0: "batch"}, *rest]
        fill = [0, 0, 0, scratch, 0, 0]
    return Dims(inputs=inputs, fill=fill, outputs=[bq, bq, bq])


def step_examples(mc: Any, config: EngineConfig, decode: bool, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  weights: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    """One call's arguments at the smallest size: they give dtypes and the fixed sizes."""
    dtype = k_cache.dtype
    hidden = torch.zeros(1, 1, mc.hidden_size, dtype=dtype)
    rope = torch.zeros(1, 1, mc.head_dim, dtype=torch.float32)
    one = torch.zeros(1, dtype=torch.long)
    if decode:
        head = (hidden, rope, rope, one, one, one, one)
    else:
        head = (hidden, rope, rope, torch.zeros(1, 0, dtype=torch.long), one, one)
    return (*head, k_cache, v_cache, *weights)


def zero_state(mc: Any, config: EngineConfig,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A KV cache and one layer's weights of the right shapes, all zeros: enough to compile with."""
    shape = (config.blocks() + 1, config.block_size, mc.num_key_value_heads, mc.head_dim)
    h, q, kv, inner = mc.hidden_size, mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim, \
        mc.intermediate_size
    shapes = [(h,), (q, h), (kv, h), (kv, h), (h, q), (h,), (inner, h), (inner, h), (h, inner)]
    return (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype),
            [torch.zeros(s, dtype=dtype) for s in shapes])


def build_runners(mc: Any, config: EngineConfig, plan: Plan, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  weights: Sequence[torch.Tensor]) -> tuple[GraphRunner, GraphRunner]:
    """The prefill and decode runners over the plan's buckets (no weights needed to build them)."""
    scratch = config.blocks()
    runners = []
    for decode, buckets, step in ((False, plan.prompt, PrefillStep), (True, plan.decode, DecodeStep)):
        runners.append(GraphRunner(step(mc, config.block_size), buckets,
                                   step_examples(mc, config, decode, k_cache, v_cache, weights),
                                   config.backend, dims=step_dims(decode, scratch), cache=config.cache))
    return runners[0], runners[1]
