"""The report a warmup returns: per bucket, how long it took and where its graph came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BucketWarmup:
    bucket: tuple[int, ...]
    seconds: float
    source: str  # "compiled" | "loaded" (from the graph cache) | "ready" (already warm)


@dataclass
class WarmupReport:
    backend: str
    entries: list[BucketWarmup] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def compiled(self) -> int:
        return sum(e.source == "compiled" for e in self.entries)

    @property
    def loaded(self) -> int:
        return sum(e.source == "loaded" for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "buckets": len(self.entries),
            "compiled": self.compiled,
            "loaded": self.loaded,
            "seconds": round(self.seconds, 4),
            "entries": [{"bucket": list(e.bucket), "seconds": round(e.seconds, 4), "source": e.source}
                        for e in self.entries],
        }

    def __str__(self) -> str:
        lines = [f"warmup with {self.backend}: {len(self.entries)} buckets, {self.compiled} compiled, "
                 f"{self.loaded} loaded, {self.seconds:.2f}s"]
        lines += [f"  {e.bucket!s:<24} {e.source:<9} {e.seconds:8.3f}s" for e in self.entries]
        return "\n".join(lines)
