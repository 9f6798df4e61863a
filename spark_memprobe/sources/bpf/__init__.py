"""eBPF attribution through bcc: page faults, page cache by file, memcg charges, CUDA
allocations (docs/probes.md). Importing this package never needs bcc: bcc is looked up only
when probes are detected or started, and its absence is reported in one line."""
from __future__ import annotations

from .supported import base_status, detect, summary
from .session import ProbeOptions, ProbeSession, ProbesUnavailable

__all__ = ["ProbeOptions", "ProbeSession", "ProbesUnavailable", "base_status", "detect", "summary"]
