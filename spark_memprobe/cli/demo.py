"""`attach --demo`: a throwaway memory cgroup with a process that holds known amounts of
memory, so the screen has something real to explain on a host without containers.

The child joins the cgroup, keeps 64 MiB of anonymous memory, writes a 64 MiB file and reads
it back (page cache charged to the cgroup), and maps it (file_mapped). Everything is removed
on exit."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid

from . import EXIT_MISSING, EXIT_PERMISSION, CliError

CHILD = r"""
import mmap, os, sys, time
open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write(str(os.getpid()))
anon = bytearray(64 << 20)
anon[::4096] = b"\1" * len(range(0, len(anon), 4096))
fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, os.urandom(1 << 20) * 64)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
m = mmap.mmap(fd, 64 << 20, prot=mmap.PROT_READ)
s = sum(m[i] for i in range(0, len(m), 4096))
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


class Demo:
    def __init__(self, cgroup_root: str = "/sys/fs/cgroup"):
        from ..sources.cgroupfs import CgroupFS
        cgfs = CgroupFS(cgroup_root)
        if cgfs.layout.memory_version is None:
            raise CliError(f"--demo needs a memory cgroup hierarchy (layout: {cgfs.layout.mode})", EXIT_MISSING)
        self.path = f"/memprobe-demo-{uuid.uuid4().hex[:8]}"
        self.dir = cgfs.directory(self.path)
        try:
            os.mkdir(self.dir, 0o755)
        except PermissionError:
            raise CliError("--demo creates a cgroup: run as root", EXIT_PERMISSION) from None
        self.tmp = tempfile.mkdtemp(prefix="memprobe-demo-", dir="/var/tmp")
        self.child = subprocess.Popen([sys.executable, "-c", CHILD, self.dir, os.path.join(self.tmp, "demo.bin")],
                                      stdout=subprocess.PIPE, text=True)
        if self.child.stdout.readline().strip() != "ready":
            self.close()
            raise CliError("--demo: the demo process did not start", EXIT_MISSING)

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        for _ in range(100):
            try:
                os.rmdir(self.dir)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        for f in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, f))
        os.rmdir(self.tmp)
