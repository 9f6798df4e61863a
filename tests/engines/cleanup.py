"""Leave nothing behind: processes we started (by PID), mounts under our temp dirs, cgroups
our engines created. Only what a test started is touched; nothing is matched by a broad name."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    out = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split(" ", 1)[0]
            if fstype in ("cgroup", "cgroup2"):
                out.append(left.split()[4])
    return out


def existing_cgroups(rel: str) -> set[str]:
    """Which hierarchies already have the cgroup `rel` (so teardown keeps those)."""
    return {m for m in cgroup_mounts() if os.path.isdir(os.path.join(m, rel.lstrip("/")))}


def remove_cgroup_tree(rel: str, keep_in: set[str] = frozenset()) -> list[str]:
    """rmdir the cgroup `rel` and everything below it, deepest first, in every hierarchy
    (except hierarchies listed in keep_in). Returns what could not be removed."""
    failed = []
    for m in cgroup_mounts():
        if m in keep_in:
            continue
        top = os.path.join(m, rel.lstrip("/"))
        if not os.path.isdir(top):
            continue
        dirs = []
        for d, subdirs, _ in os.walk(top, followlinks=False):
            dirs.append(d)
        for d in sorted(dirs, key=len, reverse=True):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)        # EBUSY while the last task is still exiting
            else:
                failed.append(d)
    return failed


def pids_mentioning(token: str) -> list[int]:
    """PIDs whose command line contains `token` (a unique temp path of ours)."""
    out = []
    for n in os.listdir("/proc"):
        if not n.isdigit() or int(n) == os.getpid():
            continue
        try:
            with open(f"/proc/{n}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    out.append(int(n))
        except OSError:
            continue
    return out


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL one process."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def unmount_under(base: str) -> None:
    """Unmount everything mounted below base, deepest first (overlay, shm, netns)."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == base or mp.startswith(base.rstrip("/") + "/"):
                mounts.append(mp)
    for mp in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
