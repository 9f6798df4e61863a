"""An A/B experiment rendered (`memprobe ab`, docs/ab.md): the verdict (or why there is none), every
run with the page cache it started from, mean and interval per arm, the difference, a plot of the
runs, and the attribution of the difference by the two-recording comparison (report_compare.py)."""
from __future__ import annotations

import os
import shlex

from ..analysis.ab import AbResult, ArmStats
from .fmt import MISSING
from .report_compare import cause_text, verdict_compare
from .report_doc import Bold, ChartBlock, bx, Code, Document, Heading, Para, Table, signed
from .svg import Chart, Line

GiB = 1 << 30


def gib(n) -> str:
    """KV caches are tens of GiB and differ by MiB: three decimals."""
    return MISSING if n is None else f"{n / GiB:.3f} GiB"


def _interval(mean, hw) -> str:
    if mean is None:
        return MISSING
    if hw is None:
        return f"{gib(mean)} (no interval)"
    return f"{gib(mean)} ± {bx(int(hw))} ({gib(mean - hw)} to {gib(mean + hw)})"


def _diff_text(r: AbResult) -> str:
    d = r.diff
    if d is None:
        return "B - A: not computed (an arm has no value)"
    if d.half_width is None:
        return f"B - A = {signed(int(d.mean))} (no interval: an arm has one value)"
    return (f"B - A = {signed(int(d.mean))}, 95 % interval {signed(int(d.mean - d.half_width))} to "
            f"{signed(int(d.mean + d.half_width))} (Welch's t, df {d.df:.1f}; n = {r.a.n} A + {r.b.n} B)")


def verdict(r: AbResult) -> list:
    out: list = [Heading(2, "Verdict", "verdict")]
    diff = _diff_text(r)
    if r.refused:
        why = "; ".join(r.refused)
        out.append(Para([Bold("No conclusion: "), why + ". ", f"Measured anyway: {diff}."],
                        "verdict"))
        if any("page-cache" in x for x in r.refused) and r.cache_mode == "as-is":
            out.append(Para(["Run again with --cache cold (every run starts with the named files evicted) or "
                             "--cache warm (every run starts with them read)."], "verdict"))
    elif r.diff.excludes_zero:
        out.append(Para([Bold(f"The arms differ: {diff}. "), "The interval excludes 0; both arms started from the "
                         "same page-cache state of the named files." if r.files else
                         "The interval excludes 0. No file was named, so the page-cache state was not checked."],
                        "verdict"))
    else:
        out.append(Para([Bold(f"No difference detected: {diff}. "), "The interval includes 0"
                         + (" and both arms started from the same page-cache state of the named files."
                            if r.files else "; no file was named, so the page-cache state was not checked.")],
                        "verdict"))
    return out


def runs_table(r: AbResult) -> Table:
    head = ["run", "arm", "value"] + [f"{os.path.basename(f.path)} cached before" for f in r.files] + \
        ["exit", "seconds", "recording", "note"]
    rows = []
    for run in r.runs:
        cells = [str(run.index), run.arm, gib(run.value_bytes)]
        for c in run.cache:
            pct = f" ({100 * c.cached_bytes / c.size_bytes:.0f} %)" if c.cached_bytes is not None and c.size_bytes \
                else ""
            cells.append(MISSING if c.cached_bytes is None else f"{c.cached_bytes} B{pct}")
        notes = [c.note for c in run.cache if c.note] + ([run.error] if run.error else [])
        if run.value_bytes is None:
            notes.append("no value in the output")
        cells += [MISSING if run.exit_code is None else str(run.exit_code),
                  MISSING if run.duration_s is None else f"{run.duration_s:.1f}",
                  Code(os.path.basename(run.recording)), "; ".join(notes)]
        rows.append(cells)
    return Table(head, rows, "rlr" + "r" * len(r.files) + "rrll", caption="every run, in the order run")


def arms_table(r: AbResult) -> Table:
    def row(s: ArmStats):
        return [s.arm, str(s.n), gib(s.mean), MISSING if s.sd is None else bx(int(s.sd)),
                _interval(s.mean, s.half_width)]
    return Table(["arm", "n", "mean", "sd", "95 % interval (Student's t, n - 1 df)"], [row(r.a), row(r.b)],
                 "lrrrl")


def cache_table(r: AbResult) -> Table:
    rows = []
    for f in r.files:
        rows.append([Code(f.path), "-" if f.size_bytes is None else f"{f.size_bytes} B",
                     ", ".join(MISSING if x is None else str(x) for x in f.a_bytes),
                     ", ".join(MISSING if x is None else str(x) for x in f.b_bytes),
                     MISSING if f.differs is None else ("yes" if f.differs else "no")])
    return Table(["file", "size", "A: cached bytes before each run", "B: cached bytes before each run",
                  "arms differ"], rows, "lrllr", caption=f"page cache before each run (mincore), cache {r.cache_mode}")


