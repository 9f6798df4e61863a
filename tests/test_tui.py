"""The live screen and recordings end to end: views rendered to fixed-width consoles, attach
in a real terminal (tmux) against a real cgroup, record / kill -9 / replay through the CLI."""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from rich.console import Console

from fixture_loader import load_step, steps
from livecg import MiB, LiveCgroup
from spark_memprobe.feed import ledger_of
from spark_memprobe.feed.replay import ReplayFeed
from spark_memprobe.ledger import build_ledger, ledger_to_dict
from spark_memprobe.recording import Recording
from spark_memprobe.ledger.inputs import MappedFile, PageCacheBytes
from spark_memprobe.views.fmt import fmt_bytes, sparkline
from spark_memprobe.views.tui import COLUMNS, TuiState, render_screen, trend_point

CLI = [sys.executable, "-m", "spark_memprobe.cli"]
root = pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root")
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (scripts/setup.sh --test)")


def state_for(step, cgroup, n=1):
    host, s = load_step(step, cgroup)
    st = TuiState(host=host, target=f"cgroup {cgroup}")
    st.sample, st.ledger = s, build_ledger(host, s)
    for _ in range(n):
        st.history.append(trend_point(s, st.ledger))
    return st


def render(st, w, h):
    c = Console(width=w, height=h, record=True, file=io.StringIO(), color_system=None)
    c.print(render_screen(st, w, h))
    return c.export_text()


def test_screen_fits_80x24_and_names_the_double_count():
    st = state_for([s for s in steps("h100-cgroup2-scenario") if "07-managed" in s][0], "memprobe_fixture", 5)
    text = render(st, 80, 24)
    lines = text.rstrip("\n").split("\n")
    # strictly narrower: a line of exactly 80 columns wraps in a real terminal (seen in tmux)
    assert len(lines) <= 24 and max(len(x) for x in lines) < 80, text
    assert lines[0].startswith("memprobe LIVE") and "platform discrete" in lines[0]
    assert "where the bytes are counted" in text and "memory.current" in text
    assert "kernel, not itemised" in text and "1 GiB" in text
    assert "1 GiB of managed (UVM) CPU memory counted as kernel AND as" in text     # cut to 80 columns
    assert "q quit" in text


def test_larger_terminal_gets_more_panels():
    st = state_for(steps("gb10-synthetic")[2], "system.slice/docker-gb10synthetic.scope", 20)
    small, big = render(st, 80, 24), render(st, 160, 50)
    assert "KV cache at 0.9" in big and "trends" in big and "MemAvailable" in big
    assert "(applies here)" in big                      # GB10: integrated, the KV rule applies
    head_small = [x for x in small.split("\n") if x.startswith("kind ")][0]
    head_big = [x for x in big.split("\n") if x.startswith("kind ")][0]
    assert "NVML procs" in head_big and "CUDA used" in head_big and "NVML procs" not in head_small


def test_help_and_pause_are_shown():
    st = state_for(steps("h100-cgroup2-scenario")[1], "memprobe_fixture")
    st.paused, st.show_help = True, True
    text = render(st, 100, 40)
    assert "LIVE PAUSED" in text and "p pause/resume" in text


def managed_state(n=5):
    return state_for([s for s in steps("h100-cgroup2-scenario") if "07-managed" in s][0], "memprobe_fixture", n)


