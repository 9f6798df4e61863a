"""CUDA driver entry points we hook, and safe discovery of the libcuda.so.1 a process maps.

The library is found in /proc/<pid>/maps, then opened without trusting the container's
filesystem: first through /proc/<pid>/root with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS),
so symlinks resolve inside the process's root and never onto a host file; else through the
/proc/<pid>/map_files/<start>-<end> link, which the kernel resolves to the very file that is
mapped. Both are opened with O_PATH, which never opens the file itself: a FIFO or device
node mounted over the path by the target (a user and mount namespace suffice) neither blocks
us nor reaches a driver. The file must be a regular file with the device and inode that maps
shows. The uprobe is attached through /proc/self/fd/<n> of that O_PATH descriptor: bcc opens
that path to read the ELF symbols and perf_event_open resolves it to the inode (measured:
kernel 6.18, bcc 0.26). A uprobe sits on an inode, so every process mapping the same file is
covered, including ones started later."""
from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from dataclasses import dataclass
from typing import Iterable, Optional

from ...probe_report import CUDA_KINDS


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
    # cudaHostRegister pins memory the process already has (anon or page cache): counted apart
    # from cuMemHostAlloc, whose pages are new shmem (docs/facts.md#f-pinned-shmem)
    CudaFunc("cuMemHostRegister_v2", 12, "host-registered", "mp_cu_hostreg", "mp_cu_alloc_ret"),
    CudaFunc("cuMemHostUnregister", 13, None, "mp_cu_hostunreg", "mp_cu_free_ret"),
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
    # Waits for the target's mmap_lock (fs/proc/task_mmu.c m_start takes it for reading): a
    # target holding it (a page fault on its own FUSE file) stalls this read, so callers in a
    # sampling loop run it in a thread with a deadline (sources/background.py).
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
    fd: Optional[int] = None      # O_PATH descriptor, kept open while attached

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
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, resolve)
    fd = libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else f"file of mode {mode:o}"


def _mismatch(fd: int, e: MapsEntry) -> Optional[str]:
    """Why the file behind fd is not the mapped one; None when it is."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return f"is a {file_kind(st.st_mode)}, not a regular file"
    if (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)) != (e.inode, e.dev_major, e.dev_minor):
        return "is another file now"
    return None


def open_mapped_file(pid: int, e: MapsEntry, proc: str = "/proc", notes: Optional[list[str]] = None) -> tuple[int, str]:
    """Open (O_PATH) the file behind a maps entry safely: (fd, how). Raises OSError when
    neither way gives a regular file with the same device and inode. When the first way fails
    and the second works, why the first failed goes into `notes`."""
    errors = []
    if e.path.startswith("/"):
        try:
            root = os.open(f"{proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = _openat2(root, e.path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            finally:
                os.close(root)
            why = _mismatch(fd, e)
            if why is None:
                return fd, "root"
            os.close(fd)
            errors.append(f"{e.path} inside /proc/{pid}/root {why}")
        except OSError as err:
            errors.append(f"{proc}/{pid}/root{e.path}: {err.strerror}")
    try:
        # the kernel resolves this link to the mapped file itself (fs/proc/base.c map_files)
        fd = os.open(f"{proc}/{pid}/map_files/{e.start:x}-{e.end:x}", os.O_PATH | os.O_CLOEXEC)
        why = _mismatch(fd, e)
        if why is None:
            if notes is not None:
                notes.extend(errors)
            return fd, "map_files"
        os.close(fd)
        errors.append(f"the map_files link {why}")
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
            first: list[str] = []
            try:
                fd, how = open_mapped_file(pid, e, proc, first)
            except OSError as err:
                notes.append(f"pid {pid} maps {e.path} but it could not be opened safely: {err}")
                continue
            if first:
                notes.append(f"pid {pid} maps {e.path}: " + "; ".join(first) + f"; opened the mapped file via {how}")
            libs.append(CudaLibrary(e.dev_major, e.dev_minor, e.inode, e.path, f"/proc/self/fd/{fd}",
                                    how, pid, fd))
    return libs, notes


def open_explicit(path: str) -> CudaLibrary:
    """A library path given on the host by the user (trusted like any argument, but only a
    regular file: opening a FIFO would block and a device node would reach its driver)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"not a regular file (a {file_kind(st.st_mode)})", path)
    return CudaLibrary(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, os.path.abspath(path),
                       f"/proc/self/fd/{fd}", "explicit", None, fd)
