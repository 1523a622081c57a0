"""The report a warmup returns: per bucket, how long it took, where its graph came from, what it holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BucketWarmup:
    bucket: tuple[int, ...]
    seconds: float
    source: str  # "compiled" | "loaded" (from the graph cache) | "ready" (already built)
    captured: bool = False
    capture_seconds: float = 0.0
    graph_bytes: int = 0  # the graph's cache entry (0 when it is not cached)
    device_bytes: int | None = None  # device memory its capture took, where the device reports it
    phase: str | None = None  # which runner of an engine ("prefill" | "decode")
    variant: int | None = None  # which FP8 layer variant (several only when scales need their own graphs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bucket": list(self.bucket), "seconds": round(self.seconds, 4), "source": self.source,
                               "graph_bytes": self.graph_bytes}
        if self.captured:
            out.update(capture_seconds=round(self.capture_seconds, 4), device_bytes=self.device_bytes)
        if self.phase is not None:
            out["phase"] = self.phase
        if self.variant is not None:
            out["variant"] = self.variant
        return out


@dataclass
class WarmupReport:
    backend: str
    entries: list[BucketWarmup] = field(default_factory=list)
    seconds: float = 0.0
    buffer_bytes: int = 0  # static input buffers of capture runners (one largest-bucket set)

    @property
    def compiled(self) -> int:
        return sum(e.source == "compiled" for e in self.entries)

    @property
    def loaded(self) -> int:
        return sum(e.source == "loaded" for e in self.entries)

    @property
    def captured(self) -> int:
        return sum(e.captured for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        device = [e.device_bytes for e in self.entries if e.device_bytes is not None]
        return {
            "backend": self.backend,
            "buckets": len(self.entries),
            "compiled": self.compiled,
            "loaded": self.loaded,
            "captured": self.captured,
            "seconds": round(self.seconds, 4),
            "graph_bytes": sum(e.graph_bytes for e in self.entries),
            "device_bytes": sum(device) if device else None,
            "buffer_bytes": self.buffer_bytes,
            "entries": [e.to_dict() for e in self.entries],
        }

    def __str__(self) -> str:
        lines = [f"warmup with {self.backend}: {len(self.entries)} buckets, {self.compiled} compiled, "
                 f"{self.loaded} loaded, {self.captured} captured, {self.seconds:.2f}s"]
        for e in self.entries:
            extra = f"  capture {e.capture_seconds:.3f}s" if e.captured else ""
            if e.device_bytes is not None:
                extra += f"  {e.device_bytes / 2**20:.1f} MiB"
            lines.append(f"  {e.bucket!s:<24} {e.source:<9} {e.seconds:8.3f}s{extra}")
        return "\n".join(lines)
