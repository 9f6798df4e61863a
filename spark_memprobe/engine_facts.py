"""What an inference engine's own log said about its memory: facts read from its start-up lines
(sources/engine_log.py reads them; docs/engine-log.md lists each line and its source).

Stdlib dataclasses at the level of samples.py, so recordings ("engine_fact" events), analysis
and views hold them without importing sources/. A value the line did not give is None, never 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ENGINES = ("vllm", "sglang", "trtllm", "llamacpp", "ollama")

# kind -> what the fact holds
KINDS = {
    "version": "text: the engine's version",
    "weights": "value_bytes: memory the model weights took (per device where device is set)",
    "kv_cache": "value_bytes: the KV cache the engine sized or allocated (per device where device is set)",
    "kv_tokens": "count: tokens the KV cache holds",
    "kv_blocks": "count: KV cache blocks",
    "utilization": "fraction: the memory fraction asked for (text: the engine's own flag name); "
                   "requested_bytes where the line gives it",
    "startup_free": "free_bytes/total_bytes: free device memory the engine saw at start-up",
    "admission_error": "the engine refused to start or allocate: free/total/requested bytes and "
                       "fraction where the line gives them; text: the reason",
    "kv_shortfall": "requested_bytes: KV one request needs; free_bytes: KV available",
    "cuda_graph": "value_bytes: memory CUDA-graph capture took",
    "profile_peak": "value_bytes: peak memory (torch + non-torch) of the engine's profiling run",
}

LINE_CHARS = 400          # source lines are kept up to this many characters


@dataclass
class EngineFact:
    engine: str                       # one of ENGINES
    kind: str                         # one of KINDS
    line_no: int                      # 1-based line number in the log read
    line: str                         # the source line (LINE_CHARS at most)
    wall_s: Optional[float] = None    # the line's own timestamp, wall-clock epoch seconds
    value_bytes: Optional[int] = None
    count: Optional[int] = None
    fraction: Optional[float] = None
    text: Optional[str] = None
    device: Optional[str] = None      # "CUDA0", "cuda:0": per-device lines (llama.cpp, Ollama, vLLM)
    free_bytes: Optional[int] = None
    total_bytes: Optional[int] = None
    requested_bytes: Optional[int] = None


@dataclass
class EngineLog:
    facts: list[EngineFact] = field(default_factory=list)
    lines: int = 0                    # lines read
    capped: bool = False              # stopped at a cap (lines, facts or bytes): later lines unread
    source: Optional[str] = None      # the file, or "docker:NAME"

    @property
    def engine(self) -> Optional[str]:
        """The engine the log is from: Ollama when it said anything (its runner prints llama.cpp's
        lines too), else the engine with the most facts; None when no line was recognised."""
        names = [f.engine for f in self.facts]
        if not names:
            return None
        if "ollama" in names:
            return "ollama"
        return max(ENGINES, key=names.count)

    def of(self, kind: str) -> list[EngineFact]:
        return [f for f in self.facts if f.kind == kind]

    def latest(self, kind: str) -> Optional[EngineFact]:
        got = self.of(kind)
        return got[-1] if got else None

    def total_bytes(self, kind: str) -> Optional[int]:
        """value_bytes of the latest fact of kind; for per-device lines, the latest of each device
        summed (the KV or weights of a model split over devices)."""
        per: dict[Optional[str], int] = {}
        for f in self.of(kind):
            if f.value_bytes is not None:
                per[f.device] = f.value_bytes
        if not per:
            return None
        if None in per and len(per) == 1:
            return per[None]
        return sum(v for d, v in per.items() if d is not None)


def fact_from_dict(d: dict) -> EngineFact:
    """An EngineFact from its dict (a recording's "engine_fact" event); keys a newer version
    added are ignored."""
    names = EngineFact.__dataclass_fields__
    return EngineFact(**{k: v for k, v in d.items() if k in names})
