"""CUDA allocations of the target over a recording, from the eBPF uprobes on libcuda: live bytes by
kind at each probe report, and the largest allocation calls."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..recording import Events
from .timeline import Series


@dataclass
class CudaCallRow:
    t_s: float
    pid: int
    func: str
    kind: str
    size_bytes: Optional[int]
    result: int


def cuda_from_probes(reports: Events, pids: set[int], mono0: int, limit: int = 600):
    """({kind: Series} of live CUDA bytes of the target's processes at each probe report (at most
    `limit` reports, evenly spread, plus the last: a chart has no more pixels than that), the 12
    largest allocation calls, {"calls", "allocations", "frees", "failed"} over the run)."""
    kinds: dict[str, list] = {}
    times = []
    n = len(reports)
    pick = sorted({round(j * (n - 1) / (limit - 1)) for j in range(limit)} if n > limit else set(range(n)))
    for i in pick:
        cu = reports.key(i, "cuda")
        if not isinstance(cu, list):
            continue
        times.append((reports.mono[i] - mono0) / 1e9)
        per: dict[str, int] = {}
        for c in cu:
            if isinstance(c, dict) and c.get("pid") in pids:
                per[c.get("kind", "?")] = per.get(c.get("kind", "?"), 0) + max(0, c.get("outstanding_bytes") or 0)
        for k in set(kinds) | set(per):
            kinds.setdefault(k, [0] * (len(times) - 1)).append(per.get(k, 0))
    out = {k: Series(f"cuda_{k}", f"CUDA {k}", vals, list(times), f"live {k} bytes of the target's processes "
                     "(eBPF uprobes on libcuda)", "eBPF CUDA uprobes") for k, vals in sorted(kinds.items())}
    calls: list[CudaCallRow] = []
    total = {"calls": 0, "allocations": 0, "frees": 0, "failed": 0}
    for i in range(n):            # each report lists the calls since the previous one
        for c in reports.key(i, "cuda_calls") or []:
            if not isinstance(c, dict) or c.get("pid") not in pids:
                continue
            func = str(c.get("func", "?"))
            free = "Free" in func or "Release" in func
            total["calls"] += 1
            total["frees" if free else "allocations"] += 1
            total["failed"] += 1 if c.get("result", 0) else 0
            if not free:
                calls.append(CudaCallRow((c.get("ts_ns", mono0) - mono0) / 1e9, c.get("pid"), func,
                                         c.get("kind", "?"), c.get("size_bytes"), c.get("result", 0)))
    calls.sort(key=lambda c: (-(c.size_bytes or 0), c.t_s))
    return out, calls[:12], total
