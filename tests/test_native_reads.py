"""The native sampler reads a multi-record seq_file to its end. One pread of such a file returns
about a page although more follows (docs/facts.md#f-seq-read-short); /proc/vmstat is one, close
to a page on 4 KiB-page hosts. The oracle is a larger real one: /proc/<pid>/maps of a live child,
read through the vmstat slot ("key value" grammar, which every maps line fails)."""
import errno
import os
import subprocess
import sys

import pytest

try:
    from spark_memprobe._native import ffi, lib
except ImportError:
    lib = None

pytestmark = [pytest.mark.live, pytest.mark.skipif(lib is None, reason="native extension not built")]

# Maps one file N times, each its own VMA (the same offset twice cannot merge), then waits on
# stdin, so its /proc/<pid>/maps is many pages long and does not change while it waits.
CHILD = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
keep = [mmap.mmap(fd, 4096, prot=mmap.PROT_READ) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
sys.stdin.readline()
"""


def read_to_end(path):
    """What procfs.pread_all does: pread at the offset reached until it returns b""."""
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.pread(fd, 65536, 0)
        chunks, off = [first], len(first)
        while True:
            b = os.pread(fd, 65536, off)
            if not b:
                return first, b"".join(chunks)
            chunks.append(b)
            off += len(b)
    finally:
        os.close(fd)


@pytest.fixture
def child_maps(tmp_path):
    f = tmp_path / "m"
    f.write_bytes(b"\0" * 4096)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(f), "200"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        yield f"/proc/{p.pid}/maps"
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def test_vmstat_slot_reads_a_multi_record_seq_file_to_its_end(child_maps):
    first, whole = read_to_end(child_maps)
    page = os.sysconf("SC_PAGESIZE")
    lines = whole.splitlines()
    # the case itself: one pread stops short of a file that fits the C buffer (64 KiB)
    assert len(first) < len(whole) and 2 * page < len(whole) < 65536 - page, (len(first), len(whole))
    # read_fd reads on only after a first read of (page - 256) bytes or more: maps lines here
    # are far shorter than 256 bytes, as vmstat's are
    assert max(map(len, lines)) < 200

    t = ffi.gc(lib.mp_target_new(), lib.mp_target_free)
    assert lib.mp_target_set_file(t, lib.MP_SLOT_VMSTAT, child_maps.encode()) == 0
    s = ffi.new("struct mp_sample *")
    lib.mp_sample_once(t, s)
    h = s.hdr[lib.MP_SLOT_VMSTAT]

    assert read_to_end(child_maps)[1] == whole, "the child's maps changed during the test"
    assert (h.err, h.truncated) == (-errno.EBADMSG, 0)     # nothing parsed, nothing cut
    # every line of the whole file was seen (one read alone saw about a page of them)
    assert h.bad_lines == len(lines), (h.bad_lines, len(lines), first.count(b"\n"))
