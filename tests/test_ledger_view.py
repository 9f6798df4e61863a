"""The ledger's Rich view, rendered to a fixed 100-column console, and `memprobe snapshot --ledger`."""
from __future__ import annotations

import contextlib
import io
import json
import os

from rich.console import Console

from fixture_loader import FIXTURES, load_step, steps
from spark_memprobe.cli import main
from spark_memprobe.ledger import build_ledger
from spark_memprobe.views.ledger import render_ledger

STEP07 = os.path.join(FIXTURES, "h100-cgroup2-scenario", "steps", "07-managed-1GiB-host-touched")
GB10_03 = steps("gb10-synthetic")[2]

# The target table of H100 step 07, as it must render at 100 columns (trailing spaces stripped).
STEP07_TARGET_TABLE = """\
target views: bytes each view counts, by kind of memory

                        memory   docker     stat     stat     stat     stat     stat      RSS
 kind of memory        current     wset     anon     file    shmem   kernel   mapped      sum
 ────────────────────────────────────────────────────────────────────────────────────────────
 anon                  152 MiB  152 MiB  152 MiB                                      152 MiB
 page cache           3.47 GiB 2.85 MiB          3.47 GiB                   3.13 GiB 3.13 GiB
   active             2.81 MiB 2.81 MiB          2.81 MiB
   inactive           3.47 GiB      0 B          3.47 GiB
   dirty+writeback    1004 KiB
   mapped (est.)      3.13 GiB                                              3.13 GiB
   unmapped (est.)     352 MiB
 shmem / pinned       1.01 GiB 1.01 GiB          1.01 GiB 1.01 GiB          1.01 GiB 1.01 GiB
 kernel               11.3 MiB 11.3 MiB                            11.3 MiB
   slab               5.38 MiB                                     5.38 MiB
   stacks              272 KiB                                      272 KiB
   page tables         5.7 MiB                                      5.7 MiB
   percpu+vmalloc        288 B                                        288 B
 kernel, not itemised    1 GiB    1 GiB                               1 GiB    1 GiB    1 GiB
   mapped (UVM est.)     1 GiB                                        1 GiB    1 GiB    1 GiB
 socket buffers            0 B      0 B
 charged, unitemised  3.34 MiB 3.34 MiB                                          0 B
 not charged here                                                                    94.1 MiB

 view shows           5.65 GiB 2.18 GiB  152 MiB 4.48 GiB 1.01 GiB 1.01 GiB 5.14 GiB 5.38 GiB
"""


def render(step: str, cgroup: str) -> list[str]:
    host, s = load_step(step, cgroup)
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(render_ledger(build_ledger(host, s)))
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_step07_target_table_renders_exactly():
    lines = render(STEP07, "memprobe_fixture")
    assert all(len(line) <= 100 for line in lines)
    start = lines.index("target views: bytes each view counts, by kind of memory")
    assert "\n".join(lines[start:start + 25]) + "\n" == STEP07_TARGET_TABLE


def test_step07_findings_and_silent_rules_are_shown():
    text = "\n".join(render(STEP07, "memprobe_fixture"))
    assert " 2  warning   674 MiB..1 GiB  1 GiB of managed (UVM) CPU memory counted as kernel AND as mapped" in text
    assert "PREDICTION (if this host were integrated UMA)" in text
    assert "  kv_cache_thief: discrete platform: CUDA free is NVML free" in text


def test_gb10_renders_not_supported_as_dash_and_kv_first():
    lines = render(GB10_03, "system.slice/docker-gb10synthetic.scope")
    assert all(len(line) <= 100 for line in lines)
    gpu = next(line for line in lines if line.startswith(" GPU, target") and "39.5 GiB" in line)
    assert gpu.split() == ["GPU,", "target", "39.5", "GiB", "39.5", "GiB", "—", "39.5", "GiB", "39.5", "GiB"]
    first = lines[lines.index(" #  severity     bytes  finding (rule) / evidence") + 2]
    assert first.startswith(" 1  critical  45.5 GiB  KV cache 45.5 GiB smaller")


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["--proc", os.path.join(STEP07, "proc"), "--cgroup-root", os.path.join(STEP07, "cgroup"),
                   "snapshot", "--cgroup", "memprobe_fixture", "--ledger", *argv])
    return rc, out.getvalue()


def test_cli_snapshot_ledger_on_a_fixture_tree():
    rc, out = run_cli()
    assert rc == 0
    assert "memprobe ledger   target: memory cgroup v2 /memprobe_fixture" in out
    assert "managed_double_view" in out and "pinned_shmem" in out
    # the tree has no cgroup.procs, so no process is found: RSS is not read ("—"), not 0
    anon = next(line for line in out.splitlines() if line.startswith(" anon "))
    assert anon.split() == ["anon", "152", "MiB", "152", "MiB", "152", "MiB", "—"]
    # the GPU side comes from this machine's NVML, not the tree: without a driver the UMA rules
    # ask for evidence; on a discrete GPU host they say why they are silent
    assert "kv_cache_thief: platform 'no-gpu'" in out or "kv_cache_thief: discrete platform" in out


def test_cli_snapshot_ledger_json():
    rc, out = run_cli("--json", "--kv-fraction", "0.5")
    assert rc == 0
    d = json.loads(out)
    assert d["ledger"]["kv"]["fraction"] == 0.5
    rows = {r["key"]: r for r in d["ledger"]["rows"]}
    assert rows["driver_kernel"]["cells"]["stat_kernel"] == 1075845176
    assert rows["anon"]["cells"]["rss"] is None
    assert {f["rule"] for f in d["ledger"]["findings"]} >= {"managed_double_view", "pinned_shmem"}
