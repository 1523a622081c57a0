"""The scheduler on its own (pure Python): continuous batching, block accounting, requests that
can never run, and prefill batches the plan covers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.plans import ServingConfig
from warmgraph.engine.scheduler import DecodeBatch, PrefillBatch, Request, Scheduler


@dataclass(frozen=True)
class Params:
    max_tokens: int


def serving(**kw: int) -> ServingConfig:
    base = dict(max_num_seqs=2, max_num_batched_tokens=32, max_model_len=64, num_blocks=4, block_size=16,
                max_num_prefill_seqs=1)
    return ServingConfig(**{**base, **kw})


def request(i: int, prompt_len: int, max_tokens: int) -> Request:
    return Request(i, f"p{i}", list(range(1, prompt_len + 1)), Params(max_tokens))


def run(s: Scheduler, requests: list[Request], max_steps: int = 500) -> None:
    """Drive the scheduler as the engine does: prefills advance ``cached``; every finished prompt
    and decode step appends one token; a request stops at its ``max_tokens``."""
    for r in requests:
        s.add(r)
    for _ in range(max_steps):
        if not s.has_work():
            return
        batch = s.schedule()
        if isinstance(batch, PrefillBatch):
            for c in batch.chunks:
                c.request.cached = c.end
                if c.end == len(c.request.prompt_ids):
                    _token(c.request)
        else:
            for r in batch.requests:
                r.cached += 1
                _token(r)
        s.finish()
    raise AssertionError("did not finish")


def _token(r: Request) -> None:
    r.output_ids.append(7)
    if len(r.output_ids) >= r.params.max_tokens:
        r.finish_reason = "length"


def test_continuous_batching_admits_while_others_decode() -> None:
    s = Scheduler(serving())
    short, long, late = request(0, 8, 2), request(1, 8, 20), request(2, 8, 2)
    run(s, [short, long, late])
    kinds = s.log
    admitted = kinds.index(("prefill", (2,)))
    # request 2 joins while request 1 is still decoding: it appears in decode steps after it
    assert any(kind == "decode" and 1 in members for kind, members in kinds[admitted + 1:])
    assert all(r.finish_reason == "length" for r in (short, long, late))


def test_blocks_are_returned_and_reused() -> None:
    s = Scheduler(serving(num_blocks=4))  # room for two requests of 2 blocks at a time
    requests = [request(i, 10, 10) for i in range(7)]  # each needs ceil(20 / 16) = 2 blocks
    run(s, requests)
    assert all(r.finish_reason == "length" and len(r.output_ids) == 10 for r in requests)
    assert s.free_blocks == 4 and all(r.blocks == [] for r in requests)


def test_blocks_go_lowest_first() -> None:
    s = Scheduler(serving(num_blocks=8))
    s.add(request(0, 20, 10))
    batch = s.schedule()
    assert isinstance(batch, PrefillBatch) and batch.chunks[0].request.blocks == [0, 1]


@pytest.mark.parametrize(
    ("prompt_len", "max_tokens", "num_blocks", "fragment"),
    [
        (0, 4, 4, "prompt is empty"),
        (70, 4, 8, "max_model_len is 64"),
        (30, 30, 3, "needs 4 KV blocks of 16 tokens but the cache has 3"),
    ],
)
def test_a_request_that_can_never_run_fails_alone(prompt_len: int, max_tokens: int, num_blocks: int,
                                                  fragment: str) -> None:
    s = Scheduler(serving(num_blocks=num_blocks))
    bad, good = request(0, prompt_len, max_tokens), request(1, 4, 2)
    run(s, [bad, good])
    assert bad.finish_reason == "error" and fragment in (bad.error or "") and bad.output_ids == []
    assert good.finish_reason == "length" and len(good.output_ids) == 2


def test_a_stall_raises_instead_of_dropping_requests() -> None:
    s = Scheduler(serving(num_blocks=2))
    s.add(request(0, 10, 10))
    s._free.clear()  # blocks that never come back (a leak) must not make requests vanish
    with pytest.raises(RuntimeError, match="stalled with 1 waiting"):
        s.schedule()


def prefill_shapes(s: Scheduler, steps: int) -> list[tuple[int, int, int]]:
    """The shapes of the next ``steps`` prefill steps, each chunk marked as cached after it."""
    shapes = []
    for _ in range(steps):
        batch = s.schedule()
        assert isinstance(batch, PrefillBatch)
        shapes.append(batch.shape)
        for c in batch.chunks:
            c.request.cached = c.end
    return shapes


def test_chunked_prefill_reads_earlier_chunks_as_context() -> None:
    s = Scheduler(serving(max_num_batched_tokens=16, max_model_len=128, num_blocks=8))
    s.add(request(0, 40, 2))
    assert prefill_shapes(s, 3) == [(1, 16, 0), (1, 16, 1), (1, 8, 2)]


def test_multi_request_prefill_only_with_a_covering_bucket() -> None:
    limits = serving(max_num_batched_tokens=64, max_num_prefill_seqs=2, num_blocks=8, max_num_seqs=4)

    def two_waiting(buckets: list[tuple[int, int, int]]) -> tuple[Scheduler, Request, Request]:
        s = Scheduler(limits, BucketSet(buckets, dims=("batch", "query_len", "ctx_blocks")))
        first, second = request(0, 20, 2), request(1, 30, 2)
        s.add(first)
        s.add(second)
        return s, first, second

    covered, _, _ = two_waiting([(1, 64, 0), (2, 32, 0)])
    batch = covered.schedule()
    assert isinstance(batch, PrefillBatch) and batch.shape == (2, 30, 0)
    # Without a batch-2 bucket the same requests go one at a time, never to a shape no graph covers.
    single, c, d = two_waiting([(1, 64, 0), (2, 16, 0)])
    first = single.schedule()
    assert isinstance(first, PrefillBatch) and first.shape == (1, 20, 0)
    assert list(single.waiting) == [d] and d.blocks == [] and single.free_blocks == 8 - 2
    c.cached, c.output_ids = 20, [5]  # its prompt is done
    second = single.schedule()
    assert isinstance(second, PrefillBatch) and second.shape == (1, 30, 0)


def test_decode_batch_counts_cached_blocks() -> None:
    s = Scheduler(serving(num_blocks=8))
    r = request(0, 20, 5)
    s.add(r)
    batch = s.schedule()
    for c in batch.chunks:  # type: ignore[union-attr]
        c.request.cached = c.end
    r.output_ids.append(3)
    decode = s.schedule()
    assert isinstance(decode, DecodeBatch) and decode.shape == (1, 1, 2)


def test_a_chunk_no_bucket_covers_is_cut_to_one_that_is() -> None:
    # The plan's query lengths stop at 16 although the budget allows 32 (a linear plan can).
    buckets = BucketSet([(1, 8, 0), (1, 16, 0), (1, 16, 1), (1, 16, 2)], dims=("batch", "query_len", "ctx_blocks"))
    s = Scheduler(serving(max_num_batched_tokens=32, num_blocks=8), buckets)
    s.add(request(0, 30, 2))
    assert prefill_shapes(s, 2) == [(1, 16, 0), (1, 14, 1)]


def test_a_decode_batch_no_bucket_covers_goes_in_turns() -> None:
    decode = BucketSet([(1, 1, 1), (2, 1, 2), (2, 1, 4)], dims=("batch", "query_len", "blocks"))
    s = Scheduler(serving(max_num_seqs=3, num_blocks=12, max_model_len=64), None, decode)
    requests = [request(i, 4, 3) for i in range(3)]
    run(s, requests)
    decodes = [members for kind, members in s.log if kind == "decode"]
    assert all(len(m) <= 2 for m in decodes)  # never the uncovered batch of 3
    assert all(r.finish_reason == "length" and len(r.output_ids) == 3 for r in requests)
    counts = [sum(i in m for m in decodes) for i in range(3)]
    assert counts == [2, 2, 2]  # each request decoded as often as it needed: nobody starves
