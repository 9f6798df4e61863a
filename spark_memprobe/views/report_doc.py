"""The report as a list of blocks that both renderers (report_md.py, report_html.py) draw, so the
Markdown and the HTML say the same things in the same order.

Inline text is a list of parts: plain str, Bold, Code. Table cells are inline text too. A value
that was not read is shown as fmt.MISSING, never as 0.
"""
from __future__ import annotations

import inspect
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from ..analysis.report import FindingSeen, ReportData
from ..analysis.timeline import LABELS, Moment, Reason
from ..ledger.rules import RULES
from ..ledger.model import Ledger, Row
from .fmt import MISSING, fmt_bytes, sparkline
from .svg import Chart, Line, Mark


# -- blocks ---------------------------------------------------------------------------------
@dataclass
class Bold:
    text: str


@dataclass
class Code:
    text: str


Inline = Union[str, Bold, Code, list]


@dataclass
class Heading:
    level: int
    text: str
    anchor: str


@dataclass
class Para:
    parts: list
    cls: str = ""                   # "verdict", "muted", ...


@dataclass
class Bullets:
    items: list                     # each an inline list
    ordered: bool = False


@dataclass
class Table:
    head: list[str]
    rows: list[list]                # cells: inline
    align: str = ""                 # one char per column: l or r
    caption: str = ""
    row_cls: list[str] = field(default_factory=list)


@dataclass
class ChartBlock:
    chart: Chart
    summary: Table                  # what Markdown shows instead of the picture


@dataclass
class Details:
    summary: str
    blocks: list
    in_markdown: bool = False       # Markdown has no folding: left out unless asked


Block = Union[Heading, Para, Bullets, Table, ChartBlock, Details]


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list


# -- formatting -------------------------------------------------------------------------------
def bx(n: Optional[int]) -> str:
    """Bytes, short: '1.01 GiB'; missing is a dash."""
    return fmt_bytes(n)


def ex(n: Optional[int]) -> str:
    """Bytes, exact as well: '1.01 GiB (1082130432 B)'."""
    return fmt_bytes(n, exact=True)


def signed(n: Optional[int]) -> str:
    """A difference: '+1.01 GiB'."""
    return fmt_bytes(n, sign=True)


def nsamples(n: int) -> str:
    return f"{n} sample" + ("" if n == 1 else "s")


def secs(t: float) -> str:
    return f"{t:.1f} s" if t < 100 else f"{t:.0f} s"


def ts(t: Optional[float]) -> str:
    return MISSING if t is None else "t=" + secs(t)


def pct(part: Optional[int], whole: Optional[int]) -> str:
    if part is None or not whole:
        return ""
    p = 100 * part / whole
    return "under 1 %" if 0 < p < 0.5 else f"{p:.0f} %"


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def rule_doc(rule: str) -> list[str]:
    """The rule's docstring after its title line: which counters overlap, why, and the source."""
    fn = next((r for r in RULES if r.__name__ == rule), None)
    if fn is None or not fn.__doc__:
        return []
    doc = inspect.cleandoc(fn.__doc__)
    paras = [re.sub(r"\s+", " ", p).strip() for p in doc.split("\n\n")[1:]]
    return [p for p in paras if p]


# views of the ledger shown in the report: (column key, label)
TARGET_VIEWS = [("current", "memory.current"), ("working_set", "working set (docker stats)"),
                ("stat_anon", "stat anon"), ("stat_file", "stat file"), ("stat_shmem", "stat shmem"),
                ("stat_kernel", "stat kernel"), ("stat_file_mapped", "stat file_mapped"), ("rss", "RSS sum")]
HOST_VIEWS = [("host_used", "MemTotal - MemAvailable"), ("host_nofree", "MemTotal - MemFree"),
              ("nvml_used", "NVML used"), ("nvml_procs", "NVML target procs"), ("cuda_used", "CUDA used (model)")]
SEV_ORDER = {"critical": 0, "warning": 1, "info": 2}


def cell(lg: Ledger, row: str, col: str):
    """(present, value): present False when the view never counts that row."""
    try:
        r = lg.row(row)
    except StopIteration:
        return False, None
    if col not in r.cells:
        return False, None
    return True, r.cells[col]


# -- the single-run report ----------------------------------------------------------------------
def build_report(d: ReportData) -> Document:
    host = d.host
    sub = (f"{os.path.basename(d.path)} · {nsamples(d.n)} over {d.duration_s:.1f} s"
           + (f" (every {d.interval_s:g} s)" if d.interval_s else "")
           + (f" · recorded {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(d.wall0_ns / 1e9))}"
              if d.wall0_ns else "")
           + f" · host {host.hostname or MISSING}, kernel {host.kernel or MISSING}, platform {d.platform}")
    blocks: list = []
    blocks += verdict_blocks(d)
    if d.engine is not None:        # the engine's own log (analysis/engine_timeline.py) ends the verdict
        blocks += [Para([Bold("Engine log: "), " ".join(d.engine.sentences)], "verdict")]
        blocks += [Para([Bold("Remedy: "), r], "verdict") for r in d.engine.remedies]
    blocks += findings_blocks(d)
    blocks += moments_blocks(d)
    blocks += timeline_blocks(d)
    blocks += files_blocks(d)
    blocks += cuda_blocks(d)
    blocks += inventory_blocks(d)
    return Document(f"memprobe report: {d.target}", sub, blocks)


