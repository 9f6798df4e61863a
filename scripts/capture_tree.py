#!/usr/bin/env python3
"""Capture this host's memory files into a fixture tree the readers can take as roots.

    scripts/capture_tree.py DEST --pid PID            one process and its memory cgroup
    scripts/capture_tree.py DEST --workload           a throwaway cgroup with a child that
                                                      holds 64 MiB anonymous and 64 MiB of
                                                      page cache of a fresh file (needs root)
Layout written: DEST/proc/{meminfo,vmstat,<pid>/{status,smaps_rollup,cgroup}},
DEST/cgroup/<same layout as /sys/fs/cgroup for the memory hierarchy: root markers and the
target's memory.* files and cgroup.procs>, DEST/uname, DEST/CAPTURE.md (what and when).
Files are copied byte for byte (read once each with pread at offset 0)."""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spark_memprobe.sources.cgroupfs import CgroupFS, V1_FILES, V2_FILES, parse_proc_cgroup  # noqa: E402
from spark_memprobe.sources.procfs import read_file  # noqa: E402

CG_ROOT = "/sys/fs/cgroup"


def put(dest, rel, data):
    path = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def copy(dest, src, rel):
    try:
        put(dest, rel, read_file(src))
    except OSError as e:
        print(f"capture: skipped {src}: {e.strerror}", file=sys.stderr)


def capture(dest, pid):
    cgfs = CgroupFS(CG_ROOT)
    version, cgpath = cgfs.memory_cgroup_of(parse_proc_cgroup(read_file(f"/proc/{pid}/cgroup")))
    for f in ("meminfo", "vmstat"):
        copy(dest, f"/proc/{f}", f"proc/{f}")
    for f in ("status", "smaps_rollup", "cgroup"):
        copy(dest, f"/proc/{pid}/{f}", f"proc/{pid}/{f}")
    lay = cgfs.layout
    if lay.v2_root:     # markers detect_layout looks for
        copy(dest, f"{lay.v2_root}/cgroup.controllers", os.path.join("cgroup", os.path.relpath(lay.v2_root, CG_ROOT), "cgroup.controllers"))
    if lay.v1_memory_root:
        copy(dest, f"{lay.v1_memory_root}/memory.usage_in_bytes", "cgroup/memory/memory.usage_in_bytes")
    d = cgfs.directory(cgpath, version)
    rel = os.path.relpath(d, CG_ROOT)
    names = list((V2_FILES if version == 2 else V1_FILES).values()) + ["cgroup.procs"] + \
        (["memory.numa_stat"] if version == 2 else [])
    for name in names:
        copy(dest, f"{d}/{name}", f"cgroup/{rel}/{name}")
    put(dest, "uname", (" ".join(os.uname()) + "\n").encode())
    put(dest, "CAPTURE.md", (
        f"Captured by scripts/capture_tree.py on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n"
        f"host {os.uname().nodename}, kernel {os.uname().release}, cgroup layout {lay.mode}\n"
        f"process {pid}, memory cgroup v{version} {cgpath}\n").encode())
    return version, cgpath


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dest")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--pid", type=int)
    g.add_argument("--workload", action="store_true")
    a = ap.parse_args()
    if a.pid:
        print(capture(a.dest, a.pid))
        return
    from livecg import MiB, LiveCgroup, fresh_file
    cg = LiveCgroup(CG_ROOT)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        try:
            path = fresh_file(tmp, 64 * MiB)
            pid = cg.start_child()
            cg.do(f"anon {64 * MiB}")
            cg.do(f"read {path}")
            print(capture(a.dest, pid))
            with open(os.path.join(a.dest, "CAPTURE.md"), "a") as f:
                f.write(f"workload: child {pid} touched 64 MiB anonymous (bytearray) and read a fresh "
                        f"64 MiB file ({os.path.basename(path)}) after joining the cgroup\n")
        finally:
            cg.cleanup()


if __name__ == "__main__":
    main()