def test_overlap_cells_carry_the_findings_number_and_the_naive_sum_line():
    st = managed_state()
    text = render(st, 160, 50)
    # finding 2 is the managed double view: every cell of its row carries ², in every view that counts it
    assert [f.rule for f in st.ledger.findings][1] == "managed_double_view"
    row = [x for x in text.split("\n") if x.startswith("kernel, not itemised")][0]
    assert row.count("1 GiB²") == len([k for k, v in st.ledger.row("driver_kernel").cells.items() if v]) == 7, row
    assert "1 GiB²" not in [x for x in text.split("\n") if x.startswith("anon")][0]
    # first_touch (⁴) gives its amount in "not charged here" only: the target's own page cache is not marked
    assert "⁴" in [x for x in text.split("\n") if x.startswith("not charged here")][0]
    assert "⁴" not in [x for x in text.split("\n") if x.startswith("page cache")][0]
    # the title shows its number once and its amount once
    line = [x for x in text.split("\n") if "of managed (UVM)" in x][0]
    assert line.startswith(" ² 1 GiB of managed") and line.count("1 GiB") == 1 and "2." not in line, line
    # naive sum: memory.current + NVML procs + RSS as the tools show them; physical: each row once
    naive = sum(st.ledger.total(k) for k in ("current", "nvml_procs", "rss"))
    physical = sum(max(r.cells.get(k) or 0 for k in ("current", "nvml_procs", "rss"))
                   for r in st.ledger.rows if r.parent is None)
    assert f"naive sum memory.current + NVML procs + RSS = {fmt_bytes(naive)}; physical {fmt_bytes(physical)}; " \
           f"counted twice {fmt_bytes(naive - physical)}" in text
    assert fmt_bytes(naive) == "13.5 GiB" and fmt_bytes(physical) == "8.25 GiB"
    assert "counted twice" in render(st, 80, 24)


def test_help_overlay_explains_every_column():
    st = managed_state()
    st.show_help = True
    lines = render(st, 80, 24).rstrip("\n").split("\n")
    assert len(lines) <= 24 and max(len(x) for x in lines) < 80
    for _, header in COLUMNS:
        line = [x for x in lines if x.startswith(header + " ")]
        assert len(line) == 1 and len(line[0].split(None, 2)[-1]) > 20, (header, lines)
    assert "where the bytes are counted" not in "\n".join(lines)      # an overlay, not a footnote


def test_kv_line_only_where_a_gpu_was_read_and_predictions_say_so():
    st = managed_state()
    text = render(st, 160, 50)
    assert "PREDICTION, not this host: integrated UMA would lose" in text and "applies here" not in text
    for step, cgroup in ((steps("h100-cgroup2-scenario")[6], "memprobe_fixture"),
                         (steps("gb10-synthetic")[2], "system.slice/docker-gb10synthetic.scope")):
        host, s = load_step(step, cgroup)
        s.gpus = None                                   # NVML not read: nothing to inform
        st.sample, st.ledger = s, build_ledger(host, s)
        text = render(st, 160, 50)
        assert "KV cache at" not in text and "PREDICTION" not in text, step


def test_trend_lines_are_scaled_from_zero():
    st = managed_state(0)
    for cur in (128 * MiB, 128 * MiB - 164 * 1024) * 10:
        st.history.append({"current": cur})
    line = [x for x in render(st, 100, 50).split("\n") if x.startswith("memory.current ")][-1]
    assert set(line.split()[1]) == {"█"}, line          # a 0.1 % drop stays at full height
    assert set(sparkline([128 * MiB, 128 * MiB - 164 * 1024] * 10)) == {"█", "▁"}   # the report keeps min..max


def test_page_cache_panel_shows_the_targets_files_and_what_it_maps_from_others():
    st = managed_state()
    mine, other, dev = "/memprobe_fixture", "/system.slice/other.service", "fd:01"
    st.page_cache = [PageCacheBytes(mine, 3 * MiB, dev, 11, "/data/model.bin"),
                     PageCacheBytes(mine, 2 * MiB, dev, 12, None),
                     PageCacheBytes(other, 5 * MiB, dev, 13, None),
                     PageCacheBytes(other, 7 * MiB, dev, 14, "/root/.cache/pip/build/x.whl")]
    st.mapped_files = [MappedFile(pid=1, path="/usr/lib/libcuda.so.1", size_bytes=MiB, dev=dev, inode=13)]
    text = render(st, 160, 60)
    panel = text[text.index("page cache by file"):].split("\n")[1:4]
    assert panel[0].split() == ["3", "MiB", "/data/model.bin"]
    assert panel[1].split() == ["2", "MiB", "inode", "12", "on", "fd:01"]
    assert panel[2].split() == ["5", "MiB", "/usr/lib/libcuda.so.1", "[owned", "by", other + "]"]
    assert "pip" not in text                           # another cgroup's file the target does not map


# -- live: attach in tmux, record, replay ----------------------------------------------
@pytest.fixture
def cg():
    c = LiveCgroup()
    try:
        c.start_child()
        c.do(f"anon {64 * MiB}")
        yield c
    finally:
        c.cleanup()


