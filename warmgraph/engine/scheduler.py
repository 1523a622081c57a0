"""Continuous batching over a paged KV cache, as vllm-gaudi schedules it. Pure Python, no torch.

A step is either a prefill or a decode:

  - prefill: requests in the middle of a long prompt continue first (chunked prefill: each
    chunk reads the earlier ones from the cache as context blocks); otherwise waiting
    requests are admitted, up to ``max_num_prefill_seqs`` at once, while fewer than
    ``max_num_seqs`` run and their KV blocks are free. A batch of several prompts is sent
    only if a prompt bucket of the plan covers its shape ``(batch, query_len, ctx_blocks)``;
    otherwise it shrinks until one does, so multi-request prefills never fall back to eager;
    A single prompt whose chunk no bucket covers is cut to the longest covered chunk;
  - decode: one token for every running request whose prompt is done, or for as many of them
    as a decode bucket covers (the others go first in the next decode step).

KV blocks for a request's whole length (prompt plus ``max_tokens``, capped at
``max_model_len``) are reserved at admission, so a running request never waits for memory,
and returned when it finishes. Blocks are handed out lowest id first. A request that can
never run (an empty prompt, a prompt beyond ``max_model_len``, more blocks than the cache
has) fails alone with an error naming the limit; the others complete. No request is ever
left without a result: ``schedule`` returning None with requests still waiting is a bug,
and raises.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from warmgraph.bucketing.buckets import BucketSet, MissPolicy
from warmgraph.bucketing.plans import ServingConfig


@dataclass(eq=False)  # requests are compared by identity: two equal prompts are two requests
class Request:
    """One prompt and what became of it."""

    index: int
    prompt: str
    prompt_ids: list[int]
    params: Any  # SamplingParams
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    cached: int = 0  # tokens whose K/V are in the cache
    error: str | None = None
    finish_reason: str | None = None
    first_token_s: float | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefilling(self) -> bool:
        return self.cached < len(self.prompt_ids)


@dataclass(frozen=True)
class Chunk:
    """Prompt tokens ``[begin, end)`` of ``request``, prefilled in this step."""

    request: Request
    begin: int
    end: int


@dataclass(frozen=True)
class PrefillBatch:
    chunks: tuple[Chunk, ...]
    query_len: int  # the longest chunk
    ctx_blocks: int  # the most context blocks any chunk reads

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.chunks), self.query_len, self.ctx_blocks)


@dataclass(frozen=True)
class DecodeBatch:
    requests: tuple[Request, ...]
    blocks: int  # cached blocks of the whole batch

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.requests), 1, self.blocks)


class Scheduler:
    """Waiting and running requests, and the free KV blocks. See the module docstring."""

    def __init__(self, serving: ServingConfig, prompt_buckets: BucketSet | None = None,
                 decode_buckets: BucketSet | None = None) -> None:
        self.serving = serving
        self.prompt_buckets = prompt_buckets
        self.decode_buckets = decode_buckets
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._free = list(range(serving.num_blocks))
        heapq.heapify(self._free)
        self.log: list[tuple[str, tuple[int, ...]]] = []  # per step: kind and request indices

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, r: Request) -> int:
        total = min(len(r.prompt_ids) + r.params.max_tokens, self.serving.max_model_len)
        return math.ceil(total / self.serving.block_size)

    def add(self, r: Request) -> None:
        """Queue ``r``, or fail it now with an error naming the limit when it can never run."""
        s = self.serving
        if not r.prompt_ids:
            r.error = "prompt is empty (no tokens); give some text"
        elif len(r.prompt_ids) + 1 > s.max_model_len:
            r.error = (f"prompt has {len(r.prompt_ids)} tokens but max_model_len is {s.max_model_len}; "
                       "shorten the prompt or raise --max-model-len")
        elif self.blocks_needed(r) > s.num_blocks:
            r.error = (f"request needs {self.blocks_needed(r)} KV blocks of {s.block_size} tokens but the cache has "
                       f"{s.num_blocks}; lower max_tokens or give the engine more blocks (num_blocks)")
        if r.error is not None:
            r.finish_reason = "error"
            return
        self.waiting.append(r)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> PrefillBatch | DecodeBatch:
        """The next step's batch. Raises RuntimeError if nothing can run while requests wait."""
        batch: PrefillBatch | DecodeBatch | None = self._prefill()
        if batch is None and self.running:
            batch = self._decode()
        if batch is None:
            raise RuntimeError(f"scheduler stalled with {len(self.waiting)} waiting and {len(self.running)} running "
                               f"requests and {self.free_blocks} free blocks")
        kind = "prefill" if isinstance(batch, PrefillBatch) else "decode"
        members = [c.request for c in batch.chunks] if isinstance(batch, PrefillBatch) else batch.requests
        self.log.append((kind, tuple(r.index for r in members)))
        return batch

    def finish(self) -> list[Request]:
        """Release the blocks of running requests that have a finish reason; returns them."""
        done = [r for r in self.running if r.finish_reason is not None]
        for r in done:
            self.running.remove(r)
            for b in r.blocks:
                heapq.heappush(self._free, b)
            r.blocks = []
        return done

    # -- prefill -----------------------------------------------------------------------------

    def _prefill(self) -> PrefillBatch | None:
        limit = self.serving.max_num_prefill_seqs or 1
        chunking = [r for r in self.running if r.prefilling]
        if chunking:
            return self._fit(chunking[:limit], [])
        admitted: list[Request] = []
        while self.waiting and len(self.running) < self.serving.max_num_seqs and len(admitted) < limit:
            r = self.waiting[0]
            need = self.blocks_needed(r)
            if need > len(self._free):
                break
            self.waiting.popleft()
            r.blocks = [heapq.heappop(self._free) for _ in range(need)]
            self.running.append(r)
            admitted.append(r)
        return self._fit(list(admitted), admitted) if admitted else None

    def _batch(self, requests: list[Request], budget: int | None = None) -> PrefillBatch:
        budget = budget or self.serving.max_num_batched_tokens // len(requests)
        chunks = tuple(Chunk(r, r.cached, min(len(r.prompt_ids), r.cached + budget)) for r in requests)
        query_len = max(c.end - c.begin for c in chunks)
        ctx = max(math.ceil(c.begin / self.serving.block_size) for c in chunks)
        return PrefillBatch(chunks, query_len, ctx)

    def _fit(self, requests: list[Request], admitted: list[Request]) -> PrefillBatch:
        """The batch of ``requests``, shrunk until a prompt bucket covers its shape.

        First fewer requests: those dropped from a batch they were just admitted to go back to
        the front of the queue with their blocks released; mid-prompt ones simply wait for the
        next step. Then, for one request, a shorter chunk: the longest query length of the plan
        that covers it (a plan whose query lengths stop short of the token budget).
        """
        batch = self._batch(requests)
        while len(requests) > 1 and not self._covered(self.prompt_buckets, batch.shape):
            dropped = requests.pop()
            if dropped in admitted:
                self.running.remove(dropped)
                for b in dropped.blocks:
                    heapq.heappush(self._free, b)
                dropped.blocks = []
                self.waiting.appendleft(dropped)
            batch = self._batch(requests)
        if self._covered(self.prompt_buckets, batch.shape) or self.prompt_buckets is None:
            return batch
        for q in sorted({b[1] for b in self.prompt_buckets if b[0] >= 1 and b[1] < batch.query_len}, reverse=True):
            shorter = self._batch(requests, budget=q)
            if self._covered(self.prompt_buckets, shorter.shape):
                return shorter
        return batch  # nothing covers it: the runner's miss policy decides

    @staticmethod
    def _covered(buckets: BucketSet | None, shape: tuple[int, int, int]) -> bool:
        return buckets is None or buckets.lookup(shape, miss=MissPolicy.EAGER) is not None

    # -- decode ------------------------------------------------------------------------------

    def _decode(self) -> DecodeBatch:
        requests = list(self.running)
        while True:
            blocks = sum(math.ceil(r.cached / self.serving.block_size) for r in requests)
            batch = DecodeBatch(tuple(requests), blocks)
            if len(requests) == 1 or self._covered(self.decode_buckets, batch.shape):
                break
            requests.pop()
        if len(requests) < len(self.running):  # the others decode first next time
            rest = [r for r in self.running if r not in requests]
            self.running = rest + requests
        return batch
