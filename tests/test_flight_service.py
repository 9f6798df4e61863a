"""The flight recorder as scripts/memprobe-recorder.service runs it (issue 22: an OOM kill recorded
"while the recorder runs as a service"). The CI machine's PID 1 is not systemd, so the unit runs
here in the two parts that can be had without it:
- `systemd-analyze verify` loads the shipped units offline: every key, capability, system-call
  group and device class must be known to this systemd (it warns and exits 0 on unknown ones, so
  any output fails the test);
- the unit's own ExecStart command line (its --dir made a temporary directory, the test cgroup
  added as a target) runs under what of the unit applies without systemd: CapabilityBoundingSet
  and NoNewPrivileges (setpriv), UMask, Nice, MemoryMax (a memory cgroup of its own), KillSignal
  and TimeoutStopSec. SystemCallFilter, RestrictAddressFamilies and the Protect* mounts are built
  by systemd itself and are not applied here."""
from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import redirect_stdout

import pytest

from livecg import MiB, LiveCgroup
from test_flight import base_files, wait_for
from test_psi import cg  # noqa: F401 - the live cgroup fixture
from spark_memprobe.analysis.flight import flight_files
from spark_memprobe.cli import main
from spark_memprobe.cli.args import duration, size

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
UNITS = [os.path.join(ROOT, "scripts", n) for n in ("memprobe-recorder.service", "memprobe-exporter.service")]
INSTALLED = "/opt/spark_memprobe/.venv/bin/memprobe"       # where the units expect the checkout
MEMPROBE = os.path.join(os.path.dirname(sys.executable), "memprobe")   # this checkout's (setup.sh)
# capability(7) numbers of the names a unit may keep
CAP_BITS = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
            "CAP_PERFMON": 38, "CAP_BPF": 39}
# a launcher that joins a cgroup, then becomes the command: isolated (-I), nothing imported from here
JOIN = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execvp(sys.argv[2], sys.argv[2:])"


def service(path: str) -> dict[str, list[str]]:
    """The [Service] section of a unit file: key -> its values in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


@pytest.fixture
def installed_units(tmp_path):
    if not os.access(MEMPROBE, os.X_OK):
        pytest.skip(f"{MEMPROBE} missing: the package is not installed in this Python's environment "
                    "(scripts/setup.sh does it)")
    out = []
    for u in UNITS:
        text = open(u).read()
        assert INSTALLED in text, u
        p = tmp_path / os.path.basename(u)
        p.write_text(text.replace(INSTALLED, MEMPROBE))
        out.append(str(p))
    return out


def test_units_load_without_a_warning(installed_units):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing (Debian package systemd; scripts/setup.sh --test installs it)")
    for u in installed_units:
        p = subprocess.run(["systemd-analyze", "verify", u], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), (u, p.stdout + p.stderr)


def test_the_units_command_under_its_confinement_records_an_oom_kill(installed_units, cg, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing (Debian package util-linux)")
    unit = service(installed_units[0])
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[0] == MEMPROBE and argv[1] == "record" and "--dir" in argv
    d = str(tmp_path / "flight")
    os.mkdir(d, int(unit["StateDirectoryMode"][0], 8))       # what StateDirectory= makes
    argv[argv.index("--dir") + 1] = d
    argv += [f"cgroup:{cg.path}"]
    keep = unit["CapabilityBoundingSet"][0].split()
    assert unit["NoNewPrivileges"] == ["yes"]
    bounding = "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in keep)
    cmd = ["setpriv", "--no-new-privs", f"--bounding-set={bounding}", "--", "nice", "-n", unit["Nice"][0], *argv]

    svc = LiveCgroup()                                       # the unit's MemoryMax
    p = None
    try:
        max_bytes = size(unit["MemoryMax"][0])        # systemd: K, M, G are 1024-based too
        svc.set("memory.limit_in_bytes" if svc.version == 1 else "memory.max", str(max_bytes))
        cg.start_child()
        cg.set("memory.limit_in_bytes" if cg.version == 1 else "memory.max", str(96 * MiB))
        p = subprocess.Popen([sys.executable, "-I", "-c", JOIN, f"{svc.dir}/cgroup.procs", *cmd],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             umask=int(unit["UMask"][0], 8), cwd=str(tmp_path))
        label = f"cgroup:{cg.path}".replace(":", "_").replace("/", "_")
        wait_for(lambda: base_files(d, label) and base_files(d, "host"), timeout=30)
        status = dict(line.split(":", 1) for line in open(f"/proc/{p.pid}/status"))
        time.sleep(1.0)
        for _ in range(4):
            cg.do(f"anon {8 * MiB}")
            time.sleep(0.5)
        with pytest.raises(RuntimeError):
            cg.do(f"anon {128 * MiB}")
        cg.child.wait()
        wait_for(lambda: any(f.kind == "event" for f in flight_files(d)), timeout=15)
        time.sleep(1.0)
        p.send_signal(getattr(signal, unit["KillSignal"][0]))
        out, _ = p.communicate(timeout=duration(unit["TimeoutStopSec"][0]))
        peak = int(open(f"{svc.dir}/{'memory.max_usage_in_bytes' if svc.version == 1 else 'memory.peak'}").read())
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        svc.cleanup()
    # it ran with the unit's capabilities only, no new privileges, in the unit's memory cgroup
    assert int(status["CapEff"], 16) == sum(1 << CAP_BITS[c] for c in keep), status["CapEff"]
    assert status["NoNewPrivs"].strip() == "1"
    assert p.returncode == 0, out[-3000:]
    assert "trigger oom_kill" in out, out[-3000:]
    assert 0 < peak < max_bytes, peak
    # files as tight as the unit's UMask, all closed whole by the stop signal (no -wal, no -shm)
    names = os.listdir(d)
    assert names and all(n.endswith(".db") for n in names), names
    assert all(stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) == 0o600 for n in names)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    # the unit's after-an-incident command (its header) over what it wrote
    text = io.StringIO()
    with redirect_stdout(text):
        assert main(["report", d, "--event", "oom"]) == 0
    md = text.getvalue()
    assert "OOM kill in memory cgroup" in md and "anon +" in md.split("before it: ", 1)[1].split("|")[0], md[:3000]
