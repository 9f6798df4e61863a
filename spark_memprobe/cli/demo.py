"""`attach --demo`: a throwaway memory cgroup with a process that holds known amounts of
memory, so the screen has something real to explain on a host without containers.

The child joins the cgroup, keeps 64 MiB of anonymous memory, writes a 64 MiB file and reads
it back (page cache charged to the cgroup), and maps it (file_mapped). Everything is removed
on exit. The child dies with memprobe, also on kill -9 (PR_SET_PDEATHSIG), and what a killed
memprobe left behind (its cgroup, its folder in /var/tmp) is removed by the next demo: a demo
is alive while its memprobe holds a lock on its folder."""
from __future__ import annotations

import fcntl
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid

from . import EXIT_MISSING, EXIT_PERMISSION, CliError

TMP = "/var/tmp"
# the names a demo gives its cgroup and folder; [a-z0-9_] also covers the folders that
# tempfile.mkdtemp named in versions before the lock
NAME = re.compile(r"memprobe-demo-[a-z0-9_]{8}")
DATA = "demo.bin"

CHILD = r"""
import ctypes, mmap, os, signal, sys, time
# die with memprobe, also on kill -9 (prctl(2) PR_SET_PDEATHSIG = 1); it fires when the thread
# that started us exits, and memprobe starts the demo from its main thread
ctypes.CDLL(None, use_errno=True).prctl(1, ctypes.c_ulong(signal.SIGKILL))
if os.getppid() != int(sys.argv[3]):
    sys.exit("memprobe exited before the demo started")
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
        from ..sources.child_process import isolated, python_argv
        cgfs = CgroupFS(cgroup_root)
        if cgfs.layout.memory_version is None:
            raise CliError(f"--demo needs a memory cgroup hierarchy (layout: {cgfs.layout.mode})", EXIT_MISSING)
        if os.geteuid() != 0:
            raise CliError("--demo creates a cgroup: run as root", EXIT_PERMISSION)
        self.name = f"memprobe-demo-{uuid.uuid4().hex[:8]}"
        self.path, self.dir, self.tmp = "/" + self.name, cgfs.directory("/" + self.name), os.path.join(TMP, self.name)
        self.child = self.fd = None
        self.tmp_fd = os.open(TMP, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for what in remove_stale(cgfs.memory_root(), self.tmp_fd):
                print(f"memprobe: removed {what}, left by a demo whose memprobe was killed", file=sys.stderr)
            os.mkdir(self.name, 0o700, dir_fd=self.tmp_fd)
            self.fd = _own_dir(self.tmp_fd, self.name)
            if self.fd is None:
                raise BlockingIOError
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # this demo is alive while memprobe is
            os.mkdir(self.dir, 0o755)
            self.child = subprocess.Popen(
                python_argv("-c", CHILD, self.dir, os.path.join(self.tmp, DATA), str(os.getpid())),
                stdout=subprocess.PIPE, text=True, **isolated({}))
            if self.child.stdout.readline().strip() != "ready":
                raise CliError("--demo: the demo process did not start", EXIT_MISSING)
        except BlockingIOError:          # another memprobe's cleanup took the new folder
            self.close()
            raise CliError("--demo: another memprobe was removing stale demos; try again", EXIT_MISSING) from None
        except OSError as e:
            self.close()
            raise CliError(f"--demo: {e.filename or self.tmp}: {e.strerror}", EXIT_MISSING) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        _remove_cgroup(self.dir)
        _remove_dir(self.tmp_fd, self.name, self.fd)
        os.close(self.tmp_fd)


def remove_stale(memory_root: str, tmp_fd: int) -> list[str]:
    """Remove the cgroups and folders of demos whose memprobe is gone; what was removed. A
    demo holds the lock on its folder before it makes its cgroup, so a demo cgroup whose
    folder is missing or unlocked is stale. /var/tmp is world-writable: only root-owned
    directories that no one else may write are touched, opened without following a symlink,
    and only the demo's own file is unlinked."""
    with os.scandir(memory_root) as it:
        cgroups = {e.name for e in it if NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False)}
    removed = []
    for name in sorted(cgroups | {n for n in os.listdir(tmp_fd) if NAME.fullmatch(n)}):
        fd = _own_dir(tmp_fd, name)
        if fd is None and name not in cgroups:
            continue                     # not a demo's folder: left alone
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:      # its memprobe is alive
                os.close(fd)
                continue
        if name in cgroups:
            _remove_cgroup(os.path.join(memory_root, name))
            removed.append(f"cgroup /{name}")
        if fd is not None:
            _remove_dir(tmp_fd, name, fd)
            removed.append(f"{TMP}/{name}")
    return removed


def _own_dir(tmp_fd: int, name: str):
    """An O_RDONLY descriptor of tmp/name if it is a real directory that root owns and only
    root may write; else None. O_NOFOLLOW refuses a symlink, O_DIRECTORY anything not a
    directory (a FIFO or device planted under the name fails before it is opened)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmp_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid == 0 and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o022:
        return fd
    os.close(fd)
    return None


def _remove_dir(tmp_fd: int, name: str, fd) -> None:
    """Unlink the demo's file inside the folder (by descriptor) and remove the folder. Its
    name cannot be swapped meanwhile: the folder is root's, in a sticky directory."""
    if fd is None:
        return
    try:
        os.unlink(DATA, dir_fd=fd)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(name, dir_fd=tmp_fd)
    except OSError:
        pass                              # something else is in it: left alone
    os.close(fd)


def _remove_cgroup(d: str) -> None:
    """Kill what is left in a demo cgroup and remove it (the kernel refuses while a process,
    even a dying one, is in it)."""
    from ..sources.cgroupfs import list_procs
    for _ in range(100):
        try:
            pids = list_procs(d)
        except FileNotFoundError:
            return
        for pid in pids:
            _kill_in(pid, d)
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def _kill_in(pid: int, d: str) -> None:
    """SIGKILL pid if it is still in cgroup d: a pidfd names the process itself, so a PID
    reused after the listing (by a process outside the cgroup) is not hit."""
    from ..sources.cgroupfs import list_procs
    try:
        pfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if pid in list_procs(d):
            signal.pidfd_send_signal(pfd, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass
    finally:
        os.close(pfd)
