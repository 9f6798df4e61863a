"""Real memory cgroups and a child process that allocates known sizes inside one.

Works on whichever hierarchy holds this host's memory controller (v1 on hybrid hosts,
v2 on pure v2 hosts). Used by live tests; everything created is removed in cleanup()."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from spark_memprobe.sources.cgroupfs import CgroupFS

MiB = 1 << 20

# The child: joins the cgroup, then obeys "anon N", "read PATH", "map PATH" (mmap and touch
# every page), "mapcold PATH" (mmap, touch nothing), "free", "exit" on stdin, answering "ok"
# after each so the test knows the memory is in place.
CHILD = r"""
import mmap, os, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
keep = []
print("ok", flush=True)
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "anon":
        b = bytearray(int(arg[0]))
        b[::4096] = b"\1" * len(range(0, len(b), 4096))   # touch every page
        keep.append(b)
    elif cmd == "read":
        with open(arg[0], "rb") as f:
            while f.read(1 << 20):
                pass
    elif cmd in ("map", "mapcold"):
        f = open(arg[0], "rb")
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        if cmd == "map":                       # resident and mapped
            sum(m[off] for off in range(0, len(m), 4096))
        keep.append((f, m))
    elif cmd == "free":
        keep.clear()
    elif cmd == "exit":
        break
    print("ok", flush=True)
"""


def fstype(path: str) -> str:
    """Filesystem type of the mount holding path (/proc/self/mounts: longest matching prefix)."""
    best, kind = "", "?"
    for line in open("/proc/self/mounts"):
        f = line.split()
        mnt = f[1].replace("\\040", " ")
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, f[2]
    return kind


def fresh_file(directory: str, size: int) -> str:
    """A file of `size` bytes whose pages are NOT in the page cache, so that the next
    reader's cgroup is charged for them (first touch owns the page). Written with O_DIRECT
    where the filesystem allows it (no page cache at all); else written, synced and dropped
    with POSIX_FADV_DONTNEED, which can leave a few pages behind."""
    import mmap
    path = os.path.join(directory, f"memprobe-test-{uuid.uuid4().hex[:8]}.bin")
    buf = mmap.mmap(-1, MiB)                      # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(MiB))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
        direct = True
    except OSError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        direct = False
    try:
        for _ in range(size // MiB):
            try:
                os.write(fd, buf)
            except OSError:                       # EINVAL: this filesystem refuses O_DIRECT
                if not direct:
                    raise
                os.close(fd)
                os.unlink(path)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                direct = False
                for _ in range(size // MiB):
                    os.write(fd, buf)
                break
        # pages still under writeback survive one DONTNEED (mm/fadvise.c skips them): try again,
        # for up to 5 s (callers that need none cached check resident_bytes themselves)
        for _ in range(100):
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if resident_bytes(path) == 0:
                break
            time.sleep(0.05)
    finally:
        os.close(fd)
        buf.close()
    return path


def resident_bytes(path: str) -> int:
    """Bytes of `path` in the page cache now, as mincore(2) sees them on a shared read-only map:
    the kernel's own answer, which the tests compare the probes with."""
    import ctypes
    import mmap
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
    finally:
        os.close(fd)
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = ctypes.create_string_buffer(pages)
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec.raw) * mmap.PAGESIZE
    finally:
        libc.munmap(addr, size)


def remove_cgroup_dir(d: str, tries: int = 100, wait_s: float = 0.05) -> bool:
    """rmdir a cgroup directory, again while it is busy (EBUSY until its killed tasks are gone);
    True once it is gone."""
    for _ in range(tries):
        try:
            os.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(wait_s)
    return False


class LiveCgroup:
    def __init__(self, cgroup_root: str = "/sys/fs/cgroup", parent: str = "/"):
        self.cgfs = CgroupFS(cgroup_root)
        if self.cgfs.layout.memory_version is None:
            raise RuntimeError("no memory controller on this host")
        self.version = self.cgfs.layout.memory_version
        self.path = os.path.join(parent, f"memprobe-test-{uuid.uuid4().hex[:10]}")
        self.dir = self.cgfs.directory(self.path)
        if self.version == 2 and parent.strip("/"):
            # v2: a child has memory.* files, and its own charges, only when its parent enables
            # the controller for its children (Documentation/admin-guide/cgroup-v2.rst, "Enabling
            # and Disabling"); without it every page is charged to the parent
            control = os.path.join(self.cgfs.directory(parent), "cgroup.subtree_control")
            with open(control) as f:
                enabled = f.read().split()
            if "memory" not in enabled:
                with open(control, "w") as f:
                    f.write("+memory")
        os.mkdir(self.dir, 0o755)
        self.child = None

    def start_child(self) -> int:
        self.child = subprocess.Popen([sys.executable, "-c", CHILD, self.dir], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self._wait_ok()
        return self.child.pid

    def _wait_ok(self):
        line = self.child.stdout.readline()
        if line.strip() != "ok":
            raise RuntimeError(f"child said {line!r}")

    def do(self, cmd: str) -> None:
        self.child.stdin.write(cmd + "\n")
        self.child.stdin.flush()
        self._wait_ok()

    def set(self, name: str, value: str) -> None:
        with open(f"{self.dir}/{name}", "w") as f:
            f.write(value)

    def stop_child(self) -> None:
        if self.child and self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    def cleanup(self) -> None:
        self.stop_child()
        if not remove_cgroup_dir(self.dir, tries=50):
            raise RuntimeError(f"could not remove {self.dir}")
