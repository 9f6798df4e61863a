"""build_ledger: one target at one instant, from a HostInfo and a Sample (plus optional inputs)."""
from __future__ import annotations

from typing import Optional

from ..samples import HostInfo, Sample
from .cuda import model_cuda_free
from .derive import derive
from .facts import facts_from_sample
from .findings import run_rules
from .inputs import LedgerInputs
from .kv import kv_budget
from .model import Ledger
from .rules_common import Ctx
from .table import build_table


def build_ledger(host: HostInfo, sample: Sample, inputs: Optional[LedgerInputs] = None,
                 kv_fraction: float = 0.9) -> Ledger:
    """A pure function of its arguments: live snapshots and replayed recordings give the same
    ledger for the same readings."""
    inputs = inputs or LedgerInputs()
    f = facts_from_sample(host, sample)
    d = derive(f, inputs)
    cuda = model_cuda_free(f)
    columns, rows = build_table(f, d, inputs, cuda)
    kv = kv_budget(f, d, cuda, kv_fraction)
    findings, results = run_rules(Ctx(f, d, inputs, kv, cuda, {c.key: c for c in columns}))
    evidence = list(host.platform.evidence) if host.platform is not None else []
    return Ledger(target=f.target, platform=f.platform, platform_evidence=evidence, page_size=f.page_size,
                  columns=columns, rows=rows, findings=findings, rules=results, cuda=cuda, kv=kv,
                  notes=sorted(set(sample.notes)) + f.notes + inputs.notes)
