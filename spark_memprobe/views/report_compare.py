"""Two recordings side by side, rendered: the verdict on what differs, the ledgers at each run's
peak and at the moments both runs have, the KV-cache budget, findings and the two runs
(the comparison itself: analysis/compare.py)."""
from __future__ import annotations

from ..analysis.compare import Cause, Comparison, Pair, RowDiff
from ..analysis.report import ReportData
from ..ledger.rules_memcg import NO_OWNER, UNKNOWN_OWNER
from .fmt import MISSING
from .report_doc import (HOST_VIEWS, TARGET_VIEWS, Bold, Bullets, Code, Document, Heading, Para, Table, bx, ex,
                         nsamples, signed, ts, verdict_blocks)

MiB = 1 << 20
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


def cause_text(p: Pair, c: Cause) -> str:
    pc = p.row("page_cache")
    if c.kind == "first_touch":
        ft = c.first_touch
        lower, higher = ft.run, "A" if ft.run == "B" else "B"
        owners = ", ".join(o.name or UNKNOWN_OWNER for o in ft.finding.owners) or NO_OWNER
        named = ""
        if ft.file is not None:
            named = (f" (the file it maps most of: {ft.file}, {bx(ft.file_bytes)} resident)" if ft.resident else
                     f" (its largest mapping: {ft.file}, {bx(ft.file_bytes)})")
        elsewhere = p.row("elsewhere")
        return (f"first-touch page-cache ownership: in {lower}, {ex(ft.finding.bytes)} of the page cache its "
                f"processes map{named} is charged to {owners}, the cgroup that read it first, so {lower}'s "
                f"memory.current does not count pages that {higher}'s does ({signed(pc.delta)} of page cache; "
                f"the processes' RSS still holds them: 'not charged here' "
                f"{signed(elsewhere.delta if elsewhere is not None else None)})")
    if c.kind == "file":
        d_pc = pc.delta
        names = ", ".join(f"{f.path} (A {bx(f.a)}, B {bx(f.b)}, {signed(f.delta)})" for f in c.files)
        if c.covered <= 1.1 * abs(d_pc):
            how = f"{min(100, round(100 * c.covered / abs(d_pc)))} % of the page-cache difference"
        else:
            how = (f"the named files moved by more than the page-cache row ({signed(d_pc)}): they hold "
                   f"{bx(sum(f.a or 0 for f in p.files))} of A's {bx(pc.a)} and {bx(sum(f.b or 0 for f in p.files))} "
                   f"of B's {bx(pc.b)} page cache, read at most once a second next to each peak")
        return f"page cache of {names}: {how} ({p.files_source})"
    r = c.row
    if r.key == "page_cache":
        return (f"page cache: A {bx(r.a)}, B {bx(r.b)} ({signed(r.delta)}); no file was named (record eBPF "
                "page-cache ownership or the target's mappings)")
    return f"{r.label}: A {bx(r.a)}, B {bx(r.b)} ({signed(r.delta)}): {ROW_WHY.get(r.key, '')}"


def row_explain(p: Pair, r: RowDiff) -> str:
    """What a row is; for a page-cache row that differs, why it differs."""
    if r.key != "page_cache" or not r.delta:
        return ROW_WHY.get(r.key, "")
    return "; ".join([f"page cache charged to the cgroup: A {bx(r.a)}, B {bx(r.b)}"] +
                     [cause_text(p, c) for c in p.causes if c.kind in ("first_touch", "file")])


# -- the document ----------------------------------------------------------------------------
def _views_table(p: Pair) -> Table:
    rows = []
    for key, label in TARGET_VIEWS + HOST_VIEWS:
        va, vb = p.a.ledger.total(key), p.b.ledger.total(key)
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
            row.append(row_explain(p, r) if (r.delta and abs(r.delta) >= MiB) or r.key == "page_cache" else "")
        rows.append(row)
    head = ["kind of memory", "A", "B", "B - A"] + (["what it is, and why it differs"] if explain else [])
    return Table(head, rows, "lrrr" + ("l" if explain else ""),
                 caption="bytes of memory.current by kind (\"not charged here\": bytes in the processes' RSS that "
                         "other cgroups are charged for; GPU: NVML per-process)")


def verdict_compare(c: Comparison) -> list:
    p = c.peak
    ca, cb = p.a.ledger.total("current"), p.b.ledger.total("current")
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
        va, vb = p.a.ledger.total(key), p.b.ledger.total(key)
        if va is not None and vb is not None and abs(vb - va) >= 16 * MiB:
            diffs.append((abs(vb - va), f"{label} A {bx(va)}, B {bx(vb)} ({signed(vb - va)})"))
    if diffs:
        first.append(" Other views that differ: " + "; ".join(t for _, t in sorted(diffs, key=lambda x: -x[0])[:4])
                     + ".")
    out.append(Para(first, "verdict"))
    if p.causes:
        items = [f"({k}) {cause_text(p, x)}" for k, x in enumerate(p.causes[:4], 1)]
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
            blocks.append(Bullets([[cause_text(q, x)] for x in q.causes[:3]]))
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
    rules = sorted(set(fa) | set(fb), key=lambda r: (-max(fa[r].finding.bytes if r in fa else 0,
                                                           fb[r].finding.bytes if r in fb else 0), r))
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
