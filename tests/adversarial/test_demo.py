"""`memprobe attach --demo` must leave nothing behind, even when memprobe is killed with
SIGKILL, and its cleanup of /var/tmp (world-writable) must not be turned against anything
but its own folders. Runs the real CLI as root; removes what it made, also on failure."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from spark_memprobe.sources.cgroupfs import CgroupFS, list_procs

CLI = [sys.executable, "-m", "spark_memprobe.cli"]
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the demo creates a cgroup (root)")


@pytest.fixture(autouse=True)
def memory_hierarchy():
    if CgroupFS().layout.memory_version is None:
        pytest.skip("no memory cgroup hierarchy")


def _demo_once() -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "attach", "--demo", "--json", "--count", "1", "--no-bpf"], capture_output=True,
                          text=True, timeout=60, cwd="/")


def _remove(cgroup_dir: str, folder: str) -> None:
    """Test cleanup, independent of the code under test."""
    for _ in range(100):
        try:
            for pid in list_procs(cgroup_dir):
                os.kill(pid, signal.SIGKILL)
            os.rmdir(cgroup_dir)
            break
        except (FileNotFoundError, ProcessLookupError):
            break
        except OSError:
            time.sleep(0.05)
    shutil.rmtree(folder, ignore_errors=True)


def test_kill_9_of_attach_demo_leaves_no_process_and_the_next_demo_removes_the_rest():
    """Attack (or accident): `kill -9` of `memprobe attach --demo` left its child holding
    128 MiB, the demo cgroup and a 64 MiB file in /var/tmp for good. Defence: the child dies
    with memprobe (PR_SET_PDEATHSIG), and the next demo removes the cgroup and folder of a
    demo whose memprobe no longer holds the lock on its folder."""
    p = subprocess.Popen([*CLI, "attach", "--demo", "--json", "--count", "1000", "--no-bpf"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
    cgroup_dir = folder = None
    try:
        target = json.loads(p.stdout.readline())["target"]
        cgroup_dir = target["cgroup_dir"]
        name = target["cgroup_path"].lstrip("/")
        folder = os.path.join("/var/tmp", name)
        child = target["processes"][0]["pid"]
        pidfd = os.pidfd_open(child)
        try:
            assert os.path.getsize(os.path.join(folder, "demo.bin")) == 64 << 20
            p.kill()
            p.wait()
            t0 = time.monotonic()
            gone = select.select([pidfd], [], [], 5)[0]     # a pidfd is readable once its process exits
            died_after = time.monotonic() - t0
        finally:
            os.close(pidfd)
        assert gone and died_after < 2, f"the demo child outlived memprobe by {died_after:.1f} s"
        assert os.path.isdir(cgroup_dir) and os.path.isdir(folder)          # what a killed demo leaves
        r = _demo_once()
        assert r.returncode == 0, r.stderr
        assert f"removed cgroup /{name}" in r.stderr and f"removed {folder}" in r.stderr, r.stderr
        assert not os.path.exists(cgroup_dir) and not os.path.exists(folder)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if cgroup_dir is not None:
            _remove(cgroup_dir, folder)


def test_demo_cleanup_touches_nothing_planted_in_var_tmp(tmp_path):
    """Attack: a local user plants, in world-writable /var/tmp, entries named like demo
    folders: symlinks to a directory holding demo.bin and a precious file, a directory of
    their own holding demo.bin, a root-owned world-writable one, and a FIFO (an open would
    block). Defence: the cleanup opens only root-owned real directories that only root may
    write (O_NOFOLLOW | O_DIRECTORY: no symlink followed, no FIFO opened) and unlinks only
    demo.bin inside them by descriptor; the demo starts and everything planted is intact."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "demo.bin").write_text("not yours")
    (victim / "precious").write_text("keep me")
    planted = {n: os.path.join("/var/tmp", n) for n in (
        "memprobe-demo-evil", "memprobe-demo-deadbeef", "memprobe-demo-cafef00d", "memprobe-demo-open0777",
        "memprobe-demo-f1f0f1f0")}
    try:
        os.symlink(victim, planted["memprobe-demo-evil"])
        os.symlink(victim, planted["memprobe-demo-deadbeef"])
        for n, owner, mode in (("memprobe-demo-cafef00d", NOBODY, 0o700), ("memprobe-demo-open0777", 0, 0o777)):
            os.mkdir(planted[n])
            (open(os.path.join(planted[n], "demo.bin"), "w")).close()
            os.chown(planted[n], owner, owner)
            os.chmod(planted[n], mode)
        os.mkfifo(planted["memprobe-demo-f1f0f1f0"])
        r = _demo_once()
        assert r.returncode == 0, r.stderr
        assert not any(n in r.stderr for n in planted), r.stderr
        assert sorted(os.listdir(victim)) == ["demo.bin", "precious"]
        for n in ("memprobe-demo-evil", "memprobe-demo-deadbeef"):
            assert os.readlink(planted[n]) == str(victim)
        for n in ("memprobe-demo-cafef00d", "memprobe-demo-open0777"):
            assert os.listdir(planted[n]) == ["demo.bin"]
        assert stat.S_ISFIFO(os.lstat(planted["memprobe-demo-f1f0f1f0"]).st_mode)
    finally:
        for path in planted.values():
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
