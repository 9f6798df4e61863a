"""memprobe report on recordings built from the captured fixture scenarios (one sample per step,
in order), the CLI's output files and its errors on bad recordings.

Expected bytes come from the raw fixture files (the same numbers tests/test_ledger_fixtures.py
derives); the report must carry them into its verdict and findings."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest

from fixture_loader import FIXTURES, steps
from report_recordings import fixture_recording
from spark_memprobe.cli import EXIT_OUTPUT, EXIT_USAGE, main
from spark_memprobe.recording import RecordingWriter
from spark_memprobe.analysis.report import analyse, open_recording
from spark_memprobe.analysis.timeline import ramps
from spark_memprobe.views.report_doc import build_report
from spark_memprobe.views.report_html import render_html
from spark_memprobe.views.report_md import render_markdown

GiB, MiB = 1 << 30, 1 << 20
CG2, INF, GB10 = "h100-cgroup2-scenario", "h100-inference-scenario", "gb10-synthetic"


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    return {sc: fixture_recording(sc, str(d / f"{sc}.db")) for sc in (CG2, INF, GB10)}


def report(path):
    rec = open_recording(path)
    try:
        data = analyse(rec)
    finally:
        rec.close()
    return data, render_markdown(build_report(data))


def section(md: str, title: str) -> str:
    """The text of one '## title' section."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def finding(data, rule):
    return next((f for f in data.findings if f.finding.rule == rule), None)


# -- the H100 cgroup v2 scenario -----------------------------------------------------------------

def test_h100_cgroup2_verdict_and_findings(recs):
    data, md = report(recs[CG2])
    assert data.n == 10 and data.platform == "discrete"
    verdict = section(md, "Verdict")
    # the peak is step 09 (anon 1 GiB on top of everything): memory.current 7136772096
    assert data.peak.index == 8 and "6.65 GiB (7136772096 B)" in verdict
    # what memory.current holds there, row by row, in exact bytes
    assert "shmem / pinned 1.01 GiB (1082130432 B)" in verdict            # memory.stat shmem
    assert "kernel, not itemised 1 GiB (1075850240 B)" in verdict          # kernel - itemised parts
    # the largest rise is step 02's read of the 3 GiB file: page cache +3 GiB
    rise = data.moment("rise")
    assert rise.index == 1 and rise.ledger.cell("page_cache", "current") == 3221954560
    assert re.search(r"largest rise of memory\.current, \+3 GiB \(\d+ B\) from t=0\.0 s to t=1\.0 s, is page cache "
                     r"\+3 GiB \(3221463040 B\)", verdict)     # file 3221954560 - 491520 at step 01
    # GPU memory outside the cgroup: nvml.json usedGpuMemory of pid 437 at step 05
    assert "2.51 GiB (2692743168 B) of GPU memory of the target's processes" in verdict
    # findings: the managed double view at step 07 is found although it is gone by the peak
    f = finding(data, "managed_double_view")
    assert f.finding.bytes == 1075845176 and f.index == 6 and f.raised == 1
    assert f.finding.bytes_low == 5518303232 - 4811362304                  # file_mapped - file
    assert finding(data, "pinned_shmem").finding.bytes == 1082130432
    assert finding(data, "driver_kernel_memory").finding.bytes == 1075850240
    assert [x.finding.bytes for x in data.findings] == sorted((x.finding.bytes for x in data.findings), reverse=True)
    table = section(md, "Findings")
    assert "| 1 GiB (1075845176 B), at least 674 MiB | warning | medium |" in table
    assert "file_mapped 5.14 GiB (5518303232 B) vs file 4.48 GiB (4811362304 B)" in table   # evidence
    assert "Mechanism:" in table and "\\_\\_GFP_ACCOUNT" in table                       # rule docstring
    # no UMA finding on a discrete card, and the report says why the KV rule is silent
    assert not {"kv_cache_thief", "uma_tool_sum", "limit_cannot_hold"} & {x.finding.rule for x in data.findings}
    assert "The KV-cache rule is silent here (discrete platform: CUDA free is NVML free" in verdict
    # what was not measured is named
    assert "eBPF probes were off for this recording" in verdict