def _peak_rows(lg: Ledger, col: str = "current", floor: int = 1 << 20) -> list[tuple[Row, int]]:
    out = []
    for r in lg.rows:
        if r.parent is None and col in r.cells and r.cells[col] is not None and r.cells[col] >= floor:
            out.append((r, r.cells[col]))
    return sorted(out, key=lambda x: -x[1])


def attribution(d: ReportData) -> tuple[str, str]:
    """How well files and owners are named, from what was recorded; where the first-touch finding
    is less sure than that, the sentence says so, so the paragraph and the finding never disagree."""
    ft = next((fs.finding for fs in d.findings if fs.finding.rule == "first_touch"), None)
    if d.probes is not None and any(m.inputs.page_cache is not None for m in d.moments):
        why = "eBPF page-cache ownership names each file and the cgroup charged for it"
        if ft is not None and ft.confidence != "high":
            why += (f"; the first-touch finding is {ft.confidence} confidence: the pages it counts are not among "
                    "those eBPF saw being cached (cached before the probes started), so " +
                    ("its owners come from other cgroups' counters" if ft.owners else "it names no owner"))
        return "high", why
    if d.files_source or any(m.inputs.others is not None for m in d.moments):
        return "medium", ("files come from the target's mappings and owners from other cgroups' counters "
                          "(eBPF page-cache ownership was not recorded)")
    return "low", "files and owners were not recorded: page cache is counted, not named"


# What fixes each finding, for the verdict's first sentence. The kernel rules (ledger/rules_kernel.py)
# carry their own as an evidence line starting "remedy:", with the host's numbers in it.
REMEDIES = {
    "kv_cache_thief": "size the KV cache from MemAvailable instead of CUDA free, or drop the page cache before "
                      "the engine starts (sync; echo 1 > /proc/sys/vm/drop_caches)",
    "limit_cannot_hold": "set memory.max to memory.current plus the GPU allocations, or cap the engine's GPU "
                         "memory (vLLM --gpu-memory-utilization, llama.cpp -ngl)",
    "uma_tool_sum": "read host used alone on UMA (MemTotal - MemAvailable): GPU used is already inside it",
    "gpu_uncharged": "budget GPU memory apart from memory.max: the engine's own cap, or MIG / MPS limits on a "
                     "discrete card",
    "managed_double_view": "count memory.current once and never add memory.stat kernel to file_mapped or RssFile",
    "driver_kernel_memory": "free the managed (cudaMallocManaged) allocations or end the process that made them: "
                            "reclaim cannot free driver kernel memory",
    "pinned_shmem": "free pinned host buffers (cudaFreeHost) or leave room for them in memory.max: reclaim cannot "
                    "drop them",
    "first_touch": "count those pages in the owner's cgroup, or read the files first from the target so that it "
                   "owns them",
    "charges_without_processes": "remove the cgroup, or reclaim its charges (memory.reclaim on cgroup v2, "
                                 "memory.force_empty on v1)",
}


def remedy(f) -> Optional[str]:
    """The action that fixes finding f: its own "remedy:" evidence line, else REMEDIES."""
    own = next((e for e in f.evidence if e.startswith("remedy: ")), None)
    return own[len("remedy: "):].rstrip(".") if own else REMEDIES.get(f.rule)


def cause_sentence(d: ReportData) -> list:
    """One sentence: what the top-ranked finding says happened, and what fixes it."""
    top = d.findings[0]
    f = top.finding
    what = f.title[:1].upper() + f.title[1:]
    fix = remedy(f)
    return [Bold(what), f" (largest finding, {f.rule}, at {ts(top.t_s)})"] + \
        (["; ", Bold("remedy:"), f" {fix}."] if fix else ["."])


