"""Helpers for the cgroup v2 tier (tests/v2): detect a pure cgroup v2 host with the memory
controller without using the code under test, create real child cgroups, run a worker
process that allocates known sizes inside one, and remove everything again.

On CI machines (hybrid cgroups) these tests skip; scripts/qemu/v2_tier.py runs them in a
qemu guest with pure cgroup v2 and sets MEMPROBE_REQUIRE_V2=1 there, which turns every
skip for "not pure v2" into a failure: the tier cannot pass by skipping.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Optional

import pytest

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
V2_ROOT = "/sys/fs/cgroup"
SKIP_REASON = ("needs pure cgroup v2 with the memory controller; "
               "runs in the qemu tier (scripts/qemu/v2_tier.py)")
# memory.stat is flushed lazily from per-CPU batches (docs/facts.md#f-stat-lazy): a reading can
# lag by up to MEMCG_CHARGE_BATCH (64) pages per CPU (mm/memcontrol.c).
STAT_SLACK = 64 * PAGE * (os.cpu_count() or 1)


def required() -> bool:
    return os.environ.get("MEMPROBE_REQUIRE_V2") == "1"


def skip_or_fail(why: str):
    """Skip with the reason; inside the qemu tier (MEMPROBE_REQUIRE_V2=1) fail instead."""
    if required():
        pytest.fail(f"MEMPROBE_REQUIRE_V2=1 but {why}", pytrace=False)
    pytest.skip(why)


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, super options) from /proc/self/mountinfo (proc(5))."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5 and len(rfields) >= 3:
                out.append((fields[4], rfields[0], rfields[2].split(",")))
    return out


def v2_state() -> tuple[Optional[str], str]:
    """(v2 root, "") on a pure cgroup v2 host where root may create memory cgroups under
    /sys/fs/cgroup, else (None, why not)."""
    if os.geteuid() != 0:
        return None, f"{SKIP_REASON} (needs root to create cgroups)"
    mounts = _mounts()
    if any(t == "cgroup" and "memory" in o for _, t, o in mounts):
        return None, f"{SKIP_REASON} (this host has the memory controller on cgroup v1)"
    if not any(mp == V2_ROOT and t == "cgroup2" for mp, t, _ in mounts):
        return None, f"{SKIP_REASON} (no cgroup2 mounted at {V2_ROOT})"
    try:
        with open(f"{V2_ROOT}/cgroup.subtree_control") as f:
            sub = f.read().split()
    except OSError as e:
        return None, f"{SKIP_REASON} ({V2_ROOT}/cgroup.subtree_control: {e.strerror})"
    if "memory" not in sub:
        return None, f"{SKIP_REASON} (memory is not in {V2_ROOT}/cgroup.subtree_control)"
    return V2_ROOT, ""


def within(got: Optional[int], want: int, what: str = "", tol: Optional[float] = None) -> Optional[str]:
    """None when got is within tol bytes of want (default: 2 % of want), else what is wrong."""
    if got is None:
        return f"{what}: None (not read)"
    tol = 0.02 * want if tol is None else tol
    if abs(got - want) > tol:
        return (f"{what}: {got} bytes ({got / MiB:+.2f} MiB), want {want / MiB:.2f} MiB "
                f"within {tol / MiB:.2f} MiB")
    return None


def settle(sample_fn, check, timeout: float = 4.0):
    """Sample until check(sample) returns no errors, or fail with the last errors.
    (memory.stat can lag a flush period behind memory.current; docs/facts.md#f-stat-lazy)"""
    deadline = time.monotonic() + timeout
    while True:
        s = sample_fn()
        errs = [e for e in check(s) if e]
        if not errs:
            return s
        if time.monotonic() > deadline:
            pytest.fail("\n".join(errs), pytrace=False)
        time.sleep(0.2)


# -- cgroups --------------------------------------------------------------------------
class Cgroup:
    def __init__(self, root: str, rel: str):
        self.root = root
        self.rel = rel                       # path inside the v2 hierarchy, "/a/b"
        self.dir = os.path.join(root, rel.lstrip("/"))

    def write(self, name: str, value: str) -> None:
        fd = os.open(f"{self.dir}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def read(self, name: str) -> str:
        with open(f"{self.dir}/{name}") as f:
            return f.read()

    def add(self, pid: int) -> None:
        self.write("cgroup.procs", str(pid))


class Cgroups:
    """Creates cgroups under the v2 root; remove_all() kills what runs in them and removes
    them deepest first (also after a failed test: it runs in fixture teardown)."""

    def __init__(self, root: str):
        self.root = root
        self.made: list[Cgroup] = []

    def make(self, parent: Optional[Cgroup] = None, name: Optional[str] = None) -> Cgroup:
        name = name or f"memprobe-v2-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        rel = f"{parent.rel if parent else ''}/{name}"
        cg = Cgroup(self.root, rel)
        os.mkdir(cg.dir, 0o755)
        self.made.append(cg)
        return cg

    def remove_all(self) -> list[str]:
        problems = []
        for cg in sorted(self.made, key=lambda c: c.rel.count("/"), reverse=True):
            if not os.path.isdir(cg.dir):
                continue
            try:
                cg.write("cgroup.kill", "1")         # Linux 5.14+: SIGKILL to every process inside
            except OSError:
                pass
            for _ in range(100):                    # EBUSY until the killed tasks have exited
                try:
                    os.rmdir(cg.dir)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                problems.append(cg.dir)
        self.made.clear()
        return problems


# -- the worker process ---------------------------------------------------------------------
# Commands on stdin, "ok" on stdout after each. "anon N": map N bytes of private anonymous
# memory and write one byte in every page (mmap(-1, n) alone would be MAP_SHARED: shmem).
# "read PATH": read the file through a buffer allocated at start, so reading adds page cache
# and no anonymous memory. "free": unmap everything.
WORKER = r"""
import ctypes, mmap, os, sys
# PR_SET_THP_DISABLE (include/uapi/linux/prctl.h): with THP "always", a touch of the interpreter's
# own heap can take a whole 2 MiB huge page during a measurement (the arm64 tier once saw anon
# +66.00 MiB for a 64 MiB map)
ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)
buf = bytearray(1 << 16)
mv = memoryview(buf)
maps = []
print("ready", flush=True)
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "anon":
        n = int(arg[0])
        m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for off in range(0, n, mmap.PAGESIZE):
            m[off] = 1
        maps.append(m)
    elif cmd == "read":
        fd = os.open(arg[0], os.O_RDONLY)
        while os.readv(fd, [mv]) > 0:
            pass
        os.close(fd)
    elif cmd == "free":
        for m in maps:
            m.close()
        maps.clear()
    print("ok", flush=True)
"""


class Worker:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.pid = self.p.pid
        self._expect("ready")

    def _expect(self, word: str) -> None:
        line = self.p.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"worker {self.pid} said {line!r} (exit status {self.p.poll()})")

    def send(self, cmd: str) -> None:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def do(self, cmd: str) -> None:
        self.send(cmd)
        self._expect("ok")

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass


def fresh_file(directory: str, size: int) -> str:
    """A file of `size` bytes written by this process (outside the test cgroups), synced and
    dropped from the page cache, so the next reader's cgroup is charged for its pages."""
    path = os.path.join(directory, f"known-{uuid.uuid4().hex[:8]}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        chunk = b"\xa5" * MiB
        for _ in range(size // MiB):
            os.write(fd, chunk)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # clean pages leave the cache
    finally:
        os.close(fd)
    return path


NOT_DISK = {"tmpfs", "ramfs", "9p", "virtiofs", "nfs", "nfs4", "fuse", "devtmpfs"}


def fs_type(path: str) -> str:
    """Type of the filesystem holding path: the longest mount point that prefixes it."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    for mp, t, _ in _mounts():
        mp = mp.replace("\\040", " ")
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best, kind = mp, t
    return kind


def remove_when_empty(directory: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup whose processes were killed: EBUSY until they have fully exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