def prog_ids():
    """IDs of loaded BPF programs named mp_* (ours); empty without bpftool."""
    if not shutil.which("bpftool"):
        return set()
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out or "[]") if p.get("name", "").startswith("mp_")}


def prog_ids_of(argv_part: str) -> set:
    """IDs of the BPF programs the process whose command line holds argv_part has open
    (/proc/<pid>/fdinfo prog_id): its own, not those another process loads meanwhile."""
    ids = set()
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if argv_part.encode() not in open(f"/proc/{d}/cmdline", "rb").read().split(b"\0"):
                continue
            for fd in os.listdir(f"/proc/{d}/fdinfo"):
                m = re.search(r"^prog_id:\s+(\d+)", open(f"/proc/{d}/fdinfo/{fd}").read(), re.M)
                ids |= {int(m.group(1))} if m else set()
        except OSError:
            continue
    return ids


def uprobes_left():
    with open("/sys/kernel/tracing/uprobe_events") as f:
        return [line for line in f.read().splitlines() if "libcuda" in line]


@root
@needs_tmux
def test_attach_tui_in_tmux_records_and_quits_clean(cg, tmp_path):
    from tmuxterm import Tmux
    rec = tmp_path / "tui.db"
    t = Tmux([*CLI, "attach", f"cgroup:{cg.path}", "--record", str(rec)], 100, 30)
    try:
        screen = t.wait_for("memprobe LIVE", "where the bytes are counted", "anon", "findings", timeout=60)
        assert cg.path in screen and ("64 MiB" in screen or "64.1 MiB" in screen or "64.2 MiB" in screen)
        ours = prog_ids_of(f"cgroup:{cg.path}") & prog_ids()     # the attach's own mp_* programs
        from spark_memprobe.sources.bpf import base_status
        if shutil.which("bpftool") and base_status()[0]:
            assert ours, "attach has no eBPF program open: the detach check below would check nothing"
        time.sleep(1.0)                                   # ~10 samples at the default 100 ms
        t.send("p")
        t.wait_for("PAUSED")
        t.send("p")
        t.send("q")
        assert t.rc() == 0
        after = t.capture()
        assert "quit: left" in after and "samples recorded" in after
    finally:
        t.close()
    assert not (ours & prog_ids()) and uprobes_left() == []
    r = Recording(str(rec))
    assert len(r) >= 3 and r.header["target"]["cgroup_path"] == cg.path