def verdict_blocks(d: ReportData) -> list:
    pk = d.peak
    lg = pk.ledger
    out: list = [Heading(2, "Verdict", "verdict")]
    if d.findings:
        out.append(Para(cause_sentence(d), "verdict"))
    cur = lg.total("current")
    # what was seen
    seen: list = [Bold(d.target), f" on {d.host.hostname or 'an unnamed host'} (platform: {d.platform}): "
                  f"{nsamples(d.n)} over {d.duration_s:.1f} s. "]
    if cur is not None:
        nproc = len(pk.sample.processes)
        seen += [f"At the peak ({ts(pk.t_s)}, {pk.label}) the cgroup was charged ", Bold(ex(cur)),
                 " (memory.current); at the same moment docker stats / kubelet would show "
                 f"{bx(lg.total('working_set'))} (working set), ps / top {bx(lg.total('rss'))} "
                 f"(RSS sum of {nproc} process{'es' if nproc != 1 else ''}), free "
                 f"{bx(lg.total('host_used'))} used on the host"]
    else:
        seen += [f"No target cgroup was read; at the host's peak ({ts(pk.t_s)}) free showed ",
                 Bold(ex(lg.total("host_used"))), " used"]
    nv = lg.total("nvml_used")
    if "nvml_used" in d.series:
        seen.append(f", nvidia-smi {bx(nv)} used on the GPU"
                    + (f" ({bx(lg.total('nvml_procs'))} by the target's processes)" if nv is not None else
                       " (NVML device memory not available on this platform)"))
    seen.append(".")
    out.append(Para(seen, "verdict"))

    # what explains it
    if cur is not None:
        parts = []
        for r, v in _peak_rows(lg):
            extra = ""
            if r.key == "page_cache":
                ok, ina = cell(lg, "page_cache.inactive", "current")
                if ok and ina:
                    extra = f"; {bx(ina)} of it inactive: reclaimable, and left out of docker stats' working set"
            elif r.key == "shmem":
                extra = "; not reclaimable: CUDA pinned host memory lands here"
            elif r.key == "driver_kernel":
                extra = "; driver allocations such as UVM managed pages"
            parts.append(f"{r.label} {ex(v)} ({pct(v, cur)}{extra})")
        expl: list = ["What memory.current holds at the peak: " + ("; ".join(parts) if parts else
                                                                    "nothing above 1 MiB") + "."]
        gp = d.moment("gpu_peak") or pk
        g = gp.ledger.total("nvml_procs")
        if g:
            uma = d.platform == "integrated"
            expl.append(f" Beyond the cgroup: {ex(g)} of GPU memory of the target's processes (NVML per-process, "
                        f"highest at {ts(gp.t_s)}) is charged to no memory cgroup"
                        + ("; on this integrated host it is system RAM that memory.max does not limit." if uma
                           else "; on this discrete card it is the card's own memory, which memcg never limits."))
        rise = d.moment("rise")
        if rise is not None and rise.before is not None:
            bi, bt, blg = rise.before
            top = rise.ledger.total("current")
            low = blg.total("current")
            moved = []
            for r in rise.ledger.rows:
                if r.parent is not None or "current" not in r.cells:
                    continue
                ok, v0 = cell(blg, r.key, "current")
                v1 = r.cells["current"]
                if ok and v0 is not None and v1 is not None and abs(v1 - v0) >= 16 << 20:
                    moved.append((abs(v1 - v0), f"{r.label} {signed(v1 - v0)} ({v1 - v0} B)"))
            if top is not None and low is not None:
                expl.append(f" The largest rise of memory.current, {signed(top - low)} ({top - low} B) from "
                            f"{ts(bt)} to {ts(rise.t_s)}, is " +
                            (", ".join(t for _, t in sorted(moved, key=lambda x: -x[0])) if moved else
                             "spread over rows that each moved less than 16 MiB") + ".")
        ok, elsewhere = cell(lg, "elsewhere", "rss")
        if ok and elsewhere and elsewhere >= 16 << 20:
            expl.append(f" The target's processes also map {bx(elsewhere)} that is charged to other cgroups "
                        "(first touch) or counted once per process (shared pages).")
        out.append(Para(expl, "verdict"))

    # findings
    if d.findings:
        items: list = []
        for k, fs in enumerate(d.findings[:4], 1):
            f = fs.finding
            items.append(f"({k}, {f.severity}) {f.title}: {ex(f.bytes)} at {ts(fs.t_s)}")
        more = len(d.findings) - 4
        out.append(Para([Bold("Findings, largest first: "), "; ".join(items)
                         + (f"; {more} more below." if more > 0 else ".")], "verdict"))
    else:
        out.append(Para([Bold("No rule raised a finding"), f" in the {d.scanned} samples examined."], "verdict"))
    # first touch: say whose page cache it is, in one sentence
    ft = next((fs for fs in d.findings if fs.finding.rule == "first_touch"), None)
    if ft is not None:
        out.append(Para([first_touch_sentence(ft, d)], "verdict"))

    # KV budget
    out.append(Para(kv_sentence(d), "verdict"))

    # confidence and what was not measured
    level, why = attribution(d)
    conf: list = [Bold("Confidence: "), "high for the byte counts (kernel and NVML counters read at every sample; "
                  "memory.stat lags memory.current by per-CPU batches); ", Bold(level),
                  f" for naming files and owners: {why}."]
    out.append(Para(conf, "verdict"))
    if d.not_measured:
        out.append(Para([Bold("Not measured: ")] + ["; ".join(d.not_measured) + "."], "verdict"))
    if d.stopped:
        out.append(Para([Bold("The recording stopped early: "), d.stopped + "."], "verdict"))
    return out


def first_touch_sentence(ft: FindingSeen, d: ReportData) -> str:
    f = ft.finding
    mapped = (ft.inputs.mapped_files if ft.inputs is not None else None) or []
    biggest = sorted(mapped, key=lambda x: -x.size_bytes)[:1]
    s = f"First-touch ownership: {f.title} (at {ts(ft.t_s)}, confidence {f.confidence})."
    others = {o.path: o for o in (ft.inputs.others if ft.inputs is not None else None) or []}
    for owner in f.owners:
        o = others.get(owner.name)
        if o is not None and o.procs == []:
            s += f" {owner.name} holds {ex((o.stat or {}).get('file'))} of page cache and runs no process of its own."
    if biggest:
        s += f" The largest file the target maps is {biggest[0].path}, a mapping of {ex(biggest[0].size_bytes)}."
    return s


