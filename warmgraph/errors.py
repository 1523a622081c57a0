"""The errors warmgraph raises on purpose.

Every message names what was expected, what was found and what to do, so the CLI can print
it as one line and exit with code 2 instead of showing a traceback.
"""

from __future__ import annotations


class WarmgraphError(Exception):
    """Base class: a user-facing problem with a one-line, actionable message."""


class ConfigError(WarmgraphError, ValueError):
    """A setting, argument or environment variable has a value that cannot work."""


class BucketFileError(ConfigError):
    """A bucket file (vllm-gaudi text or warmgraph YAML) cannot be parsed."""


class TraceError(ConfigError):
    """A workload trace is missing, unreadable or lacks the requested column."""


class BucketMissError(WarmgraphError, LookupError):
    """A shape is larger than every bucket and the miss policy is ``error``."""


class CacheError(WarmgraphError):
    """A graph cache entry, archive or argument is bad (unknown key, corrupt file, ...)."""


class CacheSecurityError(CacheError):
    """A cache path is not private to this user; loading from it could run planted code."""


class CacheWriteError(CacheError):
    """An entry could not be written (a full disk, no permission); nothing partial remains."""
