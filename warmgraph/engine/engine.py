"""The reference engine: continuous batching of a Llama model on a device, through cached graphs.

The model, its KV cache and every step's inputs live on the engine's device (``cpu``,
``cuda``, ``npu`` or ``hpu``; ``auto`` detects). Each step runs through the phase's runners
(``steps.py``): the prefill and decode buckets come from the bucketing plan for the serving
limits (exponential by default), exactly as vllm-gaudi plans them, and one layer graph per
bucket serves every layer, so warmup compiles ``len(prompt buckets) + len(decode buckets)``
graphs whatever the depth. With a capture backend each whole step is also captured once per
bucket. Final norm, LM head and sampling run eagerly on the last positions only.

Scheduling is ``scheduler.py``'s: prefills of new or long prompts, decodes of all running
requests, blocks reserved at admission; a request that can never run fails alone with a
clear message, and every request comes back with a finish reason.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from warmgraph.bucketing.buckets import Bucket
from warmgraph.bucketing.plans import Plan, plan_buckets
from warmgraph.compiler.registry import get_backend, require_device
from warmgraph.engine.config import EngineConfig, SamplingParams
from warmgraph.engine.scheduler import DecodeBatch, PrefillBatch, Request, Scheduler
from warmgraph.engine.steps import Phase, decode_tensors, layer_runner, prefill_tensors, split_backend, step_runner
from warmgraph.errors import CacheWriteError, ConfigError
from warmgraph.models.config import dtype_name
from warmgraph.models.layer_inputs import LayerInputs, flatten_state, kv_cache_shape
from warmgraph.models.llama import LlamaForCausalLM
from warmgraph.quant.fp8 import NUM_SLOTS, Fp8Scales, fp8_math
from warmgraph.quant.model import SCALES_BUFFER, is_fp8, layer_vectors, patch_scales, set_math
from warmgraph.quant.settings import Fp8Settings
from warmgraph.quant.variants import VariantPlan, plan_variants
from warmgraph.runtime.report import BucketWarmup, WarmupReport
from warmgraph.runtime.runner import graph_cache


def _rounding_casts(backend: Any) -> Any:
    """``backend`` with Inductor told to round at every cast, as eager does.

    By default Inductor keeps a value in float32 across a cast to bf16 that a fused kernel
    casts back up: cheaper, but where the fusion falls then changes the bits. FP8 graphs of the
    same layer with scales as an input and baked in fuse differently, and an FP8 cast turns a
    last-bit difference into a whole FP8 step: measured, greedy tokens of the two diverged on a
    bf16 model. With every cast rounded they are equal."""
    if backend.name == "aot":
        return type(backend)(inductor_configs={**backend.inductor_configs, "emulate_precision_casts": True})
    if backend.name == "inductor":
        return type(backend)(mode=backend.mode, options={**backend.options, "emulate_precision_casts": True})
    return backend


class Engine:
    """A model on a device, its tokenizer, a KV cache and the runners of both phases. Not thread-safe."""

    def __init__(self, model: LlamaForCausalLM, tokenizer: Any, config: EngineConfig | None = None,
                 plan: Plan | None = None) -> None:
        config = config or EngineConfig()
        self.config = config
        self.tokenizer = tokenizer
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = torch.device(require_device(config.device))
        backend = get_backend(config.backend, self.device.type)
        self.layer_backend, self.step_backend = split_backend(backend)
        captured = getattr(getattr(self.step_backend, "api", None), "device_type", self.device.type)
        if self.step_backend.captures and captured != self.device.type:
            raise ConfigError(f"backend {self.step_backend.name} captures {captured} work, but the engine runs on "
                              f"{self.device.type}; use --device {captured}, or a backend for {self.device.type} "
                              "(auto, aot, inductor, eager)")
        self.mc = model.config
        self.plan = plan or plan_buckets(config.serving, config.strategy, config.bucket_file)
        self.serving = self.plan.config
        if self.serving.max_model_len > self.mc.max_position_embeddings:
            raise ConfigError(f"max_model_len {self.serving.max_model_len} is above the model's "
                              f"max_position_embeddings {self.mc.max_position_embeddings}; lower --max-model-len")
        self.model = model.to(self.device).eval()
        weights = self.model.model.embed_tokens.weight
        rotary = self.model.model.rotary_emb
        shape = kv_cache_shape(self.mc, self.serving.num_blocks, self.serving.block_size)
        self._check_memory(2 * self.mc.num_hidden_layers * math.prod(shape) * weights.element_size())
        self.kv = [(torch.zeros(shape, dtype=weights.dtype, device=self.device),
                    torch.zeros(shape, dtype=weights.dtype, device=self.device))
                   for _ in range(self.mc.num_hidden_layers)]
        self.layer_inputs = LayerInputs()
        self.fp8_plan: VariantPlan | None = None
        self.fp8_math: str | None = None
        scales: list[Fp8Scales | None] = [None]
        if is_fp8(self.model):
            scales = self._fp8_variants(config.fp8 or Fp8Settings.from_env())
        per_layer = [[k, v, *self.layer_inputs.from_layer(layer)] for (k, v), layer in zip(self.kv, model.layers)]
        self.state = [weights.detach(), rotary.cos_cached, rotary.sin_cached, *flatten_state(per_layer)]
        self.rope_dtype = rotary.cos_cached.dtype
        cache = graph_cache(config.cache)
        assignment = self.fp8_plan.assignment if self.fp8_plan else (0,) * self.mc.num_hidden_layers
        self.phases: dict[str, Phase] = {}
        for name, decode, buckets in (("prefill", False, self.plan.prompt), ("decode", True, self.plan.decode)):
            layers = []
            for index, fp8 in enumerate(scales):
                k, v, *inputs = per_layer[assignment.index(index)]  # a layer of this variant: its shapes
                layers.append(layer_runner(self.mc, self.serving, decode, buckets, self.layer_backend, k, v, inputs,
                                           self.rope_dtype, cache, fp8))
            by_layer = [layers[i] for i in assignment] if len(layers) > 1 else layers[0]
            step = step_runner(by_layer, self.mc, self.serving, decode, buckets, self.step_backend, self.state,
                               len(per_layer[0]))
            self.phases[name] = Phase(layers, step)
        self.last_schedule: list[tuple[str, tuple[int, ...]]] = []
        self.last_free_blocks = self.serving.num_blocks

    def _fp8_variants(self, settings: Fp8Settings) -> list[Fp8Scales | None]:
        """Plan the FP8 layer graphs (``quant.variants``) and hold the weights for the math the
        device has; under runtime scale patching each layer's multipliers become a step input."""
        math = fp8_math(self.device.type, settings.math)
        self.fp8_math = math
        self.layer_backend = _rounding_casts(self.layer_backend)
        set_math(self.model, math)
        self.fp8_plan = plan_variants(layer_vectors(self.model), settings)
        if settings.patching:
            self.layer_inputs = LayerInputs(extra=((SCALES_BUFFER, lambda c: (NUM_SLOTS,)),))
        return [Fp8Scales(math, v.drop, v.baked) for v in self.fp8_plan.variants]

    def patch_fp8_scales(self, vectors: list[torch.Tensor]) -> None:
        """New multipliers for every layer (``quant.model.layer_vectors`` of a recalibration with
        the same weights and weight scales, other input scales), recompiling nothing: the graphs
        read them at their next call. Refused (ConfigError) when they cannot take effect that
        way: a float model, scales baked into the graphs (runtime scale patching off), or values
        that would change the multiplies a layer's trivial-scale variant leaves out."""
        plan = self.fp8_plan
        if plan is None:
            raise ConfigError("this engine's model is not FP8; there are no scales to patch")
        if not plan.settings.patching:
            raise ConfigError("the scales are baked into the graphs (runtime scale patching off); start an engine "
                              "with the new checkpoint instead")
        new = plan_variants(vectors, plan.settings)
        for layer in range(len(plan.assignment)):
            if plan.variants[plan.assignment[layer]].drop != new.variants[new.assignment[layer]].drop:
                raise ConfigError(f"new scales change which multiplies by 1.0 layer {layer} leaves out (trivial "
                                  f"scales {plan.settings.trivial}); start an engine with the new checkpoint instead")
        patch_scales(self.model, [v.to(self.device) for v in vectors])

    def _check_memory(self, kv_bytes: int) -> None:
        """Refuse a KV cache larger than the free memory of the device, before allocating it."""
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        elif self.device.type == "cpu" and hasattr(os, "sysconf"):
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        else:
            return  # the vendor reports memory its own way; allocation errors speak for themselves
        if kv_bytes > free:
            s = self.serving
            raise ConfigError(f"the KV cache needs {kv_bytes / 2**30:.1f} GiB ({s.num_blocks} blocks of {s.block_size} "
                              f"tokens over {self.mc.num_hidden_layers} layers) but {self.device.type} has "
                              f"{free / 2**30:.1f} GiB free; lower --max-num-seqs or --max-model-len")

    @property
    def prefill(self) -> Phase:
        return self.phases["prefill"]

    @property
    def decode(self) -> Phase:
        return self.phases["decode"]

    @property
    def backend_name(self) -> str:
        if self.step_backend.captures:
            return f"{self.step_backend.name}:{self.layer_backend.name}"
        return self.layer_backend.name

    def counter(self, key: str) -> int:
        """A counter summed over both phases: graph building from the layer runners (compiles,
        cache hits), everything a call does from the step runners (replays, fallbacks, captures)."""
        runner = "layer" if key in ("compiles", "cache_hits", "cache_misses", "cache_writes", "bytes_loaded",
                                    "recompiles") else "step"
        if runner == "step":
            return sum(p.step.counters[key] for p in self.phases.values())
        return sum(r.counters[key] for p in self.phases.values() for r in p.layers)

    # -- warmup ------------------------------------------------------------------------------

    def warmup(self, progress: bool = False, workers: int = 1) -> WarmupReport:
        """Build every prefill and decode graph (from the graph cache where it has them), then
        capture every step when the backend captures.

        With ``workers > 1`` and a persisting cache, the layer graphs the cache lacks are first
        compiled in that many worker processes; this process then loads them all.
        """
        t0 = time.perf_counter()
        by_workers: dict[tuple[str, Bucket], float] = {}
        # Workers rebuild layer graphs from the model config alone; FP8 variants are not in it.
        if workers > 1 and self.fp8_plan is None and self.prefill.layer.persists and self._workers_can_help():
            jobs = [(name, b) for name, phase in self.phases.items() for b in phase.layer.missing_from_cache()]
            if len(jobs) > 1:
                by_workers = self._compile_in_workers(jobs, workers, progress)
        entries = []
        buffer_bytes = 0
        for name, phase in self.phases.items():
            built = [{e.bucket: e for e in runner.warmup(progress=progress).entries} for runner in phase.layers]
            steps = {e.bucket: e for e in phase.step.warmup(progress=progress and self.step_backend.captures).entries}
            buffer_bytes += phase.step.buffers.nbytes if phase.step.buffers is not None else 0
            for variant, by_bucket in enumerate(built):
                for bucket, e in by_bucket.items():
                    seconds, source = e.seconds, e.source
                    if (name, bucket) in by_workers:  # compiled by a worker, loaded here
                        seconds, source = by_workers[(name, bucket)], "compiled"
                    s = steps[bucket]
                    captured = s.captured and variant == 0  # a step is captured once, whatever its layers
                    entries.append(BucketWarmup(bucket, seconds, source, captured, s.capture_seconds if captured
                                                else 0.0, e.graph_bytes, s.device_bytes if captured else None,
                                                phase=name, variant=variant if self.fp8_plan else None))
        return WarmupReport(self.backend_name, entries, time.perf_counter() - t0, buffer_bytes)

    def _workers_can_help(self) -> bool:
        """Workers compile into the cache by backend name: the cache must be usable, and the name
        must give the same backend (options included), or they would build other keys."""
        cache = self.prefill.layer.cache
        assert cache is not None
        try:
            cache.ensure()
        except CacheWriteError:  # the builder reports it and keeps graphs in memory
            return False
        return get_backend(self.layer_backend.name, self.device.type).fingerprint() == self.layer_backend.fingerprint()

    def _compile_in_workers(self, jobs: list[tuple[str, Bucket]], workers: int,
                            progress: bool) -> dict[tuple[str, Bucket], float]:
        from warmgraph.engine.parallel import WarmupRecipe, compile_in_workers

        cache = self.prefill.layer.cache
        assert cache is not None
        recipe = WarmupRecipe(model_config=self.mc.to_hf(), serving=self.serving, plan_prompt=self.plan.prompt,
                              plan_decode=self.plan.decode, backend=self.layer_backend.name, cache_root=str(cache.root),
                              dtype=dtype_name(self.state[0].dtype), rope_dtype=dtype_name(self.rope_dtype),
                              device=self.device.type)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"compile in {workers} workers", unit="graph")

        def done(phase: str, bucket: Bucket, seconds: float, source: str) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{phase} {bucket} {'hit' if source == 'loaded' else 'miss'} {seconds:.1f}s")
                bar.update()

        try:
            results = compile_in_workers(recipe, jobs, workers, done)
        finally:
            if bar is not None:
                bar.close()
        return {job: seconds for job, (seconds, source) in results.items() if source == "compiled"}

    # -- generation --------------------------------------------------------------------------

    def encode(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids exactly as the checkpoint's tokenizer makes them (BOS only if it
        adds one); ``add_special_tokens=False`` for text that already holds them (a rendered chat)."""
        return list(self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens).ids)

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None,
                 chat: Sequence[bool] | None = None) -> dict[str, Any]:
        """Complete every prompt; returns ``{"completions": [...], "stats": {...}}``.

        ``chat[i]`` True marks ``prompts[i]`` as text rendered by a chat template: it is encoded
        without the tokenizer's added special tokens, because the template writes its own BOS
        (transformers encodes rendered chats the same way).
        """
        start = time.perf_counter()
        params = params or SamplingParams()
        before = {k: self.counter(k) for k in ("replays", "eager_fallbacks")}
        scheduler = Scheduler(self.serving, self.plan.prompt, self.plan.decode)
        chat = list(chat) if chat is not None else [False] * len(prompts)
        if len(chat) != len(prompts):
            raise ValueError(f"chat has {len(chat)} flags for {len(prompts)} prompts")
        requests = [Request(i, p, self.encode(p, add_special_tokens=not c), params)
                    for i, (p, c) in enumerate(zip(prompts, chat))]
        for r in requests:
            scheduler.add(r)
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        decode_s, decode_tokens = 0.0, 0
        while scheduler.has_work():
            batch = scheduler.schedule()
            if isinstance(batch, PrefillBatch):
                self._prefill(batch, generator, start)
            else:
                t0 = time.perf_counter()
                self._decode(batch, generator)
                decode_s += time.perf_counter() - t0
                decode_tokens += len(batch.requests)
            scheduler.finish()
        self.last_schedule = scheduler.log
        self.last_free_blocks = scheduler.free_blocks
        total = time.perf_counter() - start
        ttft = [r.first_token_s for r in requests if r.first_token_s is not None]
        generated = sum(len(r.output_ids) for r in requests)
        return {
            "completions": [self._completion(r) for r in requests],
            "stats": {
                "seconds": round(total, 4),
                "time_to_first_token_s": round(min(ttft), 4) if ttft else None,
                "generated_tokens": generated,
                "tokens_per_s": round(generated / total, 2) if total > 0 else None,
                "decode_tokens": decode_tokens,
                "decode_tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else None,
                "graph_replays": self.counter("replays") - before["replays"],
                "eager_fallbacks": self.counter("eager_fallbacks") - before["eager_fallbacks"],
            },
        }

    def _run(self, phase: Phase, tensors: list[torch.Tensor]) -> torch.Tensor:
        args = [t.to(self.device, non_blocking=True) for t in tensors]
        return phase.step(*args, *self.state)

    @torch.no_grad()
    def _prefill(self, batch: PrefillBatch, generator: torch.Generator | None, start: float) -> None:
        hidden = self._run(self.prefill, prefill_tensors(batch, self.serving))
        done = [i for i, c in enumerate(batch.chunks) if c.end == len(c.request.prompt_ids)]
        for c in batch.chunks:
            c.request.cached = c.end
        if not done:
            return
        last = [batch.chunks[i].end - batch.chunks[i].begin - 1 for i in done]
        tokens = self._sample(self.model.logits(hidden[done, last]), [batch.chunks[i].request for i in done],
                              generator)
        now = time.perf_counter() - start
        for i, token in zip(done, tokens):
            r = batch.chunks[i].request
            r.first_token_s = now
            self._append(r, token)

    @torch.no_grad()
    def _decode(self, batch: DecodeBatch, generator: torch.Generator | None) -> None:
        hidden = self._run(self.decode, decode_tensors(batch, self.serving))
        for r in batch.requests:
            r.cached += 1
        tokens = self._sample(self.model.logits(hidden[:, 0]), list(batch.requests), generator)
        for r, token in zip(batch.requests, tokens):
            self._append(r, token)

    def _sample(self, logits: torch.Tensor, batch: list[Request], generator: torch.Generator | None) -> list[int]:
        logits = logits.float()
        if all(r.params.temperature <= 0 for r in batch):
            return [int(t) for t in logits.argmax(dim=-1).tolist()]
        out = []
        for row, r in zip(logits.cpu(), batch):  # the seeded generator lives on the host
            p = r.params
            if p.temperature <= 0:
                out.append(int(row.argmax()))
                continue
            # Shifted by the maximum first, so a tiny temperature sharpens toward greedy instead of overflowing.
            probs = torch.softmax((row - row.max()) / p.temperature, dim=-1)
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
        elif len(r.tokens) >= self.serving.max_model_len:
            r.finish_reason = "max_model_len"

    def _completion(self, r: Request) -> dict[str, Any]:
        text = self.tokenizer.decode(r.output_ids, skip_special_tokens=True) if r.output_ids else ""
        out = {"prompt": r.prompt, "text": text, "token_ids": r.output_ids, "finish_reason": r.finish_reason}
        if r.error:
            out["error"] = r.error
        return out