@root
def test_record_kill_9_then_replay_json(cg, tmp_path):
    path = tmp_path / "run.db"
    p = subprocess.Popen([*CLI, "record", f"cgroup:{cg.path}", "-o", str(path), "--interval", "100ms", "--no-bpf"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("recording ")
    time.sleep(3.0)
    t_kill = time.monotonic_ns()
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = Recording(str(path))
    assert len(r) >= 15                                     # ~30 written; at most ~10 lost with the last second
    assert t_kill - r.mono[-1] < 1.5e9
    out = subprocess.run([*CLI, "replay", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    objs = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(objs) == len(r)
    anon = [row for row in objs[-1]["ledger"]["rows"] if row["key"] == "anon"][0]
    assert abs(anon["cells"]["current"] - 64 * MiB) < 4 * MiB


@root
def test_replay_ledger_equals_live_ledger(cg, tmp_path):
    """The same samples give the same ledger live and replayed (the ledger is recomputed)."""
    from spark_memprobe.feed.live import LiveFeed
    from spark_memprobe.feed.recorder import Recorder, recording_header
    from spark_memprobe.sources.targets import Resolver
    r = Resolver()
    feed = LiveFeed(r, r.resolve(f"cgroup:{cg.path}"), bpf=False)
    path = str(tmp_path / "same.db")
    rec = Recorder(path, recording_header(feed, 0.1, 0.9))
    live = []
    try:
        for i in range(12):
            item, _ = feed.tick()
            rec.write(item)
            live.append(ledger_to_dict(ledger_of(item, feed.header)))
            if i == 5:
                cg.do(f"anon {16 * MiB}")
    finally:
        feed.close()
        rec.close()
    replay = ReplayFeed(Recording(path))
    assert len(replay) == 12
    for i in range(12):
        assert ledger_to_dict(ledger_of(replay.item(i), replay.header)) == live[i]


@root
@needs_tmux
def test_replay_tui_pause_step_seek(cg, tmp_path):
    from tmuxterm import Tmux
    path = tmp_path / "r.db"
    subprocess.run([*CLI, "record", f"cgroup:{cg.path}", "-o", str(path), "--interval", "100ms", "--duration", "2s",
                    "--no-bpf"], check=True, capture_output=True, timeout=60)
    n = len(Recording(str(path)))
    t = Tmux([*CLI, "replay", str(path)], 100, 30)
    try:
        t.wait_for("REPLAY", timeout=30)
        t.send("p")
        t.send("Home")
        t.wait_for(f"REPLAY 1/{n} PAUSED")
        t.send("Right")
        t.send("Right")
        t.wait_for(f"REPLAY 3/{n} PAUSED")
        t.send("End")
        t.wait_for(f"REPLAY {n}/{n}")
        t.send("q")
        assert t.rc() == 0
    finally:
        t.close()


def colour_of(screen: str, text: str) -> str:
    """The SGR foreground colour (30-37) in force where text starts on the captured screen."""
    before = screen[: screen.index(text)]
    return re.findall(r"\x1b\[(3[0-7])m", before)[-1]


@needs_tmux
def test_replay_of_managed_step_marks_the_overlap_in_colour_and_shows_help(tmp_path):
    """A real terminal: each finding's cells carry its number in its colour, as its title does; ? shows
    the columns explained and ? again brings the ledger back."""
    from report_recordings import fixture_recording
    from tmuxterm import Tmux
    path = fixture_recording("h100-cgroup2-scenario", str(tmp_path / "h100.db"))
    t = Tmux([*CLI, "replay", path], 120, 40)
    try:
        t.wait_for("REPLAY", timeout=30)
        t.send("p")
        t.send("Home")
        t.wait_for("REPLAY 1/10 PAUSED")
        for _ in range(6):
            t.send("Right")
        t.wait_for("REPLAY 7/10 PAUSED", "counted twice")         # 07-managed-1GiB-host-touched
        screen = t.capture(colours=True)
        row = [x for x in screen.split("\n") if "kernel, not itemised" in x][0]
        assert re.sub(r"\x1b\[[0-9;]*m", "", row).count("1 GiB²") >= 4, row
        managed, pinned = colour_of(screen, " ² "), colour_of(screen, " ¹ ")   # the findings list
        assert colour_of(row, "1 GiB²") == managed != pinned
        assert colour_of(screen, "1.01 GiB¹") == pinned
        t.send("?")
        help_ = t.wait_for("columns (each a view", "Total-Free     host not free", "NVML procs     NVML per-process")
        assert "where the bytes are counted" not in help_
        t.send("?")
        t.wait_for("where the bytes are counted")
        t.send("q")
        assert t.rc() == 0
    finally:
        t.close()


def test_replay_bad_files(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("not a recording")
    r = subprocess.run([*CLI, "replay", str(bad), "--json"], capture_output=True, text=True)
    assert r.returncode == 6 and r.stderr.count("\n") == 1 and "not a memprobe recording" in r.stderr
    r = subprocess.run([*CLI, "replay", str(tmp_path / "missing.db")], capture_output=True, text=True)
    assert r.returncode == 6 and "no such recording" in r.stderr


@root
def test_attach_demo_is_real_and_cleans_up():
    r = subprocess.run([*CLI, "attach", "--demo", "--no-bpf", "--interval", "100ms"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    demo = [x for x in lines if x.startswith("cgroup: ")][0].split()[2]
    rows = [x.split() for x in lines if x[:2].isdigit() and x[2] == ":" and "end:" not in x]
    assert len(rows) == 5 and "end: stopped after --count 5; 5 samples" in lines[-1]
    # current: 64 MiB anonymous + 64 MiB page cache + what the kernel charges beside them (page
    # tables, slab, the interpreter's heap since it joined: under a MiB, so 128 or 129 MiB shown)
    assert rows[-1][2] == "MiB" and rows[-1][1] in ("128", "129"), rows[-1]
    assert rows[-1][5:7] == ["64", "MiB"], rows[-1]   # anon
    from spark_memprobe.sources.cgroupfs import CgroupFS
    assert not os.path.exists(CgroupFS().directory(demo))
