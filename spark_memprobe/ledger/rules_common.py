"""What every rule gets, returns and shares (context, Skip, byte formatting, severity)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .available import MemAvailableParts
from .derive import Derived
from .facts import Facts
from .inputs import LedgerInputs
from .model import Column, CudaFree, KvBudget

MiB = 1 << 20
GiB = 1 << 30
NOISE_BYTES = 1 * MiB        # below this a rule reports nothing: stat flush lag is tens of pages per CPU
MEMCG_CHARGE_BATCH = 64      # pages a CPU charges ahead and keeps as stock (mm/memcontrol.c)
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class Ctx:
    f: Facts
    d: Derived
    inputs: LedgerInputs
    kv: KvBudget
    cuda: list[CudaFree]
    columns: dict[str, Column]
    avail: Optional[MemAvailableParts] = None     # MemAvailable by the kernel's formula (zoneinfo read)
    huge_free: Optional[int] = None               # free bytes in blocks of 2 MiB or more (buddyinfo read)


@dataclass
class Skip:
    """The rule does not apply here (platform), or lacks its inputs; reason says which."""
    reason: str


def noise(c: Ctx) -> int:
    """Below this many bytes a rule reports nothing. Per-CPU charge stock and lazy memory.stat
    flushes move the cgroup numbers by tens of pages per CPU, so the floor scales with the page
    size of the host that was read: 1 MiB on 4 KiB pages, 4 MiB on 16 KiB, 16 MiB on 64 KiB
    (Grace hosts); 1 MiB when the page size was not recorded."""
    page = c.f.page_size
    return max(NOISE_BYTES, 4 * MEMCG_CHARGE_BATCH * page) if page else NOISE_BYTES


def b(n: Optional[int]) -> str:
    """Bytes for finding text: binary units, three significant figures, exact bytes too."""
    if n is None:
        return "unknown"
    v, unit = float(abs(n)), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            break
        v /= 1024
    sign = "-" if n < 0 else ""
    if unit == "B":
        return f"{sign}{int(v)} B"
    return f"{sign}{v:.3g} {unit} ({n} B)" if v < 100 else f"{sign}{v:.4g} {unit} ({n} B)"


def short(n: Optional[int]) -> str:
    """Bytes for titles: binary units only."""
    return b(n).split(" (")[0]


def by_size(n: int, whole: Optional[int], big: int = GiB, share: float = 0.10, floor: int = 64 * MiB) -> str:
    """warning when the bytes are large in absolute terms, or at least `floor` and a large share of
    the whole; else info."""
    return "warning" if n >= big or (whole and n >= floor and n >= share * whole) else "info"


def platform_skip(f: Facts, wanted: str, why_not: str) -> Optional[Skip]:
    if f.platform == wanted:
        return None
    if f.platform in ("unknown", "no-gpu"):
        return Skip(f"platform '{f.platform}': this rule needs evidence of {wanted} memory (detect, never guess)")
    return Skip(f"{f.platform} platform: {why_not}")
