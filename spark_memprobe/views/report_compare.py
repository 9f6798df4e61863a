"""Two recordings side by side: the ledgers at each run's peak and at the moments both runs have,
the difference explained row by row, and the KV-cache budget difference it predicts.

Causes are named from what the ledgers hold, never guessed:
  - first-touch page-cache ownership: one run's processes map page cache that is charged to
    another cgroup (ledger rule first_touch), so its memory.current lacks pages the other run's
    cgroup is charged for (Documentation/admin-guide/cgroup-v2.rst, Memory Ownership);
  - page cache of named files: per-file bytes from eBPF page-cache ownership, else the resident
    bytes of the target's file mappings (mapped_files events, smaps Rss);
  - every other row (anon, shmem/pinned, kernel, driver memory, GPU) by its own bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from ..ledger.facts import under
from ..ledger.model import Ledger
from .fmt import MISSING
from .report_data import Moment, ReportData
from .report_doc import (HOST_VIEWS, TARGET_VIEWS, Bold, Bullets, Code, Document, Heading, Para, Table, bx, ex,
                         nsamples, signed, ts, verdict_blocks, view_total)

MiB = 1 << 20
ORDER = ["start", "rise", "model_load", "kv_sizing", "gpu_peak", "end"]
LABELS = {"start": "start", "rise": "largest rise", "model_load": "model load", "kv_sizing": "KV-cache sizing",
          "gpu_peak": "GPU peak", "end": "end", "peak": "peak"}
ROW_WHY = {
    "anon": "anonymous memory (heap, stacks): what the processes allocated",
    "page_cache": "page cache charged to the cgroup",
    "shmem": "shmem / tmpfs, CUDA pinned host memory: not reclaimable",
    "kernel": "slab, stacks, page tables",
    "driver_kernel": "kernel memory no memory.stat part names: driver allocations such as UVM managed pages",
    "sock": "socket buffers",
    "unitemised": "per-CPU charge batches and memory.stat not yet flushed",
    "elsewhere": "mapped by the processes but charged to other cgroups (first touch) or shared",
    "gpu_target": "GPU memory of the target's processes (NVML per-process)",
}


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
    explain: str = ""
    sub: bool = False

    @property
    def delta(self) -> Optional[int]:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class Cause:
    kind: str            # "first_touch", "file", "row"
    bytes: int           # how much of the difference it explains (absolute)
    text: str


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


def _first_touch(lg: Ledger) -> tuple[int, str]:
    f = lg.finding("first_touch")
    if f is None:
        return 0, ""
    m = re.search(r"charged to (.+)$", f.title)
    return f.bytes, (m.group(1) if m else "other cgroups")


def _pair(key: str, label: str, a: Moment, b: Moment, da: Optional[ReportData] = None,
          db: Optional[ReportData] = None) -> Pair:
    p = Pair(key, label, a, b)
    la, lb = a.ledger, b.ledger

    def ident(r) -> str:
        # eBPF file rows are numbered per ledger (page_cache.file0, ...): match them by file
        return f"file:{r.label}" if r.key.startswith("page_cache.file") else r.key

    def value(lg: Ledger, m: Moment, idn: str, col: str):
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
        ok_a, va = value(la, a, k, col)
        ok_b, vb = value(lb, b, k, col)
        if not ok_a and not ok_b:
            continue
        p.rows.append(RowDiff(r.key, r.label + (" (in RSS)" if k == "elsewhere" else ""), va if ok_a else None,
                              vb if ok_b else None, ROW_WHY.get(r.key, ""), sub=r.parent is not None))
    p.rows.append(RowDiff("gpu_target", "GPU, target (NVML per-process)", view_total(la, "nvml_procs"),
                          view_total(lb, "nvml_procs"), ROW_WHY["gpu_target"]))
    fa, src_a = _target_files(a, da)
    fb, src_b = _target_files(b, db)
    if fa is not None or fb is not None:
        names = set(fa or {}) | set(fb or {})
        p.files = sorted((FileDiff(n, fa.get(n, 0) if fa is not None else None,
                                   fb.get(n, 0) if fb is not None else None) for n in names),
                         key=lambda x: (-abs(x.delta or 0), x.path))
        p.files_source = src_a or src_b
    p.causes = _causes(p)
    pc = next((r for r in p.rows if r.key == "page_cache"), None)
    if pc is not None and pc.delta:
        pc.explain = _page_cache_text(p, pc)
    return p


def _page_cache_text(p: Pair, pc: RowDiff) -> str:
    bits = [f"page cache charged to the cgroup: A {bx(pc.a)}, B {bx(pc.b)}"]
    for c in p.causes:
        if c.kind in ("first_touch", "file"):
            bits.append(c.text)
    return "; ".join(bits)


def _delta(p: Pair, key: str) -> Optional[int]:
    r = next((x for x in p.rows if x.key == key), None)
    return r.delta if r is not None else None


def _causes(p: Pair) -> list[Cause]:
    out: list[Cause] = []
    cur_a, cur_b = view_total(p.a.ledger, "current"), view_total(p.b.ledger, "current")
    total = None if cur_a is None or cur_b is None else cur_b - cur_a
    pc = next((r for r in p.rows if r.key == "page_cache"), None)
    d_pc = pc.delta if pc is not None else None
    # first-touch ownership: one run maps page cache charged elsewhere, the other does not
    ft_a, own_a = _first_touch(p.a.ledger)
    ft_b, own_b = _first_touch(p.b.ledger)
    shift = ft_b - ft_a
    if d_pc is not None and abs(d_pc) >= 16 * MiB and abs(shift) >= 0.5 * abs(d_pc) and (shift > 0) == (d_pc < 0):
        lower, higher, owner, amount = ("B", "A", own_b, ft_b) if shift > 0 else ("A", "B", own_a, ft_a)
        named = ""
        mm = p.b if shift > 0 else p.a
        resident = {k: v for k, v in (mm.mapped_rss or {}).items() if v}
        maps = mm.inputs.mapped_files or []
        if resident:
            path = max(resident, key=lambda k: (resident[k], k))
            named = f" (the file it maps most of: {path}, {bx(resident[path])} resident)"
        elif maps:
            big = sorted(maps, key=lambda m: (-m.size_bytes, m.path))[0]
            named = f" (its largest mapping: {big.path}, {bx(big.size_bytes)})"
        out.append(Cause("first_touch", min(abs(shift), abs(d_pc)),
                         f"first-touch page-cache ownership: in {lower}, {ex(amount)} of the page cache its "
                         f"processes map{named} is charged to {owner}, the cgroup that read it first, so {lower}'s "
                         f"memory.current does not count pages that {higher}'s does ({signed(d_pc)} of page cache; "
                         f"the processes' RSS still holds them: 'not charged here' "
                         f"{signed(_delta(p, 'elsewhere'))})"))
    # page cache of named files
    if d_pc is not None and abs(d_pc) >= 16 * MiB and p.files:
        same = [f for f in p.files if f.delta and (f.delta > 0) == (d_pc > 0) and abs(f.delta) >= MiB]
        covered = sum(abs(f.delta) for f in same)
        if same and not any(c.kind == "first_touch" for c in out):
            top = same[:3]
            names = ", ".join(f"{f.path} (A {bx(f.a)}, B {bx(f.b)}, {signed(f.delta)})" for f in top)
            named_a = sum(f.a or 0 for f in p.files)
            named_b = sum(f.b or 0 for f in p.files)
            if covered <= 1.1 * abs(d_pc):
                how = f"{min(100, round(100 * covered / abs(d_pc)))} % of the page-cache difference"
            else:
                how = (f"the named files moved by more than the page-cache row ({signed(d_pc)}): they hold "
                       f"{bx(named_a)} of A's {bx(pc.a)} and {bx(named_b)} of B's {bx(pc.b)} page cache, read "
                       f"at most once a second next to each peak")
            out.append(Cause("file", min(covered, abs(d_pc)), f"page cache of {names}: {how} ({p.files_source})"))
    # the other rows ("not charged here" is the RSS side of first touch: folded into that cause)
    ft = any(c.kind == "first_touch" for c in out)
    for r in p.rows:
        if r.key in ("page_cache",) or r.sub or r.delta is None or (ft and r.key == "elsewhere"):
            continue
        if abs(r.delta) < max(16 * MiB, 0.02 * max(abs(total or 0), 1)):
            continue
        out.append(Cause("row", abs(r.delta), f"{r.label}: A {bx(r.a)}, B {bx(r.b)} ({signed(r.delta)}): "
                                              f"{ROW_WHY.get(r.key, '')}"))
    if d_pc is not None and abs(d_pc) >= 16 * MiB and not any(c.kind in ("first_touch", "file") for c in out):
        out.append(Cause("row", abs(d_pc), f"page cache: A {bx(pc.a)}, B {bx(pc.b)} ({signed(d_pc)}); no file "
                                           "was named (record eBPF page-cache ownership or the target's mappings)"))
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


# -- the document ----------------------------------------------------------------------------
def _views_table(p: Pair) -> Table:
    rows = []
    for key, label in TARGET_VIEWS + HOST_VIEWS:
        va, vb = view_total(p.a.ledger, key), view_total(p.b.ledger, key)
        rows.append([label, bx(va), bx(vb), signed(None if va is None or vb is None else vb - va)])
    ca = p.a.ledger.cuda[0].free_bytes if p.a.ledger.cuda else None
    cb = p.b.ledger.cuda[0].free_bytes if p.b.ledger.cuda else None
    rows.append(["CUDA free (model)", bx(ca), bx(cb), signed(None if ca is None or cb is None else cb - ca)])
    return Table(["view", f"A ({ts(p.a.t_s)})", f"B ({ts(p.b.t_s)})", "B - A"], rows, "lrrr")


def _rows_table(p: Pair, explain: bool = True) -> Table:
    rows = []
    for r in p.rows:
        if (r.a in (None, 0) and r.b in (None, 0)) and r.key != "page_cache":
            continue
        label = ("  " if r.sub else "") + r.label
        row = [label, bx(r.a), bx(r.b), signed(r.delta)]
        if explain:
            row.append(r.explain if (r.delta and abs(r.delta) >= MiB) or r.key == "page_cache" else "")
        rows.append(row)
    head = ["kind of memory", "A", "B", "B - A"] + (["what it is, and why it differs"] if explain else [])
    return Table(head, rows, "lrrr" + ("l" if explain else ""),
                 caption="bytes of memory.current by kind (\"not charged here\": bytes in the processes' RSS that "
                         "other cgroups are charged for; GPU: NVML per-process)")


def verdict_compare(c: Comparison) -> list:
    p = c.peak
    ca, cb = view_total(p.a.ledger, "current"), view_total(p.b.ledger, "current")
    out: list = [Heading(2, "Verdict: what differs", "verdict")]
    first: list = [Bold("A"), f" = {c.a.path} ({c.a.target}, {nsamples(c.a.n)}, {c.a.duration_s:.1f} s); ",
                   Bold("B"), f" = {c.b.path} ({c.b.target}, {nsamples(c.b.n)}, {c.b.duration_s:.1f} s). "]
    if ca is not None and cb is not None:
        d = cb - ca
        first += ["At each run's peak, B's memory.current is ", Bold(f"{bx(abs(d))} {'lower' if d < 0 else 'higher'}"),
                  f" than A's (A {ex(ca)} at {ts(p.a.t_s)}, B {ex(cb)} at {ts(p.b.t_s)}; difference {d} B)."]
    else:
        first.append("memory.current was not read in both runs.")
    diffs = []
    for key, label in TARGET_VIEWS[1:] + HOST_VIEWS:
        va, vb = view_total(p.a.ledger, key), view_total(p.b.ledger, key)
        if va is not None and vb is not None and abs(vb - va) >= 16 * MiB:
            diffs.append((abs(vb - va), f"{label} A {bx(va)}, B {bx(vb)} ({signed(vb - va)})"))
    if diffs:
        first.append(" Other views that differ: " + "; ".join(t for _, t in sorted(diffs, key=lambda x: -x[0])[:4])
                     + ".")
    out.append(Para(first, "verdict"))
    if p.causes:
        items = [f"({k}) {x.text}" for k, x in enumerate(p.causes[:4], 1)]
        out.append(Para([Bold("The difference, largest part first: ")] + ["; ".join(items) + "."], "verdict"))
    else:
        out.append(Para(["No row differs by more than 16 MiB at the peaks."], "verdict"))
    out.append(Para(kv_compare_sentence(c), "verdict"))
    both = [x for x in c.a.not_measured if x in c.b.not_measured]
    gone = [f"in both runs: {'; '.join(both)}"] if both else []
    for run, d in (("A", c.a), ("B", c.b)):
        only = [x for x in d.not_measured if x not in both]
        if only:
            gone.append(f"in {run} only: " + "; ".join(only))
    if gone:
        out.append(Para([Bold("Not measured ")] + [" | ".join(gone) + "."], "verdict"))
    return out


def kv_compare_sentence(c: Comparison) -> list:
    p = c.kv_pair
    ka, kb = p.a.ledger.kv, p.b.ledger.kv
    where = "at KV-cache sizing" if p.key == "kv_sizing" else "at the peaks (KV-cache sizing not detected in both)"
    d_cuda = None if ka.kv_from_cuda_free_bytes is None or kb.kv_from_cuda_free_bytes is None else \
        kb.kv_from_cuda_free_bytes - ka.kv_from_cuda_free_bytes
    d_lost = None if ka.lost_bytes is None or kb.lost_bytes is None else kb.lost_bytes - ka.lost_bytes
    if ka.kv_from_cuda_free_bytes is None and kb.kv_from_cuda_free_bytes is None:
        parts: list = [Bold("KV-cache budget: "), f"{where}: CUDA free was not read in either run (no GPU read). "]
    else:
        parts = [Bold("KV-cache budget: "), f"{where}, an engine sizing its cache as {ka.fraction} x cudaMemGetInfo "
                 f"free gets A {bx(ka.kv_from_cuda_free_bytes)}, B {bx(kb.kv_from_cuda_free_bytes)} "
                 f"({signed(d_cuda)} in B). "]
    plat = {c.a.platform, c.b.platform}
    tp_a = next((x for x in ka.parts if x.key == "target_page_cache"), None)
    tp_b = next((x for x in kb.parts if x.key == "target_page_cache"), None)
    if ka.applies or kb.applies:
        parts.append(f"On this integrated host it loses A {bx(ka.lost_bytes)}, B {bx(kb.lost_bytes)} against "
                     f"MemAvailable ({signed(d_lost)} in B).")
    else:
        if plat <= {"discrete", "coherent-numa"}:
            parts.append("On these GPU hosts CUDA free does not depend on page cache, so page cache moves nothing "
                         "here; ")
        else:
            parts.append(f"No integrated GPU here (platform {' / '.join(sorted(plat))}); ")
        parts.append(f"on an integrated UMA host with the same memory the loss would be A {bx(ka.lost_bytes)}, B "
                     f"{bx(kb.lost_bytes)} ({signed(d_lost)} in B, prediction).")
    if tp_a is not None and tp_b is not None:
        parts.append(f" The target's own page cache accounts for A {bx(tp_a.kv_bytes)}, B {bx(tp_b.kv_bytes)} of it "
                     f"({signed(tp_b.kv_bytes - tp_a.kv_bytes)}); page cache charged to other cgroups counts the same "
                     "for MemFree, so who owns it does not change what CUDA free sees.")
    return parts


def build_comparison(c: Comparison) -> Document:
    blocks: list = verdict_compare(c)
    p = c.peak
    blocks.append(Heading(2, "Side by side at each run's peak", "peak"))
    blocks.append(Para([f"A's peak is {ts(p.a.t_s)} ({p.a.label}), B's is {ts(p.b.t_s)} ({p.b.label})."]))
    blocks.append(_views_table(p))
    blocks.append(_rows_table(p))
    if p.files:
        blocks.append(Table(["file", "A", "B", "B - A"],
                            [[Code(f.path), bx(f.a), bx(f.b), signed(f.delta)] for f in p.files[:12]], "lrrr",
                            caption=f"files: {p.files_source}"))
    others = c.pairs[1:]
    blocks.append(Heading(2, "At the moments both runs have", "moments"))
    if not others:
        blocks.append(Para(["The runs share no moment besides the peak."]))
    for q in others:
        blocks.append(Heading(3, f"{q.label}: A {ts(q.a.t_s)}, B {ts(q.b.t_s)}", f"moment-{q.key}"))
        blocks.append(_views_table(q))
        blocks.append(_rows_table(q, explain=False))
        if q.causes:
            blocks.append(Bullets([[x.text] for x in q.causes[:3]]))
    blocks += _kv_blocks(c)
    blocks += _findings_blocks(c)
    blocks += _runs_blocks(c)
    return Document(f"memprobe comparison: {c.a.target} (A) vs {c.b.target} (B)",
                    f"A = {c.a.path} · B = {c.b.path}", blocks)


def _kv_blocks(c: Comparison) -> list:
    p = c.kv_pair
    ka, kb = p.a.ledger.kv, p.b.ledger.kv
    out: list = [Heading(2, f"KV-cache budget ({p.label}: A {ts(p.a.t_s)}, B {ts(p.b.t_s)})", "kv-budget")]
    out.append(Para(kv_compare_sentence(c)))

    def row(label, va, vb):
        return [label, ex(va), ex(vb), signed(None if va is None or vb is None else vb - va)]

    rows = [row("CUDA free (modelled)", ka.cuda_free_bytes, kb.cuda_free_bytes),
            row("MemFree", ka.mem_free_bytes, kb.mem_free_bytes),
            row("MemAvailable", ka.mem_available_bytes, kb.mem_available_bytes),
            row(f"KV cache from CUDA free ({ka.fraction} x)", ka.kv_from_cuda_free_bytes, kb.kv_from_cuda_free_bytes),
            row(f"KV cache from MemAvailable ({ka.fraction} x)", ka.kv_from_available_bytes, kb.kv_from_available_bytes),
            row("lost" + ("" if ka.applies else " (UMA prediction)"), ka.lost_bytes, kb.lost_bytes)]
    pa, pb = {x.key: x for x in ka.parts}, {x.key: x for x in kb.parts}
    for k in list(pa) + [k for k in pb if k not in pa]:
        x = pa.get(k) or pb.get(k)
        rows.append(row(f"  KV part: {x.label}", pa[k].kv_bytes if k in pa else None,
                        pb[k].kv_bytes if k in pb else None))
    out.append(Table(["quantity", "A", "B", "B - A"], rows, "lrrr"))
    return out


def _findings_blocks(c: Comparison) -> list:
    fa = {f.finding.rule: f for f in c.a.findings}
    fb = {f.finding.rule: f for f in c.b.findings}
    rules = sorted(set(fa) | set(fb), key=lambda r: -max(fa[r].finding.bytes if r in fa else 0,
                                                          fb[r].finding.bytes if r in fb else 0))
    out: list = [Heading(2, "Findings in each run", "findings")]
    if not rules:
        out.append(Para(["Neither run raised a finding."]))
        return out
    rows = []
    for r in rules:
        a, b = fa.get(r), fb.get(r)
        va = a.finding.bytes if a else None
        vb = b.finding.bytes if b else None
        rows.append([Code(r), bx(va) if a else "not raised", bx(vb) if b else "not raised",
                     signed((vb or 0) - (va or 0)), (b or a).finding.title])
    out.append(Table(["rule", "A (largest)", "B (largest)", "B - A", "finding"], rows, "lrrrl"))
    return out


def _runs_blocks(c: Comparison) -> list:
    out: list = [Heading(2, "The two runs", "runs")]
    rows = []

    def pr(d: ReportData) -> str:
        if d.probes is None:
            return "off"
        return ", ".join(f"{x.get('name')}{'' if x.get('chosen') else ' (refused)'}" for x in d.probes)

    for label, fn in (("target", lambda d: d.target), ("host", lambda d: d.host.hostname or MISSING),
                      ("kernel", lambda d: d.host.kernel or MISSING),
                      ("driver", lambda d: d.host.driver_version or MISSING), ("platform", lambda d: d.platform),
                      ("samples", lambda d: f"{d.n} over {d.duration_s:.1f} s"), ("eBPF probes", pr),
                      ("KV fraction", lambda d: str(d.kv_fraction))):
        rows.append([label, fn(c.a), fn(c.b)])
    out.append(Table(["", "A", "B"], rows, "lll"))
    for run, d in (("A", c.a), ("B", c.b)):
        out.append(Heading(3, f"Run {run}: {d.path}", f"run-{run.lower()}"))
        for blk in verdict_blocks(d)[1:]:
            out.append(blk)
    return out
