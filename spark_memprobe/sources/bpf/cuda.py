"""CUDA driver entry points we hook, and safe discovery of the libcuda.so.1 a process maps.

The library is found in /proc/<pid>/maps, then opened without trusting the container's
filesystem: first through /proc/<pid>/root with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS),
so symlinks resolve inside the process's root and never onto a host file; else through the
/proc/<pid>/map_files/<start>-<end> link, which the kernel resolves to the very file that is
mapped. Either way the opened file must have the device and inode that maps shows. The uprobe
is then attached through /proc/self/fd/<n> of that open file (a uprobe sits on an inode, so
every process mapping the same file is covered, including ones started later)."""
from __future__ import annotations

import ctypes
import os
import re
import stat
from dataclasses import dataclass
from typing import Iterable, Optional

from ...events import CUDA_KINDS


@dataclass(frozen=True)
class CudaFunc:
    name: str           # exported symbol of libcuda.so.1
    func_id: int        # MP_CU_FUNC_* in bpf/cuda.c (canonical name's number)
    kind: Optional[str]  # allocation kind; None for frees
    entry: str          # BPF function for the uprobe
    ret: str            # BPF function for the uretprobe
    optional: bool = False   # per-thread-default-stream variants: hooked when exported


CUDA_FUNCS = [
    CudaFunc("cuMemAlloc_v2", 0, "device", "mp_cu_alloc", "mp_cu_alloc_ret"),
    CudaFunc("cuMemAllocManaged", 1, "managed", "mp_cu_managed", "mp_cu_alloc_ret"),
    CudaFunc("cuMemAllocHost_v2", 2, "host-pinned", "mp_cu_host", "mp_cu_alloc_ret"),
    CudaFunc("cuMemHostAlloc", 3, "host-pinned", "mp_cu_hostalloc", "mp_cu_alloc_ret"),
    CudaFunc("cuMemAllocPitch_v2", 4, "device", "mp_cu_pitch", "mp_cu_alloc_ret"),
    CudaFunc("cuMemCreate", 5, "vmm", "mp_cu_create", "mp_cu_alloc_ret"),
    CudaFunc("cuMemAllocAsync", 6, "pool", "mp_cu_async", "mp_cu_alloc_ret"),
    CudaFunc("cuMemAllocFromPoolAsync", 7, "pool", "mp_cu_frompool", "mp_cu_alloc_ret"),
    CudaFunc("cuMemFree_v2", 8, None, "mp_cu_free", "mp_cu_free_ret"),
    CudaFunc("cuMemFreeHost", 9, None, "mp_cu_freehost", "mp_cu_free_ret"),
    CudaFunc("cuMemRelease", 10, None, "mp_cu_release", "mp_cu_free_ret"),
    CudaFunc("cuMemFreeAsync", 11, None, "mp_cu_freeasync", "mp_cu_free_ret"),
    # cuda.h maps these names to the _ptsz entry points under CU_API_PER_THREAD_DEFAULT_STREAM
    CudaFunc("cuMemAllocAsync_ptsz", 6, "pool", "mp_cu_async", "mp_cu_alloc_ret", True),
    CudaFunc("cuMemAllocFromPoolAsync_ptsz", 7, "pool", "mp_cu_frompool", "mp_cu_alloc_ret", True),
    CudaFunc("cuMemFreeAsync_ptsz", 11, None, "mp_cu_freeasync", "mp_cu_free_ret", True),
]
FUNC_NAMES = {f.func_id: f.name for f in CUDA_FUNCS if not f.optional}
KIND_BY_ID = dict(enumerate(CUDA_KINDS))
KIND_UNKNOWN = 255

LIB_RE = re.compile(r"(^|/)libcuda\.so(\.\d+)*$")

# openat2(2): include/uapi/linux/openat2.h; syscall 437 on every architecture (Linux 5.6+)
SYS_openat2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@dataclass
class MapsEntry:
    start: int
    end: int
    perms: str
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str