def test_h100_cgroup2_moments_and_ledgers(recs):
    data, md = report(recs[CG2])
    keys = [k for m in data.moments for k in m.keys]
    assert keys[0] == "start" and keys[-1] == "end" and "peak" in keys and "gpu_peak" in keys
    # GPU moments from NVML per-process: the context (+518 MiB) at step 04, cudaMalloc (+2 GiB) at step 05
    assert data.moment("model_load").index == 3 and data.moment("kv_sizing").index == 3
    assert data.moment("gpu_peak").index == 4
    kind = section(md, "The ledger at the moments that matter")
    row = next(l for l in kind.splitlines() if l.startswith("| page cache |"))
    assert "| 3 GiB |" in row                                             # at the largest rise
    # the ledger at the peak reconciles: every view's total is what its rows add up to
    lg = data.peak.ledger
    top = [r for r in lg.rows if r.parent is None]
    for c in lg.columns:
        cells = [r.cells[c.key] for r in top if c.key in r.cells]
        if c.total is not None and all(v is not None for v in cells):
            assert sum(cells) - c.excess_bytes == c.total, c.key
    # CUDA free at KV sizing (step 04) is what cudaMemGetInfo returned there
    cm = json.load(open(os.path.join(steps(CG2)[3], "cuda_meminfo.json")))
    assert data.moment("kv_sizing").ledger.kv.cuda_free_bytes == cm["free"]


# -- the inference scenario: weights read first by `warmer` ----------------------------------------

def test_inference_first_touch_by_warmer(recs):
    data, md = report(recs[INF])
    ino, size, path = open(os.path.join(FIXTURES, INF, "weights.inode-size-path")).read().split()
    f = finding(data, "first_touch")
    # step 03: RssFile 570888 kB - the engine's file_mapped 336281600, owner named from warmer's counters
    assert f.index == 2 and f.finding.bytes == 570888 * 1024 - 336281600
    assert f.finding.title.endswith("charged to /warmer") and f.finding.confidence == "medium"
    verdict = section(md, "Verdict")
    # warmer's whole file charge is the weights (+1 page), and the engine maps the weights file
    assert "/warmer holds 1.65 GiB (1772253184 B) of page cache and runs no process of its own" in verdict
    assert f"The largest file the target maps is {path.replace('_', '_')}" in verdict
    assert int(size) == 1772245440 and "(1772249088 B)" in verdict        # the mapping, page-rounded
    # KV sizing detected at step 05 (profiled), where the engine computed 0.9 x cudaMemGetInfo free
    kv = data.moment("kv_sizing")
    eng = json.load(open(os.path.join(steps(INF)[4], "engine.json")))
    assert kv.index == 4 and kv.ledger.kv.kv_from_cuda_free_bytes == eng["kv_budget_at_0_9"]
    assert f"{eng['kv_budget_at_0_9']} B" in verdict
    assert data.moment("model_load").index == 3                          # weights on the GPU (step 04)
    # pinned memory as shmem, GPU memory outside the cgroup, charges after exit
    assert finding(data, "pinned_shmem").finding.bytes == 289673216
    assert finding(data, "gpu_uncharged").finding.bytes == 9030336512
    assert finding(data, "charges_without_processes").finding.bytes == 1986596864
    assert "not measured" in verdict.lower() and "eBPF probes were off" in verdict


def test_first_touch_owners_are_read_from_the_finding_not_its_text(recs):
    """The inference scenario's first_touch names /warmer in Finding.owners, and the verdict's
    sentence about it comes from that field and warmer's own counters, not from the finding's words."""
    data, _ = report(recs[INF])
    f = finding(data, "first_touch").finding
    assert [o.name for o in f.owners] == ["/warmer"]
    sentence = "/warmer holds 1.65 GiB (1772253184 B) of page cache and runs no process of its own"
    f.title, f.evidence = "first touch", []          # no words left to parse: the sentence stays
    assert sentence in section(render_markdown(build_report(data)), "Verdict")
    f.owners = []                                    # no owner in the field: no sentence
    assert "runs no process" not in render_markdown(build_report(data))


# -- the synthetic GB10 scenario -------------------------------------------------------------------

def meminfo(st):
    out = {}
    for line in open(os.path.join(st, "proc", "meminfo")):
        k, v = line.split(":")
        out[k] = int(v.split()[0]) * 1024
    return out


