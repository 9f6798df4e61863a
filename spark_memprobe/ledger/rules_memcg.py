"""Rules about how memory cgroups, processes and the GPU driver count the same pages. They hold
on every platform (the UVM, pinned-memory and first-touch behaviour is the kernel's and the
driver's, not the hardware's)."""
from __future__ import annotations

from .facts import under
from .inputs import CUDA_MANAGED, CUDA_PINNED
from .model import Finding, Part
from .rules_common import MiB, Ctx, Skip, b, by_size, noise, short

CG2 = "Documentation/admin-guide/cgroup-v2.rst"
UNKNOWN_OWNER = "an unknown cgroup (cached before the probes started)"   # a first-touch owner None
NO_OWNER = "other cgroups (owner not read)"                               # first touch without owners


def managed_double_view(c: Ctx):
    """Managed (UVM) CPU pages counted in memcg `kernel` AND again in file_mapped / RssFile.

    Overlap: UVM allocates the CPU pages of cudaMallocManaged memory with __GFP_ACCOUNT (memcg
    kmem, memory.stat kernel) and maps them into the process with a file-style rmap, so they
    are also in file_mapped, meminfo Mapped and the process's RssFile, while never being page
    cache (not in `file`). Hence file_mapped > file, which page cache alone cannot produce.
    memory.current counts them once; anyone adding kernel and mapped file memory counts twice.
    Bytes: at most min(unitemised kernel, file_mapped), at least file_mapped - file (eBPF
    managed bytes narrow it). Sources: measured on the H100 fixture (docs/facts.md#f-managed-double-view,
    step 07); cgroup-v2.rst memory.stat (kernel, file, file_mapped).
    """
    f, d = c.f, c.d
    if not f.has_cgroup:
        return Skip("no target cgroup")
    if d.driver_mapped is None:
        return Skip(d.driver_mapped_basis)
    if d.driver_mapped < noise(c):
        return None
    fm, file = f.s("file_mapped"), f.s("file")
    ev = [f"memory.stat file_mapped {b(fm)} vs file {b(file)}" +
          (f": {b(fm - file)} mapped 'file' pages that are not page cache" if fm > file else ""),
          f"memory.stat kernel {b(f.s('kernel'))}, of which not itemised (slab, stacks, page tables, percpu, "
          f"vmalloc): {b(d.driver_kernel) if d.driver_kernel is not None else 'unknown on cgroup v1'}",
          f"estimate: {d.driver_mapped_basis}"]
    if f.rss_file is not None:
        ev.append(f"the target's processes' RssFile ({b(f.rss_file)}) includes these pages too")
    if f.m("Mapped") is not None and f.m("Cached") is not None:
        ev.append(f"host: meminfo Mapped {b(f.m('Mapped'))} vs Cached {b(f.m('Cached'))}")
    managed = (c.inputs.cuda_bytes or {}).get(CUDA_MANAGED)
    if managed is not None:
        ev.append(f"eBPF: live cudaMallocManaged bytes of the target = {b(managed)}")
    low = d.driver_mapped_low
    conf = "high" if managed is not None or (low is not None and low >= 0.9 * d.driver_mapped) else "medium"
    return Finding("managed_double_view", f"{short(d.driver_mapped)} of managed (UVM) CPU memory counted as kernel "
                   f"AND as mapped file", d.driver_mapped, "warning", conf, ev,
                   ["docs/facts.md#f-managed-double-view (H100 fixture, step 07)", CG2 + " memory.stat kernel, file, file_mapped"],
                   bytes_low=low, rows=[Part("driver_kernel", d.driver_mapped)])


def driver_kernel_memory(c: Ctx):
    """Kernel memory charged to the cgroup that no memory.stat part and no process view shows.

    Overlap: none; this is a blind spot. memory.stat kernel includes 'other kernel memory use
    cases' beyond slab, stacks, page tables, percpu and vmalloc (cgroup-v2.rst): allocations
    drivers make with __GFP_ACCOUNT. UVM keeps managed CPU pages charged here even after the
    data migrated to the GPU (H100 fixture step 08: kernel stays +1 GiB, file_mapped drops).
    The part mapped into processes is the managed double view; this rule reports the rest.
    """
    f, d = c.f, c.d
    if not f.has_cgroup:
        return Skip("no target cgroup")
    if d.driver_kernel is None:
        return Skip("kernel not itemised (cgroup v1, or the parts were not read)")
    hidden = d.driver_kernel - (d.driver_mapped or 0)
    if hidden < 16 * MiB:
        # slab pages partly filled and small driver allocations (a CUDA context: about 2 MiB)
        return None
    ev = [f"memory.stat kernel {b(f.s('kernel'))} - itemised parts {b(d.kernel_items)} = {b(d.driver_kernel)}",
          f"of which mapped into processes (managed double view): {b(d.driver_mapped)}",
          "not in RSS, not in file or anon: only memory.current and memory.stat kernel show it"]
    return Finding("driver_kernel_memory", f"{short(hidden)} of driver kernel memory (e.g. UVM CPU pages) that no "
                   "process view shows", hidden, by_size(hidden, f.current), "medium", ev,
                   [CG2 + " memory.stat kernel", "docs/facts.md#f-managed-migrated (H100 fixture, step 08)"],
                   rows=[Part("driver_kernel", hidden)])