def chart(r: AbResult) -> ChartBlock:
    base = r.a.mean if r.a.mean is not None else 0
    n = len(r.runs)
    lines = []
    for arm, color in (("A", "#1f77b4"), ("B", "#d62728")):
        ys = [None if x.arm != arm or x.value_bytes is None else x.value_bytes - base for x in r.runs]
        # a point per run: None between runs keeps them apart
        xs2, ys2 = [], []
        for x, y in zip(range(1, n + 1), ys):
            xs2 += [x, x]
            ys2 += [y, None]
        lines.append(Line(f"{arm} runs", xs2, ys2, color=color))
        s = r.a if arm == "A" else r.b
        if s.mean is not None:
            lines.append(Line(f"{arm} mean", [1, n], [s.mean - base] * 2, color=color, dashed=True))
    c = Chart("value per run, minus A's mean", lines, x_label="run, in the order run", y_label="bytes")
    summary = Table(["run", "arm", "value - A's mean"],
                    [[str(x.index), x.arm, MISSING if x.value_bytes is None else signed(int(x.value_bytes - base))]
                     for x in r.runs], "rlr")
    return ChartBlock(c, summary)


def attribution(r: AbResult) -> list:
    out: list = [Heading(2, "What the difference is made of", "attribution")]
    if r.pair is None:
        out.append(Para(["No pair of recorded runs with a value in each arm: nothing to attribute."]))
        return out
    ra, rb = r.pair
    out.append(Para([f"Run {ra.index} (A, {gib(ra.value_bytes)}) against run {rb.index} (B, {gib(rb.value_bytes)}): "
                     "the two runs farthest apart in the direction of the difference, compared as ",
                     Code(f"memprobe report {os.path.basename(ra.recording)} {os.path.basename(rb.recording)}"),
                     " compares them."]))
    if r.comparison is None:
        out.append(Para([f"The recordings could not be compared: {r.comparison_error}."]))
        return out
    out += verdict_compare(r.comparison)[1:]
    return out


def build_ab(r: AbResult, argv_a: list[str], argv_b: list[str], metric: str) -> Document:
    blocks: list = verdict(r)
    blocks.append(Para([Bold("A: "), Code(shlex.join(argv_a)), "; ", Bold("B: "), Code(shlex.join(argv_b)),
                        f"; {len(r.runs)} runs in A/B/B/A order; page cache {r.cache_mode}; value: {metric}."]))
    blocks.append(Heading(2, "Runs", "runs"))
    blocks.append(runs_table(r))
    blocks.append(arms_table(r))
    blocks.append(Para([_diff_text(r) + "."]))
    if r.files:
        blocks.append(cache_table(r))
    blocks.append(chart(r))
    blocks += attribution(r)
    return Document("memprobe ab: A/B experiment", f"{r.a.n} A runs, {r.b.n} B runs, cache {r.cache_mode}", blocks)


def ab_json(r: AbResult) -> dict:
    """The numbers of the experiment (ab.json), for scripts: bytes, None where not measured."""
    def arm(s: ArmStats) -> dict:
        return {"n": s.n, "mean_bytes": s.mean, "sd_bytes": s.sd, "ci95_half_width_bytes": s.half_width}
    d = r.diff
    return {"cache": r.cache_mode, "concluded": r.concluded, "refused": r.refused,
            "runs": [{"index": x.index, "arm": x.arm, "value_bytes": x.value_bytes, "value_line": x.value_line,
                      "exit_code": x.exit_code, "duration_s": x.duration_s, "target": x.target,
                      "recording": x.recording, "error": x.error,
                      "cache_before": [{"path": c.path, "cached_bytes": c.cached_bytes, "size_bytes": c.size_bytes,
                                        "note": c.note} for c in x.cache]} for x in r.runs],
            "a": arm(r.a), "b": arm(r.b),
            "difference": None if d is None else {"b_minus_a_bytes": d.mean, "ci95_half_width_bytes": d.half_width,
                                                  "df": d.df, "excludes_zero": d.excludes_zero},
            "files": [{"path": f.path, "a_cached_bytes": f.a_bytes, "b_cached_bytes": f.b_bytes,
                       "arms_differ": f.differs} for f in r.files],
            "compared_runs": None if r.pair is None else [r.pair[0].index, r.pair[1].index],
            "causes": [] if r.comparison is None else [cause_text(r.comparison.peak, c)
                                                      for c in r.comparison.peak.causes]}
