"""Page cache of named files: how much of a file is cached now (mincore(2)), and dropping its
clean pages (posix_fadvise DONTNEED), saying what stayed and why.

Only regular files are opened: the path is opened with O_PATH | O_NOFOLLOW (a FIFO does not
block, a device never reaches its driver, a planted last-component link is refused), fstat must
show S_ISREG, and only then is the file itself opened read-only through that descriptor
(docs/security.md). Nothing is ever written to a file.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Optional

CHUNK_BYTES = 1 << 30          # mincore one GiB at a time: a 100 GiB model needs a 256 KiB vector
RETRY_S = 1.0                  # how long evict() waits for writeback before calling pages dirty
RETRY_EVERY_S = 0.05

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class NotRegularFile(OSError):
    """The path is a symlink, FIFO, device, socket or directory: refused, never opened."""


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at path, or NotRegularFile / OSError."""
    pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(pfd)
        if stat.S_ISLNK(st.st_mode):
            raise NotRegularFile(f"{path}: is a symbolic link (not followed)")
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path}: not a regular file")
        # reopening an O_PATH descriptor through /proc/self/fd opens that very inode
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(pfd)
    return fd


_BIT0 = bytes(b & 1 for b in range(256))     # mincore: only bit 0 is defined (mincore(2))


def _resident_pages(fd: int, size: int) -> bytes:
    """One byte per page of the file: 1 where the page is in the page cache, else 0."""
    page = mmap.PAGESIZE
    out = bytearray()
    for off in range(0, size, CHUNK_BYTES):
        length = min(CHUNK_BYTES, size - off)
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, off)
        if addr in (None, _MAP_FAILED):
            e = ctypes.get_errno()
            raise OSError(e, f"mmap: {os.strerror(e)}")
        try:
            vec = ctypes.create_string_buffer((length + page - 1) // page)
            if _libc.mincore(addr, length, vec) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"mincore: {os.strerror(e)}")
            out += vec.raw
        finally:
            _libc.munmap(addr, length)
    return bytes(out).translate(_BIT0)


def _cached_of(vec: bytes, size: int) -> int:
    """Bytes cached; the last page counts only up to the end of the file."""
    page = mmap.PAGESIZE
    n = vec.count(1)
    if n and vec[-1] and size % page:
        return n * page - (page - size % page)
    return n * page


def cached_bytes(path: str) -> tuple[int, int]:
    """(bytes of the file in the page cache now, file size in bytes): mincore(2) on a read-only
    shared map, exact to the page. Raises NotRegularFile or OSError."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        return _cached_of(_resident_pages(fd, size), size), size
    finally:
        os.close(fd)


@dataclass
class Mapper:
    pid: int
    comm: str


@dataclass
class EvictResult:
    path: str
    file_bytes: int
    cached_before_bytes: int
    cached_after_bytes: int
    freed_bytes: int
    stayed_mapped_bytes: int          # in a range some process maps (the kernel skips mapped pages)
    stayed_dirty_bytes: int           # not mapped, still there after RETRY_S of writeback
    freed_after_writeback_bytes: int  # dirty at first, freed by a retry once written back
    mappers: list[Mapper] = field(default_factory=list)
    error: Optional[str] = None


def file_mappers(dev: int, ino: int, page: int, proc: str = "/proc") -> tuple[list[Mapper], list[tuple[int, int]]]:
    """Processes mapping the file (device, inode) and the page ranges [first, end) of the file
    their maps cover, merged, from /proc/PID/maps ("offset dev inode" columns,
    fs/proc/task_mmu.c show_map_vma)."""
    want_dev = f"{os.major(dev):02x}:{os.minor(dev):02x}".encode()
    mappers: list[Mapper] = []
    ranges: list[tuple[int, int]] = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"{proc}/{name}/maps", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                text = f.read()
        except OSError:                 # gone, or a kernel thread
            continue
        found = False
        for line in text.splitlines():
            cols = line.split(None, 5)
            if len(cols) < 6 or cols[4] != str(ino).encode() or cols[3] != want_dev:
                continue
            lo, hi = (int(x, 16) for x in cols[0].split(b"-"))
            first = int(cols[2], 16) // page
            ranges.append((first, first + (hi - lo + page - 1) // page))
            found = True
        if found:
            mappers.append(Mapper(int(name), _comm(proc, name)))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return mappers, merged


def _in_ranges(vec: bytes, ranges: list[tuple[int, int]]) -> int:
    """Resident pages of vec inside the page ranges."""
    return sum(vec[lo:hi].count(1) for lo, hi in ranges)


def _comm(proc: str, pid: str) -> str:
    try:
        fd = os.open(f"{proc}/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read(64).decode(errors="replace").strip()
    except OSError:
        return "?"


def evict(path: str, proc: str = "/proc") -> EvictResult:
    """Drop the clean page cache of this one file: posix_fadvise(DONTNEED) over the whole file,
    repeated for RETRY_S while unmapped pages remain (DONTNEED starts writeback of dirty pages
    and skips them, mm/fadvise.c generic_fadvise; a retry frees them once clean). What stays is
    split into pages inside a range some process maps (mapped pages are never invalidated,
    mm/truncate.c mapping_evict_folio) and the rest, reported as dirty or under writeback."""
    page = mmap.PAGESIZE
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        size = st.st_size
        if size == 0:
            return EvictResult(path, 0, 0, 0, 0, 0, 0, 0)
        before = _resident_pages(fd, size)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        first = after = _resident_pages(fd, size)
        mappers, mapped = file_mappers(st.st_dev, st.st_ino, page, proc)
        deadline = time.monotonic() + RETRY_S
        while time.monotonic() < deadline and after.count(1) > _in_ranges(after, mapped):
            time.sleep(RETRY_EVERY_S)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            after = _resident_pages(fd, size)
    finally:
        os.close(fd)
    cb, ca = _cached_of(before, size), _cached_of(after, size)
    stayed_mapped = min(_in_ranges(after, mapped) * page, ca)
    late = max(first.count(1) - after.count(1), 0) * page
    return EvictResult(path, size, cb, ca, max(cb - ca, 0), stayed_mapped, ca - stayed_mapped, late,
                       mappers if stayed_mapped else [])