def kv_sentence(d: ReportData) -> list:
    m = d.moment("kv_sizing")
    where = "At KV-cache sizing"
    if m is None:
        m = d.peak
        where = "KV-cache sizing was not detected (it needs two large rises of GPU memory); at the peak"
    kv = m.ledger.kv
    rule = next((r for r in m.ledger.rules if r.rule == "kv_cache_thief"), None)
    if kv.kv_from_cuda_free_bytes is None:
        parts: list = [Bold("KV-cache budget: "), f"{where} ({ts(m.t_s)}) CUDA free was not read (no GPU read), "
                       f"so the budget an engine would get is unknown; from MemAvailable it would get "
                       f"{bx(kv.kv_from_available_bytes)} at fraction {kv.fraction}. "]
    else:
        parts = [Bold("KV-cache budget: "), f"{where} ({ts(m.t_s)}) an engine that sizes its cache as "
                 f"{kv.fraction} x cudaMemGetInfo free gets {ex(kv.kv_from_cuda_free_bytes)}; from MemAvailable "
                 f"it would get {bx(kv.kv_from_available_bytes)}. "]
    if kv.applies:
        parts.append(f"On this integrated host CUDA free is MemFree, so it loses {ex(kv.lost_bytes)}")
        tp = next((p for p in kv.parts if p.key == "target_page_cache"), None)
        if tp is not None:
            parts.append(f", {ex(tp.kv_bytes)} of it because of the target's own page cache ({bx(tp.bytes)})")
        parts.append(".")
    else:
        reason = rule.reason if rule is not None and rule.status == "silent" else kv.note
        parts.append(f"The KV-cache rule is silent here ({reason}). Prediction for an integrated UMA host with "
                     f"the same memory: {ex(kv.lost_bytes)} lost"
                     + (f" (the target's page cache accounts for {bx(next(p.kv_bytes for p in kv.parts if p.key == 'target_page_cache'))})"
                        if any(p.key == "target_page_cache" for p in kv.parts) else "") + ".")
    return parts


def findings_blocks(d: ReportData) -> list:
    out: list = [Heading(2, "Findings", "findings")]
    if not d.findings:
        out.append(Para([f"No rule raised a finding in the {d.scanned} samples examined "
                         f"({'every sample' if d.scanned == d.n else 'moments, steps and an even spread'})."]))
    else:
        out.append(Para([f"Ranked by bytes, each at the sample where it was largest; {d.scanned} of {d.n} samples "
                         f"examined ({'every sample' if d.scanned == d.n else 'the moments, every step in a view, and an even spread'})."]))
        rows, cls = [], []
        for k, fs in enumerate(d.findings, 1):
            f = fs.finding
            amount = ex(f.bytes) if f.bytes_low is None or f.bytes_low == f.bytes else \
                f"{ex(f.bytes)}, at least {bx(f.bytes_low)}"
            rows.append([str(k), amount, f.severity, f.confidence, [f.title, " (", Code(f.rule), ")"],
                         f"{ts(fs.t_s)}" + (f" ({fs.moment})" if fs.moment else ""),
                         f"{fs.raised} of {fs.scanned}"])
            cls.append(f.severity)
        out.append(Table(["#", "bytes", "severity", "confidence", "finding", "largest at", "raised in"], rows,
                         "rrllllr", row_cls=cls))
        for k, fs in enumerate(d.findings, 1):
            f = fs.finding
            out.append(Heading(3, f"{k}. {f.title}", f"finding-{k}-{f.rule}"))
            line: list = [Bold(ex(f.bytes))]
            if f.bytes_low is not None and f.bytes_low != f.bytes:
                line.append(f" (proven at least {ex(f.bytes_low)})")
            line.append(f" · {f.severity} · confidence {f.confidence} · rule ")
            line.append(Code(f.rule))
            line.append(f" · largest at {ts(fs.t_s)} (sample {fs.index})"
                        f" · raised in {fs.raised} of {fs.scanned} samples examined, {ts(fs.first_s)} to {ts(fs.last_s)}")
            out.append(Para(line))
            out.append(Para([Bold("Evidence")]))
            out.append(Bullets([[e] for e in f.evidence]))
            mech = rule_doc(f.rule)
            if mech:
                out.append(Para([Bold("Mechanism: ")] + [" ".join(mech)]))
            out.append(Para([Bold("Sources: "), "; ".join(f.sources)]))
    pk = d.peak
    rows = []
    raised = {fs.finding.rule: fs for fs in d.findings}
    for r in pk.ledger.rules:
        fs = raised.get(r.rule)
        rows.append([Code(r.rule), r.status, r.reason or ("see Findings" if r.status == "raised" else ""),
                     f"{fs.raised} of {fs.scanned}" if fs else f"0 of {d.scanned}"])
    out.append(Heading(3, "Every rule at the peak", "rules"))
    out.append(Table(["rule", f"status at the peak ({ts(pk.t_s)})", "why", "raised over the run"], rows, "llll"))
    return out


def _why(r: Reason, times: list[float]) -> str:
    if r.key == "model_load":
        return (f"end of the first large rise of {r.series} ({signed(r.rise)} from {ts(times[r.before])} to "
                f"{secs(times[r.top])})")
    if r.key == "kv_sizing":
        return (f"last sample before the last large rise of {r.series} ({signed(r.rise)} at "
                f"{ts(times[r.before + 1])}): where an engine that sizes its KV cache from cudaMemGetInfo read "
                f"CUDA free")
    if r.key == "rise":
        return (f"top of the largest rise of {r.series} ({signed(r.rise)} from {ts(times[r.before])} to "
                f"{secs(times[r.top])}): a file read, a model load, an allocation")
    if r.key in ("peak", "gpu_peak"):
        return f"highest {r.series} of the run"
    if r.key == "trigger":                 # a flight recorder's trigger: its sentence (analysis/flight.py)
        return r.series
    return {"start": "first sample", "end": "last sample"}[r.key]


