"""The live screen and recordings end to end: views rendered to fixed-width consoles, attach
in a real terminal (tmux) against a real cgroup, record / kill -9 / replay through the CLI."""
import io
import json
import os
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
from spark_memprobe.views.tui import TuiState, render_screen, trend_point

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


def uprobes_left():
    with open("/sys/kernel/tracing/uprobe_events") as f:
        return [line for line in f.read().splitlines() if "libcuda" in line]


@root
@needs_tmux
def test_attach_tui_in_tmux_records_and_quits_clean(cg, tmp_path):
    from tmuxterm import Tmux
    rec = tmp_path / "tui.db"
    before = prog_ids()
    t = Tmux([*CLI, "attach", f"cgroup:{cg.path}", "--record", str(rec)], 100, 30)
    try:
        screen = t.wait_for("memprobe LIVE", "where the bytes are counted", "anon", "findings", timeout=60)
        assert cg.path in screen and ("64 MiB" in screen or "64.1 MiB" in screen or "64.2 MiB" in screen)
        ours = prog_ids() - before          # loaded while attach runs (other sessions' are in `before`)
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
    assert rows[-1][1:3] == ["128", "MiB"] and rows[-1][5:7] == ["64", "MiB"]   # current, anon
    from spark_memprobe.sources.cgroupfs import CgroupFS
    assert not os.path.exists(CgroupFS().directory(demo))
