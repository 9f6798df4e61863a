"""fentry in the guest's stock kernel (the qemu tier): the host kernel refuses fentry (EPERM,
docs/facts.md#f-vm); Debian's 6.1 kernel in the guest allows it. One fentry probe on
page_counter_try_charge (mm/page_counter.c, a global function, so it is in vmlinux BTF)
sums the pages charged per cgroup v2 id (bpf_get_current_cgroup_id, no struct walks) while
a worker in a throwaway cgroup touches N MiB of anonymous memory.

Needs bcc (Debian python3-bpfcc) and linux-headers-<uname -r> matching the running kernel
exactly: the qemu tier boots the kernel of linux-image-amd64 and scripts/setup.sh --test
installs linux-headers-amd64 of the same version. Skips, with the reason, where either
is missing.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from spark_memprobe.sources.cgroupfs import cgroup_id
from v2cg import MiB, PAGE, STAT_SLACK, within

pytestmark = [pytest.mark.cgroup_v2, pytest.mark.bpf,
              pytest.mark.filterwarnings("ignore:not a bytes object:DeprecationWarning")]

DEBIAN_BCC = "/usr/lib/python3/dist-packages/bcc"

PROG = r"""
BPF_HASH(charged, u64, u64, 1024);

KFUNC_PROBE(page_counter_try_charge, void *counter, unsigned long nr_pages, void *fail)
{
    u64 id = bpf_get_current_cgroup_id();
    u64 zero = 0, *v = charged.lookup_or_try_init(&id, &zero);
    if (v)
        __sync_fetch_and_add(v, nr_pages);
    return 0;
}
"""


def import_bcc():
    """bcc from the venv if it is there, else Debian's python3-bpfcc module (pure Python
    over libbcc through ctypes; PyPI's `bcc` is an unrelated package)."""
    try:
        import bcc
        return bcc
    except ImportError:
        pass
    if not os.path.isfile(f"{DEBIAN_BCC}/__init__.py"):
        pytest.skip("bcc is not installed (Debian python3-bpfcc; scripts/setup.sh installs it)")
    spec = importlib.util.spec_from_file_location("bcc", f"{DEBIAN_BCC}/__init__.py",
                                                  submodule_search_locations=[DEBIAN_BCC])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_fentry_counts_charged_pages_per_cgroup(cgroups, worker_in):
    release = os.uname().release
    if not os.path.isdir(f"/lib/modules/{release}/build/include"):
        pytest.skip(f"no linux-headers-{release}: bcc needs headers of exactly the running kernel "
                    "(linux-headers-amd64 must match linux-image-amd64)")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no /sys/kernel/btf/vmlinux: fentry needs kernel BTF")
    bcc = import_bcc()
    if not bcc.BPF.support_kfunc():
        pytest.skip("bcc says this kernel does not support fentry (kfunc) probes")
    cg = cgroups.make()
    cgid = cgroup_id(cg.dir)
    w = worker_in(cg)
    n = 32 * MiB
    b = bcc.BPF(text=PROG.encode())        # KFUNC_PROBE attaches on load; EPERM here would be the host's refusal
    try:
        w.do(f"anon {n}")
        table = b[b"charged"]
        got = {k.value: v.value for k, v in table.items()}
    finally:
        b.cleanup()
    pages = got.get(cgid)
    assert pages is not None, f"no charge seen for cgroup id {cgid}; ids seen: {sorted(got)}"
    # try_charge_memcg charges in batches of MEMCG_CHARGE_BATCH pages and keeps the rest as
    # per-CPU stock (mm/memcontrol.c): the sum can exceed the touched size by that slack.
    err = within(pages * PAGE, n, what="pages charged under the worker's cgroup id",
                 tol=0.02 * n + STAT_SLACK)
    assert err is None, err
