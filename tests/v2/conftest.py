"""Fixtures of the cgroup v2 tier: see v2cg.py and docs/testing.md."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import pytest

import v2cg


@pytest.fixture(scope="session")
def v2root() -> str:
    root, why = v2cg.v2_state()
    if root is None:
        v2cg.skip_or_fail(why)
    return root


@pytest.fixture
def cgroups(v2root):
    cgs = v2cg.Cgroups(v2root)
    workers: list[v2cg.Worker] = []
    cgs.workers = workers
    yield cgs
    for w in workers:
        w.kill()
    left = cgs.remove_all()
    assert not left, f"could not remove test cgroups {left}"


@pytest.fixture
def worker_in(cgroups):
    """worker_in(cg): a new worker process moved into cg (killed in teardown)."""
    def start(cg: v2cg.Cgroup) -> v2cg.Worker:
        w = v2cg.Worker()
        cgroups.workers.append(w)
        cg.add(w.pid)
        w.do("ping")              # first faults inside the cgroup happen before any baseline
        return w
    return start


@pytest.fixture
def scratch(v2root):
    """A private folder on a disk-backed filesystem (page cache of a tmpfs file is shmem,
    charged to the writer: reading it charges nothing). The qemu tier provides an ext4
    disk at MEMPROBE_V2_SCRATCH."""
    cands = [os.environ.get("MEMPROBE_V2_SCRATCH"), tempfile.gettempdir(), "/var/tmp"]
    base = next((c for c in cands if c and os.path.isdir(c) and v2cg.fs_type(c) not in v2cg.NOT_DISK),
                None)
    if base is None:
        v2cg.skip_or_fail(f"no disk-backed scratch folder among {[c for c in cands if c]}")
    d = tempfile.mkdtemp(prefix="memprobe-v2-", dir=base)   # mode 0700
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sampler_classes():
    """Both samplers; the native one must be importable inside the qemu tier."""
    from spark_memprobe.sources.sampler import PureSampler
    try:
        from spark_memprobe.sources.native import NativeSampler
    except ImportError as e:
        v2cg.skip_or_fail(f"native sampler not built ({e})")
    return [PureSampler, NativeSampler]


@pytest.fixture
def open_samplers(v2root):
    """open_samplers(cg) -> [PureSampler, NativeSampler] on cg (closed in teardown)."""
    classes = sampler_classes()
    with contextlib.ExitStack() as stack:
        def opener(cg: v2cg.Cgroup):
            return [stack.enter_context(cls(cgroup_root=v2root, cgroup=cg.rel)) for cls in classes]
        yield opener