def parse_maps(data: str) -> list[MapsEntry]:
    """/proc/<pid>/maps lines (fs/proc/task_mmu.c show_map_vma: dev as hex major:minor)."""
    out = []
    for line in data.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        try:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            maj, mnr = (int(x, 16) for x in parts[3].split(":"))
            out.append(MapsEntry(start, end, parts[1], int(parts[2], 16), maj, mnr, int(parts[4]),
                                 parts[5].strip() if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out


def read_maps(pid: int, proc: str = "/proc") -> list[MapsEntry]:
    with open(f"{proc}/{pid}/maps", "r", errors="replace") as f:
        return parse_maps(f.read())


@dataclass
class CudaLibrary:
    dev_major: int
    dev_minor: int
    inode: int
    path: str                     # as the process sees it (or the host path given)
    attach_path: str              # what the uprobes are attached through
    how: str                      # "root" (openat2 in /proc/<pid>/root), "map_files", "explicit"
    pid: Optional[int] = None     # the process it was found in
    fd: Optional[int] = None      # kept open while attached

    @property
    def key(self) -> tuple[int, int, int]:
        return self.dev_major, self.dev_minor, self.inode

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _openat2(dirfd: int, path: str, resolve: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, resolve)
    fd = libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _matches(fd: int, e: MapsEntry) -> bool:
    st = os.fstat(fd)
    return (stat.S_ISREG(st.st_mode) and st.st_ino == e.inode
            and os.major(st.st_dev) == e.dev_major and os.minor(st.st_dev) == e.dev_minor)


def open_mapped_file(pid: int, e: MapsEntry, proc: str = "/proc") -> tuple[int, str]:
    """Open the file behind a maps entry safely: (fd, how). Raises OSError when neither way
    gives the same device and inode."""
    errors = []
    if e.path.startswith("/"):
        try:
            root = os.open(f"{proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = _openat2(root, e.path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            finally:
                os.close(root)
            if _matches(fd, e):
                return fd, "root"
            os.close(fd)
            errors.append(f"{e.path} inside /proc/{pid}/root is another file now")
        except OSError as err:
            errors.append(f"{proc}/{pid}/root{e.path}: {err.strerror}")
    try:
        # the kernel resolves this link to the mapped file itself (fs/proc/base.c map_files)
        fd = os.open(f"{proc}/{pid}/map_files/{e.start:x}-{e.end:x}", os.O_RDONLY | os.O_CLOEXEC)
        if _matches(fd, e):
            return fd, "map_files"
        os.close(fd)
        errors.append("map_files link gives another file")
    except OSError as err:
        errors.append(f"map_files: {err.strerror}")
    raise OSError("; ".join(errors))


def all_pids(proc: str = "/proc") -> list[int]:
    return sorted(int(n) for n in os.listdir(proc) if n.isdigit())


def discover(pids: Optional[Iterable[int]] = None, proc: str = "/proc",
             known: Iterable[tuple[int, int, int]] = ()) -> tuple[list[CudaLibrary], list[str]]:
    """libcuda.so* files mapped by the given processes (all when None), one per (dev, inode),
    skipping `known` ones; opened safely. Returns (libraries, notes about failures)."""
    seen = set(known)
    libs: list[CudaLibrary] = []
    notes: list[str] = []
    for pid in (all_pids(proc) if pids is None else pids):
        try:
            entries = read_maps(pid, proc)
        except (OSError, ValueError):
            continue
        for e in entries:
            if not LIB_RE.search(e.path) or (e.dev_major, e.dev_minor, e.inode) in seen:
                continue
            seen.add((e.dev_major, e.dev_minor, e.inode))
            try:
                fd, how = open_mapped_file(pid, e, proc)
            except OSError as err:
                notes.append(f"pid {pid} maps {e.path} but it could not be opened safely: {err}")
                continue
            libs.append(CudaLibrary(e.dev_major, e.dev_minor, e.inode, e.path, f"/proc/self/fd/{fd}",
                                    how, pid, fd))
    return libs, notes


def open_explicit(path: str) -> CudaLibrary:
    """A library path given on the host by the user (trusted like any argument)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    return CudaLibrary(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, os.path.abspath(path),
                       f"/proc/self/fd/{fd}", "explicit", None, fd)