def test_gb10_kv_cache_finding(recs):
    data, md = report(recs[GB10])
    assert data.platform == "integrated"
    mi = meminfo(steps(GB10)[2])
    want = int(0.9 * (mi["MemAvailable"] - mi["MemFree"]))
    f = finding(data, "kv_cache_thief")
    assert f.finding.bytes == want == 48811231641 and f.finding.severity == "critical"
    kv = data.moment("kv_sizing")
    assert kv.index == 2                                                  # step 03: "kv-sized"
    eng = json.load(open(os.path.join(steps(GB10)[2], "engine.json")))
    assert kv.ledger.kv.kv_from_cuda_free_bytes == eng["kv_budget_at_0_9"]
    verdict = section(md, "Verdict")
    assert f"so it loses 45.5 GiB ({want} B)" in verdict
    assert "because of the target's own page cache (30.2 GiB)" in verdict
    assert "(4, critical) KV cache 45.5 GiB smaller" in verdict
    assert "nvidia-smi — used on the GPU (NVML device memory not available on this platform)" in verdict
    # GPU allocations escape the limit: the per-process figure of step 04
    used = json.load(open(os.path.join(steps(GB10)[3], "nvml.json")))["compute_processes"]
    assert finding(data, "limit_cannot_hold").finding.bytes == sum(p["usedGpuMemory"] for p in used)
    # NVML device used is NOT_SUPPORTED: missing, never 0
    assert all(v is None for v in data.series["nvml_used"].values)
    assert "| NVML used | — | — | — | — |" in md


def test_html_is_self_contained(recs):
    data, _ = report(recs[INF])
    html = render_html(build_report(data))
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 3
    assert "<script" not in html.lower()
    # nothing outside the file: no URL in src/href/url(), only #anchors
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert attr.startswith("#"), attr
    assert "url(" not in html and "@import" not in html and "http://" not in html and "https://" not in html
    assert "/warmer" in html and "1772253184" in html


# -- smaller units -----------------------------------------------------------------------------

def test_ramps_split_single_jumps_from_stretches():
    M = MiB
    v = [0, 100 * M, 200 * M, 300 * M, 300 * M, 5000 * M, 5000 * M, None, 6000 * M]
    r = ramps(v, big=1000 * M)
    assert r == [(0, 3, 300 * M), (4, 5, 4700 * M)]          # None breaks: no rise across the gap
    assert ramps([None, None], big=M) == []


def test_missing_values_stay_missing(tmp_path, recs):
    """A recording without NVML and without a cgroup: GPU series absent, cgroup views missing."""
    from spark_memprobe.samples import HostInfo, Meminfo, Sample
    from dataclasses import asdict
    p = str(tmp_path / "host.db")
    w = RecordingWriter(p, {"host": asdict(HostInfo(hostname="h")), "probes": None})
    for i in range(5):
        w.add_sample(Sample(mono_ns=i * 10 ** 8, wall_ns=i, meminfo=Meminfo(
            {"MemTotal": 8 * GiB, "MemFree": (4 - i % 2) * GiB, "MemAvailable": 6 * GiB})))
    w.close()
    data, md = report(p)
    assert "nvml_used" not in data.series and all(v is None for v in data.series["current"].values)
    assert "NVML was not read" in section(md, "Verdict")
    assert "| memory.current | — | — |" in md
    assert "No target cgroup was read" in section(md, "Verdict")


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_formats_modes_and_stdout(recs, tmp_path, capsys):
    html, md = str(tmp_path / "r.html"), str(tmp_path / "r.md")
    assert main(["report", recs[CG2], "-o", html]) == 0
    assert main(["report", recs[CG2], "-o", md, "--kv-fraction", "0.5"]) == 0
    for p in (html, md):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert open(html).read().startswith("<!DOCTYPE html>")
    assert "fraction 0.5" in open(md).read()
    capsys.readouterr()
    assert main(["report", recs[CG2]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# memprobe report: cgroup /memprobe_fixture")
    # an existing file with a looser mode is replaced with 0600
    loose = tmp_path / "loose.md"
    loose.write_text("OLD-CONTENT-42")
    os.chmod(loose, 0o644)
    assert main(["report", recs[CG2], "-o", str(loose)]) == 0
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600 and "OLD-CONTENT-42" not in loose.read_text()


def test_cli_refuses_symlinks_and_unknown_formats(recs, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "r.md"
    link.symlink_to(victim)
    assert main(["report", recs[CG2], "-o", str(link)]) == EXIT_OUTPUT
    assert victim.read_text() == "keep"
    assert "symlink" in capsys.readouterr().err
    assert main(["report", recs[CG2], "-o", str(tmp_path / "r.pdf")]) == EXIT_USAGE
    assert main(["report", recs[CG2], "-o", str(tmp_path / "r.pdf"), "--format", "md"]) == 0
    assert main(["report", recs[CG2], recs[INF], recs[GB10]]) == EXIT_USAGE
