"""Bucketing: which input shapes get a compiled graph. Pure Python and numpy; never imports torch."""

from warmgraph.bucketing.buckets import Bucket, BucketSet, MissPolicy, calc_fallback_value

__all__ = ["Bucket", "BucketSet", "MissPolicy", "calc_fallback_value"]
