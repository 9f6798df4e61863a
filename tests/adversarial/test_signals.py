"""SIGINT and SIGTERM against every memprobe command, as real processes (docs/exit-codes.md).

The rule under test: a command that runs until stopped (attach, record, probes --run, export,
replay's screen) exits 0 after its cleanup, whenever the signal comes; a one-shot command
(snapshot, doctor, ls, report, replay --json, probes) stopped mid-way exits 130; never a traceback.
Later signals are ignored while cleanup runs; one 5 s or more after the first forces exit 130.

One-shot commands finish in well under a second, so they are stopped at a point they always
reach: their stdout is a pseudo-terminal with output suspended (tcflow TCOOFF, what ^S does), and
the signal is sent once the process is blocked in write() on it (/proc/PID/syscall)."""
from __future__ import annotations

import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from report_recordings import fixture_recording

SIGNALS = [signal.SIGINT, signal.SIGTERM]
EXIT_S = 10.0                 # every command must be gone this long after the signal
# write and writev: x86_64 1, 20; arm64 64, 66 (the generic syscall table)
WRITE_NRS = {"x86_64": {"1", "20"}, "aarch64": {"64", "66"}}[os.uname().machine]


def memprobe(*args: str) -> list[str]:
    return [sys.executable, "-m", "spark_memprobe.cli", *args]