def moment_why(m: Moment, times: list[float]) -> str:
    """How a moment was found, in words."""
    return "; ".join(f"{LABELS[r.key]}: {_why(r, times)}" for r in m.why)


def _moment_head(m: Moment) -> str:
    return f"{m.label} ({ts(m.t_s)})"


def moments_blocks(d: ReportData) -> list:
    out: list = [Heading(2, "The ledger at the moments that matter", "moments")]
    out.append(Table(["moment", "time", "sample", "how it was found"],
                     [[Bold(m.label), ts(m.t_s), str(m.index), moment_why(m, d.times)] for m in d.moments], "llrl"))
    if not d.moment("kv_sizing"):
        out.append(Para(["KV-cache sizing was not detected: it is taken as the sample before the last large rise "
                         "of the target's GPU memory (NVML per-process), and needs two such rises."], "muted"))
    heads = ["view"] + [_moment_head(m) for m in d.moments]
    rows = []
    for key, label in TARGET_VIEWS + HOST_VIEWS:
        rows.append([label] + [bx(m.ledger.total(key)) for m in d.moments])
    rows.append(["CUDA free (model)"] + [bx(m.ledger.cuda[0].free_bytes) if m.ledger.cuda else MISSING
                                         for m in d.moments])
    rows.append([f"KV cache from CUDA free (x{d.kv_fraction})"] +
                [bx(m.ledger.kv.kv_from_cuda_free_bytes) for m in d.moments])
    rows.append(["KV lost vs MemAvailable" + (" (UMA prediction)" if d.platform != "integrated" else "")] +
                [bx(m.ledger.kv.lost_bytes) for m in d.moments])
    out.append(Heading(3, "What each view showed", "views-at-moments"))
    out.append(Table(heads, rows, "l" + "r" * len(d.moments)))
    # memory.current by kind
    # rows of every moment, in ledger order: top-level rows in the order the ledger gives them,
    # each followed by its sub-rows. eBPF file rows are numbered per ledger (page_cache.file0, ...):
    # they are matched by file name, and a file with no row at a moment shows as not attributed.
    def ident(r: Row) -> str:
        return f"file:{r.label}" if r.key.startswith("page_cache.file") else r.key

    tops, subs, proto = [], {}, {}
    for m in d.moments:
        for r in m.ledger.rows:
            if "current" not in r.cells:
                continue
            i = ident(r)
            proto.setdefault(i, r)
            if r.parent is None:
                if i not in tops:
                    tops.append(i)
            elif i not in subs.setdefault(r.parent, []):
                subs[r.parent].append(i)
    rows = []
    for i in [k for t in tops for k in [t] + subs.get(t, [])]:
        r = proto[i]
        vals = []
        for m in d.moments:
            x = next((y for y in m.ledger.rows if ident(y) == i), None)
            if x is None or "current" not in x.cells:
                vals.append(MISSING if i.startswith("file:") else "")
            else:
                vals.append(bx(x.cells["current"]))
        if all(v in ("", "0 B", MISSING) for v in vals):
            continue
        rows.append([("  " if r.parent else "") + r.label + (" (est.)" if r.estimate and "(est.)" not in r.label
                                                               else "")] + vals)
    gpu = ["GPU, target (NVML per-process)"] + [bx(m.ledger.total("nvml_procs")) for m in d.moments]
    rows.append(gpu)
    out.append(Heading(3, "memory.current by kind of memory", "current-by-kind"))
    out.append(Table(["kind of memory"] + [_moment_head(m) for m in d.moments], rows, "l" + "r" * len(d.moments)))
    # the full ledger at the peak; other moments folded (HTML only)
    pk = d.peak
    out.append(Heading(3, f"The full ledger at the peak ({ts(pk.t_s)})", "ledger-peak"))
    out += ledger_tables(pk.ledger)
    for m in d.moments:
        if m is pk:
            continue
        out.append(Details(f"The full ledger at {_moment_head(m)}", ledger_tables(m.ledger)))
    out += mem_available_blocks(d)
    out += kv_blocks(d)
    return out


# MemAvailable's terms as si_mem_available adds them: (label, MemAvailableParts field)
AVAIL_TERMS = [("free pages (MemFree)", "free_bytes"),
               ("- kernel reserve (high watermarks + lowmem reserves)", "reserve_bytes"),
               ("+ page cache (Active(file) + Inactive(file))", "page_cache_bytes"),
               ("- page cache kept (half of it, at most the low watermarks)", "page_cache_kept_bytes"),
               ("+ reclaimable kernel memory (KReclaimable)", "reclaimable_kernel_bytes"),
               ("- reclaimable kernel memory kept (likewise)", "reclaimable_kernel_kept_bytes")]


