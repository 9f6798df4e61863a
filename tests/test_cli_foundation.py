"""snapshot and doctor as a user runs them: a real process, no TTY, exit codes."""
import json
import os
import subprocess
import sys

import pytest

STEP07 = os.path.join(os.path.dirname(__file__), "fixtures", "h100-cgroup2-scenario", "steps",
                      "07-managed-1GiB-host-touched")
FIX = ["--proc", f"{STEP07}/proc", "--cgroup-root", f"{STEP07}/cgroup"]


def memprobe(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "spark_memprobe.cli", *args], capture_output=True,
                          text=True, env=e, timeout=60)


def test_snapshot_json_on_fixture():
    r = memprobe(*FIX, "snapshot", "--cgroup", "memprobe_fixture", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    s = j["sample"]
    assert s["cgroup"]["current_bytes"] == 6061768704
    assert s["cgroup"]["stat"]["kernel"] == 1087737856
    assert s["meminfo"]["bytes"]["MemTotal"] == 131981020 * 1024
    assert j["header"]["sampler"] in ("native", "pure-python")


def test_snapshot_pid_on_fixture_plain_text():
    r = memprobe(*FIX, "snapshot", "--pid", "437")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out                        # no colour codes without a TTY
    assert "cgroup v2 /memprobe_fixture" in out and "5.65 GiB" in out and "python3" in out


@pytest.mark.parametrize("args,code,text", [
    (["snapshot", "--cgroup", "nope"], 3, "no such memory cgroup: nope"),
    (["snapshot", "--pid", "999999"], 3, "no process 999999"),
])
def test_snapshot_errors_are_one_line(args, code, text):
    r = memprobe(*FIX, *args)
    assert r.returncode == code
    assert r.stderr.strip().count("\n") == 0 and text in r.stderr


def test_purepython_forced_and_doctor_says_so():
    r = memprobe("doctor", "--json", env={"MEMPROBE_PUREPYTHON": "1"})
    assert r.returncode == 0
    native = [c for c in json.loads(r.stdout) if c["name"] == "native sampler"][0]
    assert native["ok"] is False and "MEMPROBE_PUREPYTHON=1" in native["detail"]
    r = memprobe(*FIX, "snapshot", "--cgroup", "memprobe_fixture", "--json", env={"MEMPROBE_PUREPYTHON": "1"})
    assert json.loads(r.stdout)["header"]["sampler"] == "pure-python"


def test_doctor_plain():
    r = memprobe("doctor")
    assert r.returncode == 0 and "cgroups" in r.stdout and "native sampler" in r.stdout
