"""Property tests: for any readings, rows are never negative, every view's total is the sum of
the rows it counts, and the ledger does not depend on the order readings arrive in."""
from __future__ import annotations

import json
import random

from hypothesis import given, settings, strategies as st

from spark_memprobe.ledger import LedgerInputs, PageCacheBytes, build_ledger, ledger_to_dict
from spark_memprobe.samples import (CgroupSample, GpuProcess, GpuSample, HostInfo, Meminfo, PlatformProfile,
                                    ProcessSample, Sample)

PAGE = 4096
GiB = 1 << 30
CG = "/docker/abc"


def pages(hi: int = 4 * GiB):
    return st.integers(0, hi // PAGE).map(lambda n: n * PAGE)


@st.composite
def readings(draw):
    """(host, sample, inputs, consistent): consistent readings obey the kernel's own sums
    (memory.current >= the memory.stat parts, meminfo covers the target); the others are
    arbitrary page counts, as a torn or lagging read could give."""
    consistent = draw(st.booleans())
    platform = draw(st.sampled_from(["discrete", "integrated", "coherent-numa", "no-gpu", "unknown"]))
    anon, shmem, sock = draw(pages()), draw(pages(GiB)), draw(pages(1 << 24))
    active, inactive = draw(pages()), draw(pages())
    pc = active + inactive + draw(pages(1 << 24))
    slab_r, slab_u = draw(pages(1 << 26)), draw(pages(1 << 26))
    kstack, pt, percpu, drv = draw(pages(1 << 24)), draw(pages(1 << 26)), draw(pages(1 << 22)), draw(pages(GiB))
    kernel = slab_r + slab_u + kstack + pt + percpu + drv
    file = pc + shmem
    fm = draw(st.integers(0, (pc + shmem + drv) // PAGE)) * PAGE
    stat = {"anon": anon, "file": file, "shmem": shmem, "kernel": kernel, "slab": slab_r + slab_u,
            "slab_reclaimable": slab_r, "kernel_stack": kstack, "pagetables": pt, "sec_pagetables": 0,
            "percpu": percpu, "vmalloc": 0, "sock": sock, "file_mapped": fm, "active_file": active,
            "inactive_file": inactive, "file_dirty": draw(pages(1 << 24)), "file_writeback": 0}
    if not consistent:
        stat = {k: draw(pages()) if draw(st.booleans()) else v for k, v in stat.items()}
    charged = stat["anon"] + stat["file"] + stat["kernel"] + stat["sock"]
    current = charged + draw(pages(1 << 22)) if consistent else draw(pages(16 * GiB))
    procs = []
    for pid in draw(st.lists(st.integers(2, 99999), unique=True, max_size=4)):
        procs.append(ProcessSample(pid=pid, rss_anon_bytes=draw(pages()), rss_file_bytes=draw(pages()),
                                   rss_shmem_bytes=draw(pages(GiB))))
    cg = CgroupSample(path=CG, version=2, current_bytes=current, stat=stat,
                      max_bytes=draw(st.one_of(st.just("max"), pages(64 * GiB))),
                      procs=sorted(p.pid for p in procs) if draw(st.booleans()) else None)
    gpus = None
    gpu_target = 0
    if draw(st.booleans()):
        gpus = []
        for i in range(draw(st.integers(0, 2))):
            gp = [GpuProcess(pid=p.pid, kind="compute", used_bytes=draw(pages(8 * GiB))) for p in procs
                  if draw(st.booleans())]
            gp += [GpuProcess(pid=100000 + j, kind="compute", used_bytes=draw(pages(8 * GiB))) for j in range(2)]
            gpu_target += sum(p.used_bytes for p in gp if p.pid < 100000)
            mine = sum(p.used_bytes for p in gp)
            if platform == "integrated":
                g = GpuSample(index=i, memory_error="NOT_SUPPORTED", processes=gp)
            else:
                used = mine + draw(pages()) if consistent else draw(pages(16 * GiB))
                reserved = draw(pages(GiB))
                # NVML v2: total = used + free + reserved (nvml.h nvmlMemory_v2_t)
                g = GpuSample(index=i, total_bytes=80 * GiB, used_bytes=used,
                              free_bytes=max(0, 80 * GiB - used - reserved), reserved_bytes=reserved, processes=gp)
            gpus.append(g)
    lru_other, other = draw(pages(32 * GiB)), draw(pages(32 * GiB))
    krecl_other = draw(st.integers(0, other // PAGE)) * PAGE
    uma_gpu = gpu_target if platform == "integrated" and gpus else 0
    total = 512 * GiB
    free = total - (charged + uma_gpu + lru_other + other)
    avail = free + (active + inactive + lru_other) + (slab_r + krecl_other) - draw(pages(1 << 28))
    mi = {"MemTotal": total, "MemFree": free, "MemAvailable": avail, "Active(file)": active + lru_other,
          "Inactive(file)": inactive, "KReclaimable": slab_r + krecl_other, "Mapped": fm, "Cached": file}
    if not consistent:
        mi = {k: draw(pages(total)) if draw(st.booleans()) else v for k, v in mi.items()}
    s = Sample(mono_ns=1, wall_ns=1, meminfo=Meminfo(bytes=mi), cgroup=cg, processes=procs, gpus=gpus)
    host = HostInfo(page_size=PAGE, platform=PlatformProfile(platform, ["drawn"]))
    others = [CgroupSample(path=f"/other{i}", version=2, stat={"file_mapped": draw(pages()), "file": draw(pages())},
                           procs=[] if draw(st.booleans()) else [1]) for i in range(draw(st.integers(0, 3)))]
    cache = [PageCacheBytes(cgroup=draw(st.sampled_from([CG, "/other0", None])), bytes=draw(pages()),
                            inode=i, dev="fe:00", path=f"/f{i}") for i in range(draw(st.integers(0, 3)))]
    cuda = draw(st.one_of(st.none(), st.fixed_dictionaries({"managed": pages(), "host-pinned": pages()})))
    return host, s, LedgerInputs(page_cache=cache, others=others, cuda_bytes=cuda), consistent


@settings(max_examples=300, deadline=None)
@given(readings())
def test_rows_never_negative_and_views_add_up(r):
    host, s, inputs, consistent = r
    lg = build_ledger(host, s, inputs)
    for row in lg.rows:
        for col, v in row.cells.items():
            assert v is None or v >= 0, (row.key, col, v)
    top = [row for row in lg.rows if row.parent is None]
    for c in lg.columns:
        cells = [row.cells[c.key] for row in top if c.key in row.cells]
        assert c.excess_bytes >= 0
        if c.total is None or None in cells:
            continue
        assert sum(cells) - c.excess_bytes == c.total, c.key
        if consistent and c.key in ("current", "working_set", "stat_file", "stat_kernel", "stat_file_mapped",
                                    "host_used", "host_nofree", "nvml_used", "cuda_used"):
            assert c.excess_bytes == 0, c.key
    order = [(f.severity, f.bytes) for f in lg.findings]
    rank = {"critical": 0, "warning": 1, "info": 2}
    assert order == sorted(order, key=lambda x: (rank[x[0]], -x[1]))
    json.dumps(ledger_to_dict(lg))


def shuffled(host, s, inputs, seed):
    rnd = random.Random(seed)
    s2 = Sample(**{**s.__dict__, "processes": rnd.sample(s.processes, len(s.processes))})
    if s.gpus is not None:
        gpus = [GpuSample(**{**g.__dict__, "processes": rnd.sample(g.processes, len(g.processes))})
                for g in s.gpus]
        s2.gpus = rnd.sample(gpus, len(gpus))
    i2 = LedgerInputs(page_cache=rnd.sample(inputs.page_cache, len(inputs.page_cache)),
                      others=rnd.sample(inputs.others, len(inputs.others)), cuda_bytes=inputs.cuda_bytes)
    return host, s2, i2


@settings(max_examples=200, deadline=None)
@given(readings(), st.integers(0, 1 << 30))
def test_findings_do_not_depend_on_reading_order(r, seed):
    host, s, inputs, _ = r
    a = ledger_to_dict(build_ledger(host, s, inputs))
    b = ledger_to_dict(build_ledger(*shuffled(host, s, inputs, seed)))
    assert a == b