def mem_available_blocks(d: ReportData) -> list:
    """MemAvailable term by term and the free memory in 2 MiB blocks at each moment; nothing when
    the recording has no page-allocator state (recorded before issue 24, or zoneinfo unreadable)."""
    ms = d.moments
    if all(m.ledger.mem_available is None and m.ledger.free_in_2mib_blocks_bytes is None for m in ms):
        return []
    out: list = [Heading(3, "MemAvailable term by term, and free memory in 2 MiB blocks", "mem-available"),
                 Para(["The kernel computes MemAvailable (", Code("mm/show_mem.c si_mem_available"), ") from the "
                       "free pages less the zone reserves, which ", Code("vm.min_free_kbytes"), " raises, plus the "
                       "page cache and reclaimable kernel memory less what it assumes must stay. A GPU driver's "
                       "large allocations need free blocks of 2 MiB (", Code("/proc/buddyinfo"), "): free memory in "
                       "smaller blocks does not serve them. ", *_avail_peak(d.peak), "."])]
    avail = [m.ledger.mem_available for m in ms]
    rows = [[label] + [MISSING if a is None else bx(getattr(a, key)) for a in avail] for label, key in AVAIL_TERMS]
    rows.append([Bold("= MemAvailable by the formula")] + [Bold(MISSING if a is None else bx(a.computed_bytes))
                                                           for a in avail])
    rows.append(["MemAvailable as the kernel printed it"] + [MISSING if a is None else bx(a.kernel_bytes)
                                                               for a in avail])
    rows.append(["kernel - formula"] + [MISSING if a is None or a.difference_bytes is None else
                                        signed(a.difference_bytes) for a in avail])
    rows.append(["free in blocks of 2 MiB or more"] + [bx(m.ledger.free_in_2mib_blocks_bytes) for m in ms])
    out.append(Table(["term"] + [_moment_head(m) for m in ms], rows, "l" + "r" * len(ms),
                     caption="the page allocator's state is read about once a second: a moment uses the last "
                             "reading before it"))
    return out


def _avail_peak(m: Moment) -> list:
    lg, a = m.ledger, m.ledger.mem_available
    head = [f"At the peak ({ts(m.t_s)}): "]
    huge = [Bold(ex(lg.free_in_2mib_blocks_bytes)), " of the free memory lies in blocks of 2 MiB or more"]
    if a is None:
        return head + huge + [" (MemAvailable was not taken apart: zoneinfo or a meminfo field was missing)"]
    return head + ["a kernel reserve of ", Bold(ex(a.reserve_bytes)), " that MemAvailable leaves out; "] + huge + \
        [f" (MemFree {bx(a.free_bytes)})"]


def ledger_tables(lg: Ledger) -> list:
    out: list = []
    for title, cols in (("target views", TARGET_VIEWS), ("host and GPU views", HOST_VIEWS)):
        keys = [k for k, _ in cols]
        rows = [r for r in lg.rows if any(k in r.cells for k in keys)]
        if not rows:
            continue
        body = []
        for r in rows:
            label = ("  " if r.parent else "") + r.label
            body.append([label] + [bx(r.cells[k]) if k in r.cells else "" for k in keys])
        body.append([Bold("view shows")] + [Bold(bx(lg.total(k))) for k in keys])
        out.append(Table(["kind of memory"] + [lbl for _, lbl in cols], body, "l" + "r" * len(keys),
                         caption=f"{title}: bytes each view counts, by kind of memory (blank: the view never counts "
                                 f"that kind; {MISSING}: not read; est.: modelled)"))
    return out


def kv_blocks(d: ReportData) -> list:
    m = d.moment("kv_sizing") or d.peak
    kv = m.ledger.kv
    out: list = [Heading(3, f"KV-cache budget at {_moment_head(m)}", "kv-budget")]
    rule = next((r for r in m.ledger.rules if r.rule == "kv_cache_thief"), None)
    head = ("applies: CUDA free follows MemFree on this integrated host" if kv.applies else
            f"PREDICTION only: {kv.note}")
    out.append(Para([Bold(f"fraction {kv.fraction}"), f", GPU {kv.gpu_index if kv.gpu_index is not None else MISSING}; "
                     + head + ". Rule ", Code("kv_cache_thief"), f": {rule.status if rule else MISSING}"
                     + (f" ({rule.reason})" if rule is not None and rule.reason else "") + "."]))
    rows = [["CUDA free (modelled)", ex(kv.cuda_free_bytes)], ["MemFree", ex(kv.mem_free_bytes)],
            ["MemAvailable", ex(kv.mem_available_bytes)],
            [f"KV cache from CUDA free ({kv.fraction} x)", ex(kv.kv_from_cuda_free_bytes)],
            [f"KV cache from MemAvailable ({kv.fraction} x)", ex(kv.kv_from_available_bytes)],
            ["lost" + ("" if kv.applies else " (UMA prediction)"), ex(kv.lost_bytes)]]
    out.append(Table(["quantity", "bytes"], rows, "lr"))
    if kv.parts:
        out.append(Table(["part of MemAvailable - " + ("CUDA free" if kv.applies else "MemFree"), "bytes", "KV bytes"],
                         [[p.label, ex(p.bytes), ex(p.kv_bytes)] for p in kv.parts], "lrr",
                         caption="mm/show_mem.c si_mem_available: what MemAvailable adds on top of MemFree"))
    return out


