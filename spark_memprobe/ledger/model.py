"""What the ledger returns: stdlib dataclasses, so views render them and recordings recompute them.

Cell semantics (the same everywhere):
  a row key missing from Row.cells   the view never counts this kind of memory (rendered blank)
  cells[col] == 0                    the view counts this kind, and there is none of it now
  cells[col] is None                 the view (or the estimate behind the cell) could not be read
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from .available import MemAvailableParts


@dataclass
class Column:
    """One view of the target's memory: what a tool or counter shows, and where it comes from."""
    key: str
    label: str                     # short, for tables
    title: str                     # what it is, one line
    source: str                    # where the definition is documented
    total: Optional[int] = None    # what the view itself shows, bytes
    counts: list[str] = field(default_factory=list)   # top-level row keys this view counts
    # bytes the rows hold beyond the view's total: counters read at different instants, or
    # memory.stat flushed ahead of the exact page counter (mm/memcontrol.c rstat flush)
    excess_bytes: int = 0
    note: str = ""


@dataclass
class Row:
    """One physical kind of memory. Sub-rows (parent set) break a row down; column totals
    count top-level rows only."""
    key: str
    label: str                     # short, for tables
    title: str                     # what it is, one line
    cells: dict[str, Optional[int]] = field(default_factory=dict)
    parent: Optional[str] = None
    source: str = ""
    estimate: bool = False         # the cells are modelled, not read from one counter
    note: str = ""


@dataclass
class Part:
    """What a finding names (a cgroup, a file or a ledger row) and its bytes where known."""
    name: Optional[str]            # cgroup path, file path or Row.key; None: a cgroup that is not known
    bytes: Optional[int] = None


@dataclass
class Finding:
    """One rule's result: bytes counted twice, counted nowhere, or lost. Title and evidence are
    text for people; what the bytes are and where they sit is in owners, files and rows."""
    rule: str
    title: str
    bytes: int                     # the headline amount (an upper bound when bytes_low is set)
    severity: str                  # "critical", "warning", "info"
    confidence: str                # "high", "medium", "low"
    evidence: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    bytes_low: Optional[int] = None   # proven lower bound, when bytes is an estimate from above
    owners: list[Part] = field(default_factory=list)   # cgroups charged for the bytes
    files: list[Part] = field(default_factory=list)    # files the bytes are pages of
    rows: list[Part] = field(default_factory=list)     # ledger rows the bytes sit in (Row.key)


@dataclass
class RuleResult:
    """Whether a rule raised a finding, found nothing, or did not apply (and why)."""
    rule: str
    status: str                    # "raised", "clear", "silent"
    reason: str = ""


@dataclass
class CudaFree:
    """cudaMemGetInfo free/total for one GPU, modelled from readings (no CUDA context)."""
    gpu_index: int
    platform: str
    free_bytes: Optional[int]
    total_bytes: Optional[int]
    basis: str                     # which reading it follows
    source: str


@dataclass
class GapPart:
    """One part of MemAvailable - CUDA free (negative for what MemAvailable holds back)."""
    key: str
    label: str
    bytes: int
    kv_bytes: int                  # fraction x bytes


@dataclass
class KvBudget:
    """What an engine sizing its KV cache as fraction x cudaMemGetInfo free gets, and loses
    against fraction x MemAvailable."""
    fraction: float
    gpu_index: Optional[int]
    applies: bool                  # CUDA free depends on page cache on this platform
    prediction: bool               # numbers are "if this host were integrated UMA"
    cuda_free_bytes: Optional[int]
    mem_free_bytes: Optional[int]
    mem_available_bytes: Optional[int]
    kv_from_cuda_free_bytes: Optional[int]
    kv_from_available_bytes: Optional[int]
    lost_bytes: Optional[int]      # fraction x (MemAvailable - CUDA free); UMA prediction on others
    parts: list[GapPart] = field(default_factory=list)
    note: str = ""


@dataclass
class Ledger:
    target: str
    platform: str
    platform_evidence: list[str]
    page_size: Optional[int]          # of the host that was read (HostInfo.page_size); None: unknown
    columns: list[Column]
    rows: list[Row]
    findings: list[Finding]
    rules: list[RuleResult]
    cuda: list[CudaFree]
    kv: KvBudget
    notes: list[str] = field(default_factory=list)
    mem_available: Optional[MemAvailableParts] = None   # the kernel's formula, term by term (zoneinfo read)
    free_in_2mib_blocks_bytes: Optional[int] = None      # free memory in blocks of 2 MiB or more (buddyinfo)

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def total(self, column: str) -> Optional[int]:
        """What a view shows; None when it was not read or the ledger has no such view."""
        c = next((c for c in self.columns if c.key == column), None)
        return None if c is None else c.total

    def cell(self, row: str, column: str) -> Optional[int]:
        """A cell's bytes; KeyError when the view never counts that row."""
        return self.row(row).cells[column]

    def finding(self, rule: str) -> Optional[Finding]:
        return next((f for f in self.findings if f.rule == rule), None)

    def rule(self, rule: str) -> RuleResult:
        return next(r for r in self.rules if r.rule == rule)


def ledger_to_dict(ledger: Ledger) -> dict:
    """Plain dict, JSON-ready."""
    return asdict(ledger)
