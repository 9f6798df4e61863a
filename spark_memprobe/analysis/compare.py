"""Two recordings side by side: the ledgers at each run's peak and at the moments both runs have,
the difference row by row and file by file, and its causes, largest first.

Causes are named from what the ledgers hold, never guessed:
  - first-touch page-cache ownership: one run's processes map page cache that is charged to
    another cgroup (ledger rule first_touch, its owners field), so its memory.current lacks pages
    the other run's cgroup is charged for (Documentation/admin-guide/cgroup-v2.rst, Memory Ownership);
  - page cache of named files: per-file bytes from eBPF page-cache ownership, else the resident
    bytes of the target's file mappings (mapped_files events, smaps Rss);
  - every other row (anon, shmem/pinned, kernel, driver memory, GPU) by its own bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..ledger.facts import under
from ..ledger.model import Finding, Ledger
from .report import ReportData
from .timeline import LABELS, Moment

MiB = 1 << 20
ORDER = ["start", "rise", "model_load", "kv_sizing", "gpu_peak", "end"]


@dataclass
class FileDiff:
    path: str
    a: Optional[int]
    b: Optional[int]

    @property
    def delta(self) -> Optional[int]:
        return None if self.a is None and self.b is None else (self.b or 0) - (self.a or 0)


@dataclass
class RowDiff:
    key: str
    label: str
    a: Optional[int]
    b: Optional[int]
    sub: bool = False

    @property
    def delta(self) -> Optional[int]:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class FirstTouch:
    """One run maps page cache charged to other cgroups and the other run does not."""
    run: str                         # "A" or "B": the run whose memory.current lacks the pages
    finding: Finding                 # that run's first_touch finding (owners, bytes)
    file: Optional[str] = None       # the file it maps most of (resident), else its largest mapping
    file_bytes: Optional[int] = None
    resident: bool = False           # file_bytes are resident (smaps Rss), not the mapping's length


@dataclass
class Cause:
    kind: str            # "first_touch", "file", "row"
    bytes: int           # how much of the difference it explains (absolute)
    first_touch: Optional[FirstTouch] = None    # "first_touch"
    files: list[FileDiff] = field(default_factory=list)   # "file": up to 3 files that moved like the page cache
    covered: int = 0                            # "file": what all such files moved
    row: Optional[RowDiff] = None               # "row" (the page_cache row: no file was named)


@dataclass
class Pair:
    key: str
    label: str
    a: Moment
    b: Moment
    rows: list[RowDiff] = field(default_factory=list)
    files: list[FileDiff] = field(default_factory=list)
    files_source: Optional[str] = None
    causes: list[Cause] = field(default_factory=list)

    def row(self, key: str) -> Optional[RowDiff]:
        return next((r for r in self.rows if r.key == key), None)


@dataclass
class Comparison:
    a: ReportData
    b: ReportData
    pairs: list[Pair]
    kv_pair: Pair

    @property
    def peak(self) -> Pair:
        return self.pairs[0]


def _target_files(m: Moment, d: Optional[ReportData] = None) -> tuple[Optional[dict], Optional[str]]:
    """{file: bytes} of page cache the moment attributes to the target, and where it comes from.
    At the peak (d given) the report's file table is used: eBPF from the report nearest the peak."""
    if d is not None and "peak" in m.keys and (d.files_source or "").startswith("eBPF"):
        out: dict = {}
        for f in d.files:
            if f.owner_is_target:
                out[f.path] = out.get(f.path, 0) + (f.bytes or 0)
        return out, "eBPF page-cache ownership: bytes charged to the target (probe report next to the peak)"
    if m.inputs.page_cache is not None:
        cg = m.sample.cgroup.path if m.sample.cgroup is not None else None
        out: dict = {}
        for p in m.inputs.page_cache:
            if cg is not None and under(p.cgroup, cg):
                name = p.path or f"inode {p.inode} on {p.dev}"
                out[name] = out.get(name, 0) + p.bytes
        return out, "eBPF page-cache ownership: bytes charged to the target"
    if m.mapped_rss is not None and any(v is not None for v in m.mapped_rss.values()):
        return ({k: v for k, v in m.mapped_rss.items() if v is not None},
                "resident bytes of the target's file mappings (smaps Rss)")
    return None, None