def pinned_shmem(c: Ctx):
    """Pinned host memory charged as shmem: inside `file` and Cached, but not reclaimable.

    Overlap: memory.stat file includes shmem (cgroup-v2.rst: shmem is 'cached filesystem data
    that is swap-backed, such as tmpfs, shm segments, shared anonymous mmap()s'), and
    meminfo Cached includes Shmem (proc.rst). CUDA pinned host memory (cudaHostAlloc) is a
    shared anonymous mapping, so it lands here (H100 fixture step 06: shmem and file +1 GiB,
    RssShmem +1 GiB). A tool reading file/Cached as 'cache, can be dropped' overstates what
    reclaim can free by these bytes; they sit on the anon LRU and can only be swapped.
    """
    f = c.f
    if not f.has_cgroup:
        return Skip("no target cgroup")
    shmem = f.s("shmem")
    if shmem is None:
        return Skip("memory.stat shmem not read")
    if shmem < noise(c):
        return None
    ev = [f"memory.stat shmem {b(shmem)} is inside file {b(f.s('file'))}: not reclaimable page cache"]
    if f.rss_shmem is not None:
        ev.append(f"the target's processes map {b(f.rss_shmem)} of shmem (RssShmem)")
    pinned = (c.inputs.cuda_bytes or {}).get(CUDA_PINNED)
    if pinned is not None:
        ev.append(f"eBPF: live cudaHostAlloc (pinned) bytes of the target = {b(pinned)}")
    if f.platform == "integrated":
        ev.append("integrated UMA: pinned memory is the same RAM the GPU allocates from")
    return Finding("pinned_shmem", f"{short(shmem)} of shmem (CUDA pinned host memory lands here) counted as file "
                   "cache but not reclaimable", shmem, by_size(shmem, f.current),
                   "high" if pinned is not None else "medium", ev,
                   [CG2 + " memory.stat shmem, file", "Documentation/filesystems/proc.rst Cached, Shmem",
                    "docs/facts.md#f-pinned-shmem (H100 fixture, step 06)"], rows=[Part("shmem", shmem)])


def _ebpf_first_touch(c: Ctx):
    """(bytes, evidence, {owner: bytes}, files) from eBPF page-cache ownership joined with the
    target's maps; owner None: cached before the probes started."""
    f, inputs = c.f, c.inputs
    if inputs.page_cache is None or inputs.mapped_files is None:
        return None
    by_dev_ino = {(m.dev, m.inode) for m in inputs.mapped_files if m.inode}
    paths = {m.path for m in inputs.mapped_files}
    total, ev, owners, files = 0, [], {}, []
    for p in sorted(inputs.page_cache, key=lambda p: (-p.bytes, p.path or "", p.cgroup or "")):
        if p.cgroup is not None and under(p.cgroup, f.cg_path):
            continue
        if (p.dev, p.inode) in by_dev_ino or (p.path is not None and p.path in paths):
            total += p.bytes
            owners[p.cgroup] = owners.get(p.cgroup, 0) + p.bytes
            files.append(Part(p.path, p.bytes))
            ev.append(f"eBPF: {p.path or p.inode} mapped by the target, {b(p.bytes)} of its page cache charged to "
                      f"{p.cgroup or 'an unknown cgroup'}")
    return total, ev, owners, files


