"""sources/psi.py on the real kernel: a PSI trigger that fires under real memory stalls, the
limit events of a real memory cgroup (v1 here: memory.oom_control + memory.failcnt with an
eventfd; v2 elsewhere: memory.events), and no planted link or FIFO opened."""
from __future__ import annotations

import os
import select
import time

import pytest

from livecg import MiB, LiveCgroup, fresh_file
from spark_memprobe.sources.psi import EventsWatch, PsiTrigger, usage_from_raw

PSI = "/proc/pressure/memory"


@pytest.fixture
def cg():
    if os.geteuid() != 0:
        pytest.skip("needs root to create memory cgroups")
    try:
        c = LiveCgroup()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no memory cgroup can be created here: {e}")
    try:
        yield c
    finally:
        c.cleanup()


def limit(cg: LiveCgroup, n: int) -> None:
    cg.set("memory.limit_in_bytes" if cg.version == 1 else "memory.max", str(n))


def test_events_watch_wakes_on_oom_kill_and_counts_it(cg):
    cg.start_child()
    w = EventsWatch(cg.dir, cg.version)
    try:
        p = select.poll()
        p.register(w.fileno(), w.poll_events)
        assert p.poll(0) == [] and w.changes() == {}        # quiet cgroup: nothing to say
        used = usage_from_raw(os.pread(w.fds["usage"], 32, 0))
        assert used is not None and used > 0                 # the child's interpreter
        limit(cg, 32 * MiB)
        with pytest.raises(RuntimeError):
            cg.do(f"anon {64 * MiB}")                        # killed: no "ok" comes back
        cg.child.wait()
        assert p.poll(2000), "no wake-up on the OOM kill"
        grew = w.changes()
        assert grew.get("oom_kill") == 1 and grew.get("max", 0) > 0
        assert w.changes() == {}                             # increments, not totals
    finally:
        w.close()


def test_psi_trigger_fires_on_memory_stalls(cg, tmp_path):
    if not os.path.exists(PSI):
        pytest.skip(f"{PSI} absent: kernel without CONFIG_PSI (or psi=0)")
    # 1 ms of stall within 2 s (the window any caller may ask for: psi.py): a child reading a file four times its cgroup's limit reclaims
    # its own page cache all the time, and memcg reclaim counts as a memory stall (mm/vmscan.c
    # try_to_free_mem_cgroup_pages runs under psi_memstall_enter)
    t = PsiTrigger(PSI, stall_us=1000, window_us=2_000_000)
    path = fresh_file(str(tmp_path), 128 * MiB)
    try:
        assert not t.fired()
        cg.start_child()
        limit(cg, 32 * MiB)
        deadline = time.monotonic() + 10
        fired = False
        while not fired and time.monotonic() < deadline:
            cg.do(f"read {path}")
            fired = t.fired(1.0)
        assert fired, "no PSI wake-up while the child thrashed its page cache"
    finally:
        t.close()
        os.unlink(path)


def test_bad_arguments_and_planted_files_are_refused(tmp_path):
    with pytest.raises(ValueError):
        PsiTrigger(PSI, 1000, 2_000_000, kind="most")
    link = tmp_path / "pressure"
    link.symlink_to(PSI)
    with pytest.raises(OSError):
        PsiTrigger(str(link), 1000, 2_000_000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        PsiTrigger(str(fifo), 1000, 2_000_000)             # refused, and the open did not block
    d = tmp_path / "cg"
    d.mkdir()
    os.symlink("/proc/meminfo", d / "memory.events")
    with pytest.raises(OSError):
        EventsWatch(str(d), 2)