def _series_lines(d: ReportData, keys: list[tuple[str, bool]]) -> list[Line]:
    out = []
    for k, dashed in keys:
        s = d.series.get(k)
        if s is None:
            continue
        out.append(Line(s.label, s.times or d.times, s.values, dashed=dashed, title=s.title))
    return out


def _summary(d: ReportData, lines: list[Line]) -> Table:
    rows = []
    for ln in lines:
        vals = [v for v in ln.ys if v is not None]
        if vals:
            imax = max(range(len(ln.ys)), key=lambda i: ln.ys[i] if ln.ys[i] is not None else float("-inf"))
            first = next(v for v in ln.ys if v is not None)
            last = next(v for v in reversed(ln.ys) if v is not None)
            rows.append([ln.label, bx(first), bx(min(vals)), f"{bx(ln.ys[imax])} at {ts(ln.xs[imax])}", bx(last),
                         Code(sparkline(ln.ys))])
        else:
            rows.append([ln.label, MISSING, MISSING, MISSING, MISSING, "not read"])
    return Table(["series", "first", "min", "max", "last", "shape"], rows, "lrrrrl")


def timeline_blocks(d: ReportData) -> list:
    out: list = [Heading(2, "Timelines", "timelines")]
    marks = [Mark(m.t_s, m.label, m.kind) for m in d.markers]
    out.append(Para(["Numbered dashed lines mark the moments and events listed below the charts. "
                     "A gap in a line is a value that was not read."], "muted"))
    charts = [
        ("The target cgroup", [("current", False), ("current_burst", True), ("working_set", True), ("anon", False), ("file", False),
                               ("shmem", False), ("kernel", False), ("file_mapped", True)]),
        ("The host (/proc/meminfo)", [("mem_total", True), ("mem_available", False), ("mem_free", False),
                                      ("host_used", False)]),
        ("The GPU (NVML) and CUDA free", [("nvml_used", False), ("nvml_target", False), ("cuda_free", True),
                                          ("cuda_device", False)]),
    ]
    for title, keys in charts:
        lines = _series_lines(d, keys)
        if not lines:
            out.append(Para([Bold(title + ": "), "not read in this recording."]))
            continue
        out.append(ChartBlock(Chart(title, lines, marks), _summary(d, lines)))
    if d.cuda_kinds:
        lines = [Line(s.label, s.times, s.values, title=s.title) for s in d.cuda_kinds.values()]
        out.append(ChartBlock(Chart("CUDA allocations of the target by kind (eBPF uprobes, live bytes)", lines, marks),
                              _summary(d, lines)))
    else:
        out.append(Para([Bold("CUDA allocations by kind: "), "not recorded (needs the eBPF CUDA uprobes)."]))
    if d.markers:
        out.append(Table(["#", "time", "event"], [[str(k), ts(m.t_s), m.label] for k, m in enumerate(d.markers, 1)],
                         "rrl", caption="marked on the charts"))
    return out


def files_blocks(d: ReportData) -> list:
    out: list = [Heading(2, "Top files in the page cache", "files")]
    if not d.files:
        out.append(Para(["No file was named: " + ("eBPF page-cache ownership and the target's file mappings were "
                                                   "not recorded." if not d.files_source else "none found.")]))
        return out
    out.append(Para([f"Source: {d.files_source}."], "muted"))
    if d.files[0].owner is not None or (d.files_source or "").startswith("eBPF"):
        rows = [[Code(f.path), ex(f.bytes), f.owner or "unknown (cached before the probes started)",
                 "yes" if f.owner_is_target else ("no" if f.owner_is_target is False else MISSING),
                 (bx(f.mapping_bytes) + " mapped") if f.mapped_by_target else
                 ("no" if f.mapped_by_target is False else MISSING + " (mappings not recorded)")] for f in d.files]
        out.append(Table(["file", "page cache", "charged to", "the target?", "mapped by the target"], rows, "lrlll"))
    else:
        rows = [[Code(f.path), ex(f.bytes) if f.bytes is not None else MISSING + " (maps only)",
                 bx(f.mapping_bytes), ", ".join(map(str, sorted(set(f.pids))))] for f in d.files]
        out.append(Table(["file", "resident in the target's mappings", "mapping size", "pids"], rows, "lrrl"))
    return out


