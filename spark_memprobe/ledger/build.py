"""build_ledger: one target at one instant, from a HostInfo and a Sample (plus optional inputs)."""
from __future__ import annotations

from typing import Optional

from ..samples import HostInfo, Sample
from .available import decompose_mem_available, free_in_blocks_bytes
from .cuda import model_cuda_free
from .derive import derive
from .facts import facts_from_sample
from .rules import run_rules
from .inputs import LedgerInputs
from .kv import kv_budget
from .model import Ledger
from .rules_common import Ctx
from .table import build_table


# zoneinfo is read about once a second, meminfo every sample: pages move in between
AVAIL_TOLERANCE_PAGES = 4096


def build_ledger(host: HostInfo, sample: Sample, inputs: Optional[LedgerInputs] = None,
                 kv_fraction: float = 0.9) -> Ledger:
    """A pure function of its arguments: live snapshots and replayed recordings give the same
    ledger for the same readings."""
    inputs = inputs or LedgerInputs()
    f = facts_from_sample(host, sample)
    d = derive(f, inputs)
    cuda = model_cuda_free(f)
    zones = inputs.kernel.zones if inputs.kernel is not None else None
    avail = decompose_mem_available(sample.meminfo, zones, f.page_size)
    huge = free_in_blocks_bytes(zones, f.page_size)
    columns, rows = build_table(f, d, inputs, cuda, avail)
    kv = kv_budget(f, d, cuda, kv_fraction)
    findings, results = run_rules(Ctx(f, d, inputs, kv, cuda, {c.key: c for c in columns}, avail, huge))
    evidence = list(host.platform.evidence) if host.platform is not None else []
    notes = sorted(set(sample.notes)) + f.notes + inputs.notes
    if avail is not None and avail.difference_bytes is not None and f.page_size and \
            abs(avail.difference_bytes) > AVAIL_TOLERANCE_PAGES * f.page_size:
        notes.append(f"MemAvailable by si_mem_available's formula is {avail.computed_bytes} B, the kernel said "
                     f"{avail.kernel_bytes} B: this kernel computes it differently, or zoneinfo and meminfo were "
                     "read far apart")
    return Ledger(target=f.target, platform=f.platform, platform_evidence=evidence, page_size=f.page_size,
                  columns=columns, rows=rows, findings=findings, rules=results, cuda=cuda, kv=kv,
                  notes=notes, mem_available=avail, free_in_2mib_blocks_bytes=huge)