def first_touch(c: Ctx):
    """Page cache the target uses that is charged to another cgroup (first touch owns the page).

    Overlap: a page-cache page is charged to the cgroup that brought it in, and stays there
    while other cgroups map it ('Memory Ownership', cgroup-v2.rst). The target's processes
    count it in RssFile / RssShmem, the target's memory.current does not, the owner's
    memory.current and file_mapped do. Evidence: eBPF page-cache ownership joined with the
    target's mappings when present; otherwise max over the target's processes of
    RssFile + RssShmem minus the target's file_mapped (a lower bound), with other cgroups
    whose file_mapped is positive although they have no process of their own as owners.
    Measured: H100 inference fixture, step 03 (weights read by `warmer`, mapped by `engine`).
    """
    f = c.f
    if not f.has_cgroup:
        return Skip("no target cgroup")
    ebpf = _ebpf_first_touch(c)
    low = None
    if f.mapped_max is not None and f.s("file_mapped") is not None:
        low = max(0, f.mapped_max - f.s("file_mapped"))
    if ebpf is None and low is None:
        return Skip("neither eBPF page-cache ownership nor the target's RSS was read")
    ev, owners, files = [], {}, []
    if low is not None:
        ev.append(f"the target's processes map {b(f.mapped_max)} of file and shmem pages (largest RssFile + "
                  f"RssShmem); its own file_mapped is {b(f.s('file_mapped'))}: at least {b(low)} is charged elsewhere")
    for o in sorted(c.inputs.others or [], key=lambda o: o.path):
        fm = (o.stat or {}).get("file_mapped")
        if o.path == f.cg_path or fm is None:
            continue
        if o.procs == [] and fm > 0:
            owners[o.path] = None
            ev.append(f"cgroup {o.path} has no process but {b(fm)} of its page cache is mapped (by other cgroups); "
                      f"it holds {b((o.stat or {}).get('file'))} of file pages in all")
    for m in sorted(c.inputs.mapped_files or [], key=lambda m: (-m.size_bytes, m.path))[:3]:
        ev.append(f"the target maps {m.path} ({b(m.size_bytes)} mapping, pid {m.pid})")
    amount, conf = low or 0, "medium" if owners else "low"
    if ebpf is not None and ebpf[0] > 0:
        # eBPF names the owner of every page of the files the target maps: only those cgroups
        # are owners, not the ones guessed from counters
        amount, conf = ebpf[0], "high"
        ev = ebpf[1] + ev
        owners = dict(ebpf[2])
        files = ebpf[3]
    if amount < noise(c):
        return None
    # None (cached before the probes started) sorts last, as its words do
    names = sorted(owners, key=lambda o: (o is None, o or ""))
    who = ", ".join(o or UNKNOWN_OWNER for o in names) if owners else NO_OWNER
    return Finding("first_touch", f"{short(amount)} of page cache the target maps is charged to {who}", amount,
                   by_size(amount, f.current), conf, ev,
                   [CG2 + " (Memory Ownership)", "H100 inference fixture, step 03"], bytes_low=low,
                   owners=[Part(o, owners[o]) for o in names], files=files,
                   rows=[Part("page_cache"), Part("elsewhere", amount)])


def gpu_uncharged(c: Ctx):
    """GPU allocations of the target's processes that no memory cgroup charges.

    Overlap (a blind spot): NVML per-process usedGpuMemory (host PIDs) counts the target's
    cudaMalloc memory; memory.current does not. On integrated UMA that memory is system RAM
    taken by the driver without a memcg charge, so `docker --memory` / memory.max does not
    contain it; on a discrete card it is the card's memory, which memcg never covered (use
    MIG or MPS limits there). With eBPF the target's managed memory resident on the GPU counts
    too (NVML per-process leaves it out). Sources: NVML nvmlDeviceGetComputeRunningProcesses;
    docs/facts.md#f-cudamalloc, #f-gb10-uncharged, #f-managed-migrated.
    """
    f = c.f
    if not f.gpus_read:
        return Skip("NVML not read")
    if f.gpu_target is None:
        return Skip("NVML per-process memory not read")
    managed = c.d.gpu_managed or 0
    total = f.gpu_target + managed
    if total < noise(c):
        return None
    uma = f.platform == "integrated"
    ev = [f"NVML per-process memory of pids {', '.join(map(str, f.gpu_target_pids))}: {b(f.gpu_target)}"]
    if managed:
        ev.append(f"managed memory of the target resident on the GPU (eBPF, NVML used minus every process): "
                  f"{b(managed)}")
    ev += [f"memory.current {b(f.current)} does not include it" if f.has_cgroup else "no target cgroup read",
           "integrated UMA: it is system RAM outside every memory limit" if uma else
           f"{f.platform}: it is GPU memory; memory.max never limited it"]
    return Finding("gpu_uncharged", f"{short(total)} of GPU memory of the target charged to no cgroup",
                   total, "warning" if uma else "info", "high" if not managed else "medium", ev,
                   ["NVML nvmlDeviceGetComputeRunningProcesses", "docs/facts.md#f-cudamalloc"],
                   rows=[Part("gpu_target", total)])


def charges_without_processes(c: Ctx):
    """A cgroup with no process that still holds charges (page cache, kernel objects).

    Blind spot: per-process tools show nothing, yet memory.current stays: page cache and
    slab objects remain charged to the cgroup that created them until reclaimed (cgroup-v2.rst,
    Memory Ownership). Measured: H100 inference fixture step 09, the engine's cgroup keeps
    about 1.8 GiB of file and kernel charges after its process exited.
    """
    f = c.f
    if not f.has_cgroup:
        return Skip("no target cgroup")
    if f.procs is None:
        return Skip("cgroup.procs not read")
    if f.procs or f.pids or f.current is None or f.current < noise(c):
        return None
    ev = [f"no process; memory.current {b(f.current)}: file {b(f.s('file'))}, kernel {b(f.s('kernel'))}, "
          f"anon {b(f.s('anon'))}"]
    return Finding("charges_without_processes", f"{short(f.current)} still charged to a cgroup with no process",
                   f.current, "info", "high", ev, [CG2 + " (Memory Ownership)", "H100 inference fixture step 09"],
                   owners=[Part(f.cg_path, f.current)], rows=[Part("page_cache"), Part("kernel")])


RULES = [gpu_uncharged, managed_double_view, driver_kernel_memory, pinned_shmem, first_touch,
         charges_without_processes]
