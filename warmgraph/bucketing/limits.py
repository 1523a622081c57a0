"""How many buckets warmgraph will generate, and the error for a request above that.

vllm-gaudi has one such limit, on a ``range(...)`` in a bucket file (10,000 values); its
generated ranges and plans have none, so a typo (``--max-model-len 100000000``) makes
millions of buckets and runs for minutes or runs out of memory. warmgraph refuses such a
request up front, in the bucketing functions themselves, so the Python API is protected as
well as the CLI. Each cap is far above anything that can be compiled (every bucket is a
graph: even 10,000 graphs take hours to warm up) and low enough that any accepted call
finishes in about a second on a laptop core.

- ``MAX_RANGE_VALUES``: values of one dimension (a ``linear``/``padding_aware``/``exponential``
  range, or the ``limit`` of an exponential one). 100,000 is 10x vllm-gaudi's file-range
  cap; a range that long builds in about 0.1 s, its BucketSet in about 0.2 s.
- ``MAX_PLAN_BUCKETS``: buckets of one plan phase (prompt or decode) *before* filtering,
  the product of its dimensions' range lengths, and buckets a bucket file expands to.
  250,000 keeps vllm-gaudi's largest published linear plan (16,321 prompt buckets for a
  32k context) and a linear 128k-context plan (131,072 candidates) while crossing, checking
  and printing stay near a second.
- ``MAX_BUCKET_VALUE``: the largest size a bucket may hold, 2**53: bucket values become
  float64 (exponential spacing, padding waste) and int64 (lookups), exact up to there.
"""

from __future__ import annotations

from warmgraph.errors import ConfigError

MAX_RANGE_VALUES = 100_000
MAX_PLAN_BUCKETS = 250_000
MAX_BUCKET_VALUE = 2**53


class TooManyBucketsError(ConfigError):
    """A request would make more buckets than a cap allows; ``count`` may be a lower bound."""

    def __init__(self, message: str, count: int, cap: int) -> None:
        super().__init__(message)
        self.count = count
        self.cap = cap


def check_count(
    what: str, count: int, cap: int, fix: str, *, noun: str = "buckets", per: str = "", bound: str = ""
) -> None:
    """Raise TooManyBucketsError if ``count`` is above ``cap``.

    ``what`` names what is counted ("linear range min=1 step=1 max=100000000000"), ``noun``
    what one unit is, ``per`` what the cap applies to (" per dimension"), ``bound`` qualifies
    the count when it is not exact ("up to ", "at least "), and ``fix`` says what to change.
    """
    if count > cap:
        raise TooManyBucketsError(
            f"{what} would make {bound}{count:,} {noun}, above the cap of {cap:,}{per}; {fix}", count, cap
        )
