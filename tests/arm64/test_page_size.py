"""Page size on fixture trees (runs on every host): nothing in the ledger or the probe reports
assumes 4096-byte pages. Grace hosts often run 64 KiB-page kernels; the tier's 16 KiB guest
(tests/arm64/test_arm64_guest.py) checks the live readers, these the arithmetic at 64 KiB."""
from __future__ import annotations

import dataclasses
import io
import os
import shutil

import pytest
from rich.console import Console

from fixture_loader import load_step, step_pids, steps
from spark_memprobe.probe_report import PageCacheFile, ProbeReport, ProbeStatus, report_from_dict, report_to_dict
from spark_memprobe.ledger.build import build_ledger
from spark_memprobe.sources.sampler import PureSampler

try:
    from spark_memprobe.sources.native import NativeSampler
except ImportError:
    NativeSampler = None

K64 = 65536
STEPS = steps("h100-cgroup2-scenario")[::3] + steps("gb10-synthetic")


def _cgroup_of(step):
    base = os.path.join(step, "cgroup")
    if os.path.isdir(os.path.join(base, "system.slice")):
        return "system.slice/docker-gb10synthetic.scope"
    return "memprobe_fixture"


@pytest.mark.parametrize("step", STEPS, ids=os.path.basename)
def test_ledger_at_64k_pages_equals_the_ledger_at_4k(step):
    """The samples hold bytes (kB x 1024) and raw page counts: the ledger's columns, rows, CUDA
    model and KV budget must not change with the recorded page size, and it carries that page
    size. Only the rules' noise floor scales (per-CPU charge stock is counted in pages: 1 MiB at
    4 KiB, 16 MiB at 64 KiB pages), so a finding may only disappear when it is below 16 MiB."""
    host, s = load_step(step, _cgroup_of(step))
    l4 = build_ledger(dataclasses.replace(host, page_size=4096), s)
    l64 = build_ledger(dataclasses.replace(host, page_size=K64), s)
    assert (l4.page_size, l64.page_size) == (4096, K64)
    a, b = dataclasses.asdict(l4), dataclasses.asdict(l64)
    for k in ("columns", "rows", "cuda", "kv", "target", "platform", "notes"):
        assert a[k] == b[k], k
    f4 = {f["rule"]: f for f in a["findings"]}
    f64 = {f["rule"]: f for f in b["findings"]}
    assert all(f64[r] == f4[r] for r in f64)
    assert all(f4[r]["bytes"] < 16 << 20 for r in set(f4) - set(f64)), set(f4) - set(f64)


def test_page_size_not_recorded_is_not_invented():
    host, s = load_step(STEPS[0], "memprobe_fixture")
    assert build_ledger(dataclasses.replace(host, page_size=None), s).page_size is None


# vmstat counters printed in pages (mm/vmstat.c vmstat_text); meminfo prints the same
# counters in kB (fs/proc/meminfo.c)
PAIRS = [("AnonPages", "nr_anon_pages"), ("Mapped", "nr_mapped"), ("Shmem", "nr_shmem"),
         ("PageTables", "nr_page_table_pages")]


def _as_64k_kernel(src: str, dst: str) -> None:
    """The same machine state as a 64 KiB-page kernel prints it: kB files unchanged, page
    counts in /proc/vmstat divided by 16 (only counters in pages: nr_* minus the kB ones)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "proc", "vmstat")
    out = []
    with open(path) as f:
        for line in f:
            k, v = line.split()
            if k.startswith("nr_") and k not in ("nr_kernel_stack", "nr_shadow_call_stack") and \
                    not k.endswith("_threshold"):
                v = str(int(v) * 4096 // K64)
            out.append(f"{k} {v}\n")
    with open(path, "w") as f:
        f.writelines(out)


@pytest.mark.parametrize("sampler", ["pure", "native"])
def test_samplers_keep_page_counts_raw_and_bytes_exact_at_64k(tmp_path, sampler):
    """Both samplers read a 64 KiB-page tree: meminfo, status and smaps bytes are what the text
    says, vmstat stays in pages, and pages x the recorded page size give the meminfo bytes
    (x 4096 would be 16 times too small)."""
    if sampler == "native" and NativeSampler is None:
        pytest.skip("native extension not built")
    cls = PureSampler if sampler == "pure" else NativeSampler
    step = [s for s in steps("h100-cgroup2-scenario") if "07-managed" in s][0]
    _as_64k_kernel(step, str(tmp_path / "t"))
    readings = []
    for root in (step, str(tmp_path / "t")):
        with cls(proc=os.path.join(root, "proc"), cgroup_root=os.path.join(root, "cgroup"),
                 cgroup="memprobe_fixture", pids=step_pids(step)) as smp:
            readings.append(smp.sample(detail=True))
    s4, s64 = readings
    assert s64.meminfo == s4.meminfo
    assert [dataclasses.asdict(p) for p in s64.processes] == [dataclasses.asdict(p) for p in s4.processes]
    assert all(p.smaps_rollup for p in s64.processes)
    for mi, vm in PAIRS:
        pages4, pages64 = s4.vmstat.counters[vm], s64.vmstat.counters[vm]
        assert pages4 * 4096 == s4.meminfo.get(mi)                  # the captured 4 KiB host
        assert pages64 == pages4 * 4096 // K64
        assert abs(pages64 * K64 - s64.meminfo.get(mi)) < K64, (mi, vm)


def test_probe_report_page_counts_use_the_recorded_page_size():
    f = PageCacheFile(cgroup_id=7, dev_major=254, dev_minor=0, inode=12, added_pages=1000, removed_pages=0,
                      path="/models/w.safetensors", page_size=K64)
    assert f.net_bytes == 1000 * K64
    assert PageCacheFile(cgroup_id=7, dev_major=254, dev_minor=0, inode=12, added_pages=1,
                         removed_pages=0).page_size == os.sysconf("SC_PAGE_SIZE")      # this host's, not 4096
    r = ProbeReport(started_mono_ns=0, ended_mono_ns=1, page_size=K64, page_cache=[f],
                    probes=[ProbeStatus("pagecache", "tracepoint", True)])
    back = report_from_dict(report_to_dict(r))
    assert back.page_size == K64 and back.page_cache[0].net_bytes == 1000 * K64
    from spark_memprobe.views.probes import render_report
    buf = io.StringIO()
    Console(file=buf, width=160, no_color=True, highlight=False, color_system=None).print(render_report(back))
    assert "62.5 MiB" in buf.getvalue()             # 1000 pages of 64 KiB, not 3.91 MiB


def test_rule_noise_floor_scales_with_the_page_size():
    from spark_memprobe.ledger.facts import Facts
    from spark_memprobe.ledger.rules_common import Ctx, noise
    got = {ps: noise(Ctx(Facts(page_size=ps, platform="discrete", target="t"), None, None, None, [], {}))
           for ps in (4096, 16384, K64, None)}
    assert got == {4096: 1 << 20, 16384: 4 << 20, K64: 16 << 20, None: 1 << 20}