class Pty:
    """A pseudo-terminal (120x40) whose master side is drained into `data` by a thread."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.data = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:           # EIO: every slave descriptor is closed
                return
            if not chunk:
                return
            self.data += chunk

    def close(self) -> None:
        for fd in (self.slave, self.master):
            try:
                os.close(fd)
            except OSError:
                pass


def wait_for(cond, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_until(stream, needle: str, p: subprocess.Popen, timeout: float = 30.0) -> str:
    """Lines of `stream` up to the first that holds `needle` (the command is running)."""
    seen: list[str] = []
    t = threading.Thread(target=lambda: _lines(stream, needle, seen), daemon=True)
    t.start()
    t.join(timeout)
    assert seen and needle in seen[-1], f"no {needle!r} in {seen!r}; exit {p.poll()}"
    return "".join(seen)


def _lines(stream, needle: str, seen: list[str]) -> None:
    for line in stream:
        seen.append(line)
        if needle in line:
            return


def stop(p: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    """Send `sig`, then require an exit within EXIT_S; returns (code, stdout rest, stderr)."""
    p.send_signal(sig)
    return finish(p, sig)


def finish(p: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"still running {EXIT_S} s after {signal.Signals(sig).name}")
    return p.returncode, out or "", err or ""


def run_then_stop(args: list[str], needle: str, sig: int, stream: str = "stdout",
                  settle_s: float = 0.0) -> tuple[int, str, str, str]:
    """Start `memprobe ARGS`, wait for the line of `stream` holding `needle`, wait settle_s, send
    `sig`: (exit code, the lines read until then, the rest of stdout, stderr)."""
    p = subprocess.Popen(memprobe(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = read_until(getattr(p, stream), needle, p)
        time.sleep(settle_s)
        code, out, err = stop(p, sig)
    finally:
        kill_if_running(p)
    return code, ready, out, err


def kill_if_running(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    return fixture_recording("h100-cgroup2-scenario", str(tmp_path_factory.mktemp("rec") / "run.db"))


# -- commands that run until stopped: exit 0 ------------------------------------------------------

@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_attach_plain_exits_0(sig):
    """Attack: SIGINT/SIGTERM to `attach pid:<this test> --json` while it samples.
    Defence: it prints its end object (kind interrupted) and exits 0 with nothing on stderr."""
    code, _, out, err = run_then_stop(["attach", f"pid:{os.getpid()}", "--json", "--no-bpf", "--interval", "50ms"],
                                      '"type": "sample"', sig)
    assert code == 0 and err == "", err
    assert '"type": "end"' in out.splitlines()[-1] and '"interrupted"' in out.splitlines()[-1]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_record_exits_0_with_a_closed_file(sig, tmp_path):
    """Attack: SIGINT/SIGTERM to `record` while it records.
    Defence: exit 0, the summary line, and the .db alone (copied without -wal/-shm) replays."""
    out_db = tmp_path / "run.db"
    code, _, out, err = run_then_stop(["record", f"pid:{os.getpid()}", "-o", str(out_db), "--no-bpf",
                                       "--interval", "20ms"], "recording ", sig, settle_s=0.2)
    assert code == 0 and "Traceback" not in err, err
    assert_complete(out_db, out, tmp_path)


def assert_complete(db, out: str, tmp_path) -> None:
    """The recording file alone holds every sample the summary line counts."""
    summary = [x for x in out.splitlines() if x.startswith("recorded ")]
    assert summary, out
    n = int(summary[0].split()[1])
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(db, alone / "run.db")
    r = subprocess.run(memprobe("replay", str(alone / "run.db"), "--json"), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert n > 0 and len(r.stdout.splitlines()) == n


@pytest.mark.bpf
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_probes_run_exits_0_with_its_report(sig):
    """Attack: SIGINT/SIGTERM to `probes --run` while the probes are attached.
    Defence: it detaches, prints its report and exits 0."""
    from spark_memprobe.sources.bpf import base_status
    ok, why = base_status()
    if not ok:
        pytest.skip(f"eBPF probes unavailable here: {why}")
    code, _, out, err = run_then_stop(["probes", "--run", "--pid", str(os.getpid()), "--json", "--no-faults",
                                       "--no-pagecache", "--no-cuda", "--no-uvm"], "probes attached", sig, "stderr")
    assert code == 0 and "Traceback" not in err, err
    assert '"report"' in out


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_export_exits_0_and_frees_its_port(sig):
    """Attack: SIGINT/SIGTERM to `export` on a free loopback port while it serves.
    Defence: exit 0, no traceback, and the port is closed."""
    import socket
    code, ready, _, err = run_then_stop(["export", "--listen", "127.0.0.1:0", "--interval", "1s"], "serving http://",
                                        sig, "stderr")
    port = int(ready.splitlines()[-1].split("http://127.0.0.1:")[1].split("/")[0])
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def run_on_pty(argv: list[str], ready: bytes, sig: int) -> tuple[int, str]:
    t = Pty()
    try:
        p = subprocess.Popen(argv, stdin=t.slave, stdout=t.slave, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: ready in t.data, f"{ready!r} on the screen")
            code, _, err = stop(p, sig)
        finally:
            kill_if_running(p)
    finally:
        t.close()
    return code, err


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_replay_screen_exits_0(sig, recording):
    """Attack: SIGINT/SIGTERM to `replay` showing its screen on a terminal.
    Defence: the terminal is given back and it exits 0."""
    code, err = run_on_pty(memprobe("replay", recording), b"REPLAY", sig)
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_attach_screen_exits_0(sig):
    """Attack: SIGINT/SIGTERM to `attach` showing its live screen on a terminal.
    Defence: it leaves the screen and exits 0."""
    code, err = run_on_pty(memprobe("attach", f"pid:{os.getpid()}", "--no-bpf"), b"LIVE", sig)
    assert code == 0 and "Traceback" not in err, err


# -- one-shot commands stopped mid-way: exit 130 ----------------------------------------------------

ONE_SHOT = {
    "snapshot": lambda rec: ["snapshot"],
    "doctor": lambda rec: ["doctor"],
    "ls": lambda rec: ["ls"],
    "report": lambda rec: ["report", rec],
    "replay --json": lambda rec: ["replay", rec, "--json"],
    "probes": lambda rec: ["probes"],
}


def blocked_writing_stdout(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr, fd, *_ = f.read().split()
    except (OSError, ValueError):
        return False
    return nr in WRITE_NRS and fd == "0x1"


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("name", ONE_SHOT)
def test_one_shot_interrupted_exits_130(name, sig, recording):
    """Attack: SIGINT/SIGTERM to a one-shot command while it is blocked writing its output to a
    terminal whose output is suspended. Defence: exit 130, nothing on stderr."""
    t = Pty()
    termios.tcflow(t.slave, termios.TCOOFF)
    try:
        p = subprocess.Popen(memprobe(*ONE_SHOT[name](recording)), stdin=subprocess.DEVNULL, stdout=t.slave,
                             stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: blocked_writing_stdout(p.pid) or p.poll() is not None, "a write to stdout")
            assert p.poll() is None, f"{name} exited {p.returncode} without blocking: {p.stderr.read()}"
            p.send_signal(sig)
            termios.tcflow(t.slave, termios.TCOON)      # what is still buffered goes out at exit
            code, _, err = finish(p, sig)
        finally:
            kill_if_running(p)
    finally:
        t.close()
    assert code == 130 and err == "", err


# -- more signals while cleanup runs -------------------------------------------------------------

def test_record_second_ctrl_c_does_not_skip_closing(tmp_path):
    """Attack: Ctrl-C, then Ctrl-C every millisecond for 50 ms (so that some land while `record`
    commits and closes its file). Defence: later signals are ignored during cleanup: exit 0, no
    traceback, and the .db alone replays with every sample the summary counts."""
    out_db = tmp_path / "run.db"
    p = subprocess.Popen(memprobe("record", f"pid:{os.getpid()}", "-o", str(out_db), "--no-bpf", "--interval", "10ms"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_until(p.stdout, "recording ", p)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        end = time.monotonic() + 0.05
        while time.monotonic() < end and p.poll() is None:
            time.sleep(0.001)
            p.send_signal(signal.SIGINT)
        code, out, err = finish(p, signal.SIGINT)
    finally:
        kill_if_running(p)
    assert code == 0 and "Traceback" not in err, err
    assert_complete(out_db, out, tmp_path)


HANGING_CLEANUP = """
import signal, sys, time
from spark_memprobe.cli import _on_signal
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, _on_signal)
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("cleanup", flush=True)
    time.sleep(60)                # a cleanup that hangs
"""


def test_signal_after_5_s_of_stuck_cleanup_forces_exit():
    """Attack: a cleanup that hangs after Ctrl-C (memprobe's own signal handler, in a process
    whose cleanup sleeps). Defence: a second signal 0.2 s later is ignored; one 5 s after the
    first ends the process at once with exit 130 and one line."""
    p = subprocess.Popen([sys.executable, "-c", HANGING_CLEANUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        read_until(p.stdout, "ready", p)
        first = time.monotonic()
        p.send_signal(signal.SIGINT)
        read_until(p.stdout, "cleanup", p)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert p.poll() is None, "a second signal within 5 s ended the cleanup"
        time.sleep(max(0.0, first + 5.3 - time.monotonic()))
        code, _, err = stop(p, signal.SIGTERM)
        assert time.monotonic() - first < 7
    finally:
        kill_if_running(p)
    assert code == 130 and err.strip() == "memprobe: stopped by a second signal without finishing cleanup"
