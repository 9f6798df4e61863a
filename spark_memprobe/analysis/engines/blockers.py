"""What stands between this host and what an engine asks for, ranked in bytes, and the exact
commands that free it, each with the bytes it frees and its risk.

What counts depends on the free figure the engine reads (Prediction.free_basis):
  MemFree        page cache (by file where paths were given, mincore-exact), reclaimable kernel
                 memory, other cgroups' anon memory, GPU memory of other processes
  MemAvailable   what MemAvailable holds back of the page cache (si_mem_available keeps
                 min(page cache / 2, low watermarks)), anon memory, GPU memory
  device free    GPU memory of processes (NVML per process) and what no process accounts for
Pure: the files' cached bytes and the cgroups are read by the caller.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Optional

from .model import BASIS_AVAILABLE, BASIS_DEVICE, BASIS_MEMFREE, EngineState, Prediction


@dataclass
class CachedFile:
    path: str
    cached_bytes: int
    file_bytes: int


@dataclass
class CgroupUse:
    path: str
    anon_bytes: Optional[int]
    file_bytes: Optional[int]


@dataclass
class Blocker:
    kind: str          # "file", "page_cache", "kernel", "cgroup", "gpu_process", "gpu_unattributed"
    name: str
    bytes: int
    note: str = ""


@dataclass
class Remedy:
    command: str
    frees_bytes: Optional[int]      # how much more free the engine sees (or less it asks for)
    risk: str
    passes: Optional[bool]          # the start-up check passes after it (None: unknown)


def rank_blockers(state: EngineState, pred: Prediction, files: list[CachedFile],
                  cgroups: list[CgroupUse]) -> list[Blocker]:
    out: list[Blocker] = []
    basis = pred.free_basis
    if basis == BASIS_MEMFREE:
        named = sum(f.cached_bytes for f in files)
        out += [Blocker("file", f.path, f.cached_bytes, f"{f.file_bytes} B file, mincore") for f in files]
        if state.page_cache_bytes is not None:
            rest = max(0, state.page_cache_bytes - named)
            mine = state.target_page_cache_bytes
            if mine is not None and state.cgroup_path:
                out.append(Blocker("page_cache", f"page cache charged to {state.cgroup_path}", max(0, mine - named)))
                rest = max(0, rest - max(0, mine - named))
            out.append(Blocker("page_cache", "page cache of the rest of the host (files not named)", rest))
        if state.reclaimable_kernel_bytes is not None:
            out.append(Blocker("kernel", "reclaimable kernel memory (KReclaimable)", state.reclaimable_kernel_bytes))
    elif basis == BASIS_AVAILABLE and state.page_cache_kept_bytes is not None:
        out.append(Blocker("page_cache", "page cache MemAvailable holds back (min(page cache / 2, low watermarks))",
                           state.page_cache_kept_bytes))
    if basis in (BASIS_MEMFREE, BASIS_AVAILABLE) or state.integrated:
        for c in cgroups:
            if c.anon_bytes:
                out.append(Blocker("cgroup", c.path, c.anon_bytes, "anon memory"))
    procs = state.gpu_processes or []
    out += [Blocker("gpu_process", f"pid {g.pid}", g.bytes, "GPU memory (NVML per process); on UMA no memory "
                    "cgroup charges it (docs/facts.md#f-gb10-uncharged)") for g in procs if g.bytes]
    if basis == BASIS_DEVICE and state.cuda_total_bytes is not None and pred.free_bytes is not None:
        rest = state.cuda_total_bytes - pred.free_bytes - sum(g.bytes for g in procs)
        if rest > 0:
            out.append(Blocker("gpu_unattributed", "driver and GPU memory no process accounts for", rest))
    return sorted((b for b in out if b.bytes > 0), key=lambda b: -b.bytes)


def _passes(pred: Prediction, frees: Optional[int]) -> Optional[bool]:
    if frees is None or pred.free_bytes is None or pred.requested_bytes is None:
        return None
    return pred.free_bytes + frees >= pred.requested_bytes


def remedies(state: EngineState, pred: Prediction, blockers: list[Blocker]) -> list[Remedy]:
    out: list[Remedy] = []
    files = [b for b in blockers if b.kind == "file"]
    if files:
        freed = sum(b.bytes for b in files)
        out.append(Remedy("memprobe evict " + " ".join(shlex.quote(b.name) for b in files), freed,
                          "low: only these files; the engine reads them from disk again when it loads (a slower "
                          "start), and pages a process maps stay", _passes(pred, freed)))
    cache = sum(b.bytes for b in blockers if b.kind in ("page_cache", "file"))
    if pred.free_basis == BASIS_MEMFREE and cache:
        out.append(Remedy("sync && echo 1 > /proc/sys/vm/drop_caches", cache,
                          "host-wide: every process reads its files from disk again; dirty and mapped pages stay",
                          _passes(pred, cache)))
    out += _settings(state, pred)
    if state.integrated and state.cgroup_path and state.cgroup_current_bytes is not None:
        gpu = sum(g.bytes for g in state.gpu_processes or [])
        out.append(Remedy(f"memory.max of {state.cgroup_path} >= {state.cgroup_current_bytes} B (docker update "
                          f"--memory) holds host memory only", None,
                          f"on integrated UMA GPU memory ({gpu} B now) is not charged to memory.max: a limit "
                          "cannot contain it (docs/facts.md#f-gb10-uncharged)", None))
    return out


def _settings(state: EngineState, pred: Prediction) -> list[Remedy]:
    out = []
    u, less = pred.passing.get("gpu_memory_utilization"), 0
    if u is not None and pred.admission_ok is False and pred.total_bytes:
        less = pred.requested_bytes - math.ceil(pred.total_bytes * u)
        out.append(Remedy(f"--gpu-memory-utilization {u:g}", less,
                          f"the KV budget shrinks by the same {less} B", True))
    kv = None if pred.kv_bytes is None else pred.kv_bytes - less
    if pred.engine == "vllm" and kv is not None and kv > 0 and pred.approx_bytes is not None \
            and pred.settings.get("kv_cache_memory_bytes") is None:
        out.append(Remedy(f"--kv-cache-memory-bytes {kv}", None,
                          "the KV cache no longer follows profiling: page cache or a compile heap during start-up "
                          "cannot shrink it, and nothing guards an overestimate (out of memory at run time)", None))
    f = pred.passing.get("mem_fraction_static")
    if f is not None and pred.admission_ok is False:
        out.append(Remedy(f"--mem-fraction-static {f:g}", None, "less room for activations and CUDA graphs", True))
    c = pred.passing.get("ctx_size")
    if c is not None and pred.admission_ok is False:
        out.append(Remedy(f"--ctx-size {c}", None, "shorter context: longer prompts are refused", True))
    return out