def _pair(key: str, label: str, a: Moment, b: Moment, da: Optional[ReportData] = None,
          db: Optional[ReportData] = None) -> Pair:
    p = Pair(key, label, a, b)
    la, lb = a.ledger, b.ledger

    def ident(r) -> str:
        # eBPF file rows are numbered per ledger (page_cache.file0, ...): match them by file
        return f"file:{r.label}" if r.key.startswith("page_cache.file") else r.key

    def value(lg: Ledger, idn: str, col: str):
        r = next((x for x in lg.rows if ident(x) == idn), None)
        if r is None:
            # a file the ledger attributes nothing of to the target has no row; on hybrid hosts that also
            # happens when its pages are not attributable (ledger/inputs.py): shown as missing, not 0
            return (idn.startswith("file:"), None)
        return (col in r.cells), r.cells.get(col)

    order: list = []
    for r in la.rows + lb.rows:
        if ("current" in r.cells or r.key == "elsewhere") and ident(r) not in [ident(x) for x in order]:
            order.append(r)
    tops = [r for r in order if r.parent is None]
    rows = [x for t in tops for x in [t] + [r for r in order if r.parent == t.key]]
    for r in rows:
        k = ident(r)
        col = "rss" if k == "elsewhere" else "current"
        ok_a, va = value(la, k, col)
        ok_b, vb = value(lb, k, col)
        if not ok_a and not ok_b:
            continue
        p.rows.append(RowDiff(r.key, r.label + (" (in RSS)" if k == "elsewhere" else ""), va if ok_a else None,
                              vb if ok_b else None, sub=r.parent is not None))
    p.rows.append(RowDiff("gpu_target", "GPU, target (NVML per-process)", la.total("nvml_procs"),
                          lb.total("nvml_procs")))
    fa, src_a = _target_files(a, da)
    fb, src_b = _target_files(b, db)
    if fa is not None or fb is not None:
        names = set(fa or {}) | set(fb or {})
        p.files = sorted((FileDiff(n, fa.get(n, 0) if fa is not None else None,
                                   fb.get(n, 0) if fb is not None else None) for n in names),
                         key=lambda x: (-abs(x.delta or 0), x.path))
        p.files_source = src_a or src_b
    p.causes = _causes(p)
    return p


def _first_touch(p: Pair, shift: int) -> FirstTouch:
    """The first-touch side of a pair: the run whose finding is larger by `shift`."""
    run, m = ("B", p.b) if shift > 0 else ("A", p.a)
    ft = FirstTouch(run, m.ledger.finding("first_touch"))
    resident = {k: v for k, v in (m.mapped_rss or {}).items() if v}
    maps = m.inputs.mapped_files or []
    if resident:
        ft.file = max(resident, key=lambda k: (resident[k], k))
        ft.file_bytes, ft.resident = resident[ft.file], True
    elif maps:
        big = sorted(maps, key=lambda x: (-x.size_bytes, x.path))[0]
        ft.file, ft.file_bytes = big.path, big.size_bytes
    return ft


def _causes(p: Pair) -> list[Cause]:
    out: list[Cause] = []
    cur_a, cur_b = p.a.ledger.total("current"), p.b.ledger.total("current")
    total = None if cur_a is None or cur_b is None else cur_b - cur_a
    pc = p.row("page_cache")
    d_pc = pc.delta if pc is not None else None
    # first-touch ownership: one run maps page cache charged elsewhere, the other does not
    ft_a, ft_b = (m.ledger.finding("first_touch") for m in (p.a, p.b))
    shift = (ft_b.bytes if ft_b else 0) - (ft_a.bytes if ft_a else 0)
    if d_pc is not None and abs(d_pc) >= 16 * MiB and abs(shift) >= 0.5 * abs(d_pc) and (shift > 0) == (d_pc < 0):
        out.append(Cause("first_touch", min(abs(shift), abs(d_pc)), first_touch=_first_touch(p, shift)))
    # page cache of named files
    if d_pc is not None and abs(d_pc) >= 16 * MiB and p.files:
        same = [f for f in p.files if f.delta and (f.delta > 0) == (d_pc > 0) and abs(f.delta) >= MiB]
        covered = sum(abs(f.delta) for f in same)
        if same and not any(c.kind == "first_touch" for c in out):
            out.append(Cause("file", min(covered, abs(d_pc)), files=same[:3], covered=covered))
    # the other rows ("not charged here" is the RSS side of first touch: folded into that cause)
    ft = any(c.kind == "first_touch" for c in out)
    for r in p.rows:
        if r.key in ("page_cache",) or r.sub or r.delta is None or (ft and r.key == "elsewhere"):
            continue
        if abs(r.delta) < max(16 * MiB, 0.02 * max(abs(total or 0), 1)):
            continue
        out.append(Cause("row", abs(r.delta), row=r))
    if d_pc is not None and abs(d_pc) >= 16 * MiB and not any(c.kind in ("first_touch", "file") for c in out):
        out.append(Cause("row", abs(d_pc), row=pc))
    return sorted(out, key=lambda c: (-c.bytes, c.kind))


def compare(a: ReportData, b: ReportData) -> Comparison:
    pairs = [_pair("peak", "peak", a.peak, b.peak, a, b)]
    for k in ORDER:
        ma, mb = a.moment(k), b.moment(k)
        if ma is not None and mb is not None and not ("peak" in ma.keys and "peak" in mb.keys):
            pairs.append(_pair(k, LABELS[k], ma, mb))
    kv_key = "kv_sizing" if a.moment("kv_sizing") and b.moment("kv_sizing") else "peak"
    kv_pair = next(p for p in pairs if p.key == kv_key)
    return Comparison(a, b, pairs, kv_pair)