def cuda_blocks(d: ReportData) -> list:
    out: list = []
    have = any(m.inputs.cuda_bytes is not None for m in d.moments)
    if not have and not d.cuda_calls:
        return out
    out.append(Heading(2, "GPU memory by kind (eBPF CUDA uprobes)", "cuda"))
    if not d.cuda_calls and not any(m.inputs.cuda_bytes for m in d.moments):
        out.append(Para(["The CUDA uprobes were on, and saw no allocation by the target's processes "
                         "(no libcuda.so.1 mapped by them, or no call)."]))
        return out
    if have:
        kinds = sorted({k for m in d.moments for k in (m.inputs.cuda_bytes or {})})
        rows = []
        for k in kinds:
            rows.append([f"CUDA {k}"] + [bx((m.inputs.cuda_bytes or {}).get(k, 0)) if m.inputs.cuda_bytes is not None
                                         else MISSING for m in d.moments])
        dev = []
        for m in d.moments:
            cb = m.inputs.cuda_bytes
            dev.append(bx(sum(v for k, v in cb.items() if k in ("device", "vmm", "pool"))) if cb is not None else MISSING)
        rows.append([Bold("device + vmm + pool")] + dev)
        rows.append(["NVML per-process (target)"] + [bx(m.ledger.total("nvml_procs")) for m in d.moments])
        rows.append(["NVML device used"] + [bx(m.ledger.total("nvml_used")) for m in d.moments])
        gap = []
        for m in d.moments:
            cb, nv = m.inputs.cuda_bytes, m.ledger.total("nvml_procs")
            if cb is None or nv is None:
                gap.append(MISSING)
                continue
            e = sum(v for k, v in cb.items() if k in ("device", "vmm", "pool"))
            gap.append(f"{signed(nv - e)}" + (f" ({100 * (nv - e) / nv:.1f} %)" if nv else ""))
        rows.append(["NVML per-process - eBPF device (context, allocator slack)"] + gap)
        out.append(Table(["kind"] + [_moment_head(m) for m in d.moments], rows, "l" + "r" * len(d.moments),
                         caption="live bytes of the target's processes through the hooked driver entry points; NVML "
                                 "also counts the CUDA context and allocator overhead"))
    if d.cuda_calls:
        rows = [[ts(c.t_s), str(c.pid), Code(c.func), c.kind, ex(c.size_bytes),
                 "ok" if c.result == 0 else f"CUresult {c.result}"] for c in d.cuda_calls]
        out.append(Table(["time", "pid", "call", "kind", "bytes", "result"], rows, "rrllrl",
                         caption=f"largest allocation calls of the target's processes; recorded: "
                                 f"{d.cuda_calls_total['calls']} calls, {d.cuda_calls_total['allocations']} "
                                 f"allocations, {d.cuda_calls_total['frees']} frees, "
                                 f"{d.cuda_calls_total['failed']} failed"))
    return out


def inventory_blocks(d: ReportData) -> list:
    h = d.host
    out: list = [Heading(2, "Host, kernel, driver, platform and probes", "inventory")]
    rows = [["hostname", h.hostname or MISSING], ["kernel", h.kernel or MISSING], ["machine", h.machine or MISSING],
            ["page size", str(h.page_size) if h.page_size else MISSING], ["cgroup layout", h.cgroup_layout or MISSING],
            ["NVIDIA driver", h.driver_version or MISSING], ["NVML", h.nvml_version or MISSING],
            ["CUDA driver API", str(h.cuda_driver_version) if h.cuda_driver_version else MISSING],
            ["platform", d.platform + (": " + "; ".join(h.platform.evidence) if h.platform and h.platform.evidence
                                       else "")]]
    for n in h.notes:
        rows.append(["host note", n])
    out.append(Table(["", ""], rows, "ll", caption="host"))
    if h.gpus:
        out.append(Table(["GPU", "name", "memory", "addressing", "C2C", "NUMA node", "integrated", "UUID"],
                         [[str(g.index), g.name or MISSING, bx(g.memory_total_bytes), g.addressing_mode or MISSING,
                           _yn(g.c2c_enabled), MISSING if g.numa_node is None else str(g.numa_node),
                           _yn(g.integrated), g.uuid or MISSING] for g in h.gpus], "rlrlllll", caption="GPUs"))
    if d.probes is None:
        out.append(Para([Bold("eBPF probes: "), "off for this recording."]))
    else:
        out.append(Table(["probe", "mechanism", "chosen", "why", "on"],
                         [[p.get("name", "?"), Code(p.get("mechanism", "?")), "yes" if p.get("chosen") else "no",
                           p.get("reason") or "", p.get("target") or ""] for p in d.probes], "lllll",
                         caption="eBPF probes"))
    if d.capabilities is not None:
        out.append(Table(["check", "ok", "found", "cost when missing"],
                         [[c.get("name", "?"), "yes" if c.get("ok") else "no", c.get("detail", ""),
                           "" if c.get("ok") else c.get("cost", "")] for c in d.capabilities], "llll",
                         caption="host capabilities when recording"))
    meta = d.meta
    tgt = d.header.get("target")
    rows = [["file", d.path], ["written by", f"memprobe {meta.get('tool_version', MISSING)}, schema "
                                             f"{meta.get('schema_version', MISSING)}"],
            ["samples", f"{d.n} over {d.duration_s:.1f} s"],
            ["interval", f"{d.interval_s:g} s" if d.interval_s else MISSING],
            ["command", " ".join(map(str, d.header.get("argv") or [])) or MISSING],
            ["target", d.target], ["KV fraction", f"{d.kv_fraction}"]]
    if isinstance(tgt, dict) and tgt.get("evidence"):
        rows.append(["target resolved by", "; ".join(tgt["evidence"])])
    if d.stopped:
        rows.append(["stopped early", d.stopped])
    out.append(Table(["", ""], rows, "ll", caption="recording"))
    if d.target_events:
        out.append(Table(["time", "target event"], [[ts(t), str(v)] for t, v in d.target_events], "rl"))
    if d.notes:
        out.append(Para([Bold("Notes from the samples and ledgers")]))
        out.append(Bullets([[n] for n in d.notes]))
    return out


def _yn(v: Optional[bool]) -> str:
    return MISSING if v is None else ("yes" if v else "no")
