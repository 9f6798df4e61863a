"""The kernel causes of issue 24 as people and Prometheus see them: the screen's MemAvailable line
and reserve row, the report's term-by-term table, the exporter's page-allocator metrics, and
`memprobe snapshot` reading zoneinfo, buddyinfo and pagetypeinfo itself (on the captured tree
tests/fixtures/zones-x86-vm and on this host)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest
from rich.console import Console

from fixture_loader import load_step, steps
from test_export_metrics import ALERTS, annotations as alert_annotations, promtool, render as render_exposition, samples
from test_report import report
from test_ledger_kernel import fragment, host, kernel, sample
from test_zones import FIXTURE, PAGE
from spark_memprobe.cli import main
from spark_memprobe.ledger import LedgerInputs, build_ledger
from spark_memprobe.ledger.available import decompose_mem_available, free_in_blocks_bytes
from spark_memprobe.recording import RecordingWriter
from spark_memprobe.samples import Pressure
from spark_memprobe.sources.procfs import read_meminfo
from spark_memprobe.views.fmt import fmt_bytes
from spark_memprobe.views.ledger import mem_available_line
from spark_memprobe.views.metrics import build_families
from spark_memprobe.views.tui import TuiState, render_screen

GiB = 1 << 30
# MemAvailable of the captured VM, term by term (ledger/available.py on tests/fixtures/zones-x86-vm):
# free 22.6 GiB - reserve 127 MiB + cache 651 MiB - 82.6 MiB + reclaimable 146 MiB - 73 MiB = 23.1 GiB
LONG = ("MemAvailable 23.1G = free 22.6G - reserve 127M + cache 651M (- kept 82.6M) + reclaimable 146M (- kept 73M)"
        "; free in 2 MiB blocks 4.9G")
SHORT = "MemAvail 23.1G = free 22.6G - reserve 127M + reclaimable 641M; 2M blocks 4.9G"


def kernel_ledger(platform="discrete", k=None, meminfo=None):
    return build_ledger(host(platform), sample(meminfo), LedgerInputs(kernel=k or kernel()))


def screen(lg, w: int, h: int) -> list[str]:
    st = TuiState(host=host(), target="host")
    st.sample, st.ledger = sample(), lg
    c = Console(width=w, height=h, record=True, file=io.StringIO(), color_system=None)
    c.print(render_screen(st, w, h))
    return c.export_text().rstrip("\n").split("\n")


# -- the screen ------------------------------------------------------------------------------------

def test_screen_line_takes_mem_available_apart_under_the_ledger():
    lg = kernel_ledger()
    a = lg.mem_available
    # the terms shown add up to the total shown: the line is the kernel's formula
    assert a.free_bytes - a.reserve_bytes + a.page_cache_bytes - a.page_cache_kept_bytes + \
        a.reclaimable_kernel_bytes - a.reclaimable_kernel_kept_bytes == a.computed_bytes == a.kernel_bytes
    for w, h, want in ((160, 50, LONG), (80, 24, SHORT)):
        lines = screen(lg, w, h)
        assert len(lines) <= h and max(len(x) for x in lines) < w
        i = next(i for i, x in enumerate(lines) if x.startswith("the tool shows"))
        assert lines[i + 1] == want, (w, lines[i + 1])
        assert lines[i + 2].startswith("findings")
        # the reserve is a row like the others, in MemTotal - MemAvailable
        reserve = next(x for x in lines if x.startswith("kernel reserve"))
        assert reserve.split()[-2:] == ["127", "MiB"]
    # too narrow for either form: cut, never wrapped onto a second line
    cut = mem_available_line(a, lg.free_in_2mib_blocks_bytes, PAGE, width=60)
    assert len(cut) == 60 and cut.endswith("…")


def test_screen_has_no_line_and_no_gap_without_the_page_allocator():
    lg = build_ledger(host(), sample(), LedgerInputs())
    lines = screen(lg, 160, 50)
    i = next(i for i, x in enumerate(lines) if x.startswith("the tool shows"))
    assert lines[i + 1].startswith("findings")
    assert not any(" = free " in x or "kernel reserve" in x for x in lines)


def test_a_kernel_that_computes_it_differently_is_shown_on_the_line():
    mi = read_meminfo(FIXTURE)
    mi.bytes["MemAvailable"] += GiB
    lg = kernel_ledger(meminfo=mi)
    line = mem_available_line(lg.mem_available, lg.free_in_2mib_blocks_bytes, PAGE)
    assert line.startswith("MemAvailable 23.1 GiB (kernel 24.1 GiB) = free 22.6 GiB - reserve 127 MiB")


def test_snapshot_ledger_view_prints_the_line(capsys):
    assert main(["--proc", FIXTURE, "snapshot", "--ledger"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert ("MemAvailable 23.1 GiB = free 22.6 GiB - reserve 127 MiB + cache 651 MiB (- kept 82.6 MiB) + "
            "reclaimable 146 MiB (- kept 73 MiB); free in 2 MiB blocks 4.9 GiB") in flat
    assert next(x for x in out.splitlines() if x.startswith(" kernel reserve")).split()[-2:] == ["127", "MiB"]


# -- the report ------------------------------------------------------------------------------------

GB10_CG = "system.slice/docker-gb10synthetic.scope"


def gb10_recording(path: str, k=None) -> str:
    """The GB10 fixture steps, one a second, with the page-allocator state `k` recorded as the
    feed records it (a 'kernel' event; none when k is None)."""
    sts = steps("gb10-synthetic")
    host0, _ = load_step(sts[0], GB10_CG)
    w = RecordingWriter(path, {"host": asdict(host0), "target": {"kind": "cgroup", "query": GB10_CG,
                                                                 "cgroup_path": "/" + GB10_CG, "cgroup_version": 2},
                               "interval_ns": 10 ** 9, "argv": ["fixture"], "kv_fraction": 0.9})
    for i, st in enumerate(sts):
        s = load_step(st, GB10_CG)[1]
        s.mono_ns, s.wall_ns = (i + 1) * 10 ** 9, 1_764_000_000_000_000_000 + i * 10 ** 9
        w.add_sample(s)
        if k is not None and i == 0:
            w.add_event(s.mono_ns, "kernel", asdict(k))
    w.close()
    return path


def test_report_table_at_the_moments_and_the_fragmentation_finding(tmp_path):
    d, md = report(gb10_recording(str(tmp_path / "k.db"), fragment(kernel())))
    pk = d.peak.ledger
    a = pk.mem_available
    assert a is not None and pk.free_in_2mib_blocks_bytes == 0
    assert "### MemAvailable term by term, and free memory in 2 MiB blocks" in md
    table = md.split("### MemAvailable term by term", 1)[1].split("\n### ", 1)[0]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in table.splitlines() if r.startswith("| ")}
    col = [m.label for m in d.moments].index(d.peak.label)
    assert rows["- kernel reserve (high watermarks + lowmem reserves)"][col] == "127 MiB"
    assert rows["free in blocks of 2 MiB or more"][col] == "0 B"
    assert rows["**= MemAvailable by the formula**"][col] == f"**{fmt_bytes(a.computed_bytes)}**"
    assert f"a kernel reserve of **{fmt_bytes(a.reserve_bytes, exact=True)}** that MemAvailable leaves out" in table
    # the kernel rules' findings are listed like every other: fragmented free memory on UMA
    assert any(fs.finding.rule == "huge_blocks_scarce" for fs in d.findings)
    assert "(`huge_blocks_scarce`)" in md and "compact_memory" in md


def test_report_without_the_page_allocator_says_nothing_of_it(tmp_path):
    d, md = report(gb10_recording(str(tmp_path / "none.db")))
    assert d.peak.ledger.mem_available is None
    assert "MemAvailable term by term" not in md and "huge_blocks_scarce" not in [f.finding.rule for f in d.findings]


# -- the exporter ----------------------------------------------------------------------------------

def kernel_host_families():
    """Families of a host ledger built on the captured VM, with its /proc/vmstat and a PSI
    reading (test_export_metrics checks every family against docs/export.md with these)."""
    k = kernel()
    k.pressure = Pressure(some_total_us=2_500_000, full_total_us=1_250_000)
    s = sample()
    inputs = LedgerInputs(kernel=k)
    lg = build_ledger(host(), s, inputs)
    return s, lg, build_families(host(), [], lg, host_sample=s, host_inputs=inputs)


def one(ss, name, **labels):
    got = [x.value for x in ss if x.name == name and all(x.labels.get(a) == b for a, b in labels.items())]
    assert len(got) == 1, (name, labels, got)
    return got[0]


def test_metrics_equal_the_ledger_and_the_kernel_files():
    s, lg, fams = kernel_host_families()
    ss = samples(render_exposition(fams))
    a = lg.mem_available
    for part, v in (("free", a.free_bytes), ("reserve", a.reserve_bytes), ("page_cache", a.page_cache_bytes),
                    ("page_cache_kept", a.page_cache_kept_bytes), ("reclaimable", a.reclaimable_kernel_bytes),
                    ("reclaimable_kept", a.reclaimable_kernel_kept_bytes), ("computed", a.computed_bytes),
                    ("kernel", a.kernel_bytes)):
        assert one(ss, "memprobe_host_mem_available_bytes", part=part, host="") == v, part
    assert one(ss, "memprobe_host_free_in_2mib_blocks_bytes") == lg.free_in_2mib_blocks_bytes == 5265948672
    c = dict(s.vmstat.counters)
    c["allocstall_normal"] = 3
    s.vmstat.counters = c
    ss = samples(render_exposition(build_families(host(), [], lg, host_sample=s)))
    for ev in ("compact_stall", "compact_fail", "compact_success", "pgscan_direct", "pgscan_kswapd",
               "pgsteal_direct", "pgsteal_kswapd"):
        assert one(ss, "memprobe_host_vmstat_events_total", event=ev) == c[ev], ev
    assert one(ss, "memprobe_host_vmstat_events_total", event="allocstall") == 3      # summed over zone types
    # no host_inputs here: PSI was not read, so it is absent (never 0)
    assert not [x for x in ss if x.name == "memprobe_host_memory_pressure_seconds_total"]
    ss = samples(render_exposition(kernel_host_families()[2]))
    assert one(ss, "memprobe_host_memory_pressure_seconds_total", kind="some") == 2.5
    assert one(ss, "memprobe_host_memory_pressure_seconds_total", kind="full") == 1.25


def test_metrics_absent_when_not_read():
    s = sample()
    lg = build_ledger(host(), s, LedgerInputs())
    s.vmstat.counters = {k: v for k, v in s.vmstat.counters.items() if not k.startswith("compact_")}
    ss = samples(render_exposition(build_families(host(), [], lg, host_sample=s,
                                                  host_inputs=LedgerInputs(kernel=None))))
    names = {x.name for x in ss}
    assert "memprobe_host_mem_available_bytes" not in names and "memprobe_host_free_in_2mib_blocks_bytes" not in names
    assert "memprobe_host_memory_pressure_seconds_total" not in names
    events = {x.labels["event"] for x in ss if x.name == "memprobe_host_vmstat_events_total"}
    assert events == {"pgscan_direct", "pgscan_kswapd", "pgsteal_direct", "pgsteal_kswapd", "allocstall"}
    s.vmstat = None
    assert "memprobe_host_vmstat_events_total" not in {
        x.name for x in samples(render_exposition(build_families(host(), [], lg, host_sample=s)))}


def test_allocation_stalls_alert(tmp_path):
    """promtool's rule test: two stall events a second on h1 fire; half a stall a second on h2
    does not."""
    exe = promtool()
    series = [{"series": f'memprobe_host_vmstat_events_total{{host="{h}",event="{e}"}}', "values": v}
              for h, v in (("h1", "0+60x40"), ("h2", "0+15x40")) for e in ("allocstall", "compact_stall")]
    series.append({"series": 'memprobe_host_vmstat_events_total{host="h1",event="pgscan_direct"}',
                   "values": "0+100000x40"})
    test = {"rule_files": [ALERTS], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "MemprobeAllocationStalls", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "MemprobeAllocationStalls",
             "exp_alerts": [{"exp_labels": {"host": "h1", "severity": "info"},
                             "exp_annotations": alert_annotations("MemprobeAllocationStalls",
                                                            {"host": "h1", "value": "2"})}]}]}]}
    f = tmp_path / "stalls_test.yml"
    f.write_text(json.dumps(test))
    p = subprocess.run([exe, "test", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


# -- snapshot --------------------------------------------------------------------------------------

def snapshot(proc: str, *argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--proc", proc, "snapshot", *argv]) == 0
    return out.getvalue()


def test_snapshot_json_on_the_captured_tree():
    d = json.loads(snapshot(FIXTURE, "--json"))
    want = decompose_mem_available(read_meminfo(FIXTURE), kernel().zones, PAGE)
    assert d["mem_available"] == asdict(want) and d["mem_available"]["difference_bytes"] == 0
    assert d["free_in_2mib_blocks_bytes"] == free_in_blocks_bytes(kernel().zones, PAGE) == 5265948672
    normal = next(z for z in d["kernel"]["zones"] if z["name"] == "Normal")
    assert normal["free_blocks_by_type"]["Movable"][-1] == 432 and normal["high_pages"] == 13495
    assert d["kernel"]["pressure"]["some_total_us"] == 0
    lg = json.loads(snapshot(FIXTURE, "--ledger", "--json"))
    assert lg["ledger"]["mem_available"] == d["mem_available"]
    assert lg["ledger"]["free_in_2mib_blocks_bytes"] == 5265948672
    assert {r["key"]: r for r in lg["ledger"]["rows"]}["reserve"]["cells"] == {"host_used": 133439488}
    assert lg["kernel"]["zones"] == d["kernel"]["zones"]


def zone_line(out: str, zone: str) -> list[str]:
    return next(x for x in out.splitlines() if x.startswith(f" 0/{zone} ")).split()


def test_snapshot_text_free_memory_by_block_size_and_migrate_type(tmp_path):
    out = snapshot(FIXTURE)
    assert "MemAvailable 23.1 GiB = free 22.6 GiB - reserve 127 MiB" in " ".join(out.split())
    # Normal: 3.38 GiB managed, 2.44 GiB free, 1.95 GiB of it in blocks of order 9 and up, watermarks
    # 35.1/43.9/52.7 MiB; by type (pagetypeinfo): movable 2.27 GiB, unmovable 129 MiB, reclaimable 43.1 MiB
    assert zone_line(out, "Normal") == ["0/Normal", "3.38", "GiB", "2.44", "GiB", "1.95", "GiB", "35.1", "MiB",
                                        "43.9", "MiB", "52.7", "MiB", "2.27", "GiB", "129", "MiB", "43.1", "MiB"]
    assert " 0/Movable " not in out                     # empty zones are left out
    # a tree without pagetypeinfo (not root): types not read, a note says why, the rest stays
    tree = tmp_path / "proc"
    shutil.copytree(FIXTURE, tree)
    os.unlink(tree / "pagetypeinfo")
    out = snapshot(str(tree))
    assert zone_line(out, "Normal")[-3:] == ["—", "—", "—"]
    assert zone_line(out, "Normal")[:7] == ["0/Normal", "3.38", "GiB", "2.44", "GiB", "1.95", "GiB"]
    assert "pagetypeinfo" in out.split("notes:", 1)[1]
    d = json.loads(snapshot(str(tree), "--json"))
    assert all(z["free_blocks_by_type"] is None for z in d["kernel"]["zones"])
    assert d["mem_available"]["difference_bytes"] == 0


@pytest.mark.live
@pytest.mark.skipif(os.geteuid() != 0, reason="/proc/pagetypeinfo is readable by root only")
def test_live_snapshot_json_reproduces_memavailable_and_reads_pagetypeinfo():
    """`memprobe snapshot --json` on this host: the formula lands within a few pages of the
    kernel's MemAvailable (pages move between the sample and zoneinfo: the best of five tries),
    and pagetypeinfo is read."""
    diffs = []
    for _ in range(5):
        p = subprocess.run([sys.executable, "-m", "spark_memprobe.cli", "snapshot", "--json"], capture_output=True,
                           text=True, timeout=60, cwd="/")
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        diffs.append(d["mem_available"]["difference_bytes"] // os.sysconf("SC_PAGE_SIZE"))
        if abs(diffs[-1]) <= 64:
            break
    assert abs(diffs[-1]) <= 64, f"kernel minus computed, pages: {diffs}"
    zones = [z for z in d["kernel"]["zones"] if z["managed_pages"]]
    assert zones and all(z["free_blocks_by_type"] for z in zones)
    assert d["free_in_2mib_blocks_bytes"] is not None
