#!/usr/bin/env python3
"""Generate tests/fixtures/gb10-synthetic: a SYNTHETIC DGX Spark (GB10) fixture built from
published facts and a documented model, in the same tree layout as the real H100 fixtures.

Nothing here was captured on a GB10. Every number is one of
  P  published  (source named next to it)
  A  assumed    (a round, plausible value; the benchmark recorded no meminfo)
  D  derived    (formula from P and A)
and the generated README.md lists them all with their kind. Run again to regenerate; the
output depends only on this file and reference/benchmark-spark_runs_flat.csv.

The model: one container (cgroup v2, systemd driver) runs a TensorRT-LLM-style engine that
sizes its KV cache as 0.9 x cudaMemGetInfo free. On GB10, free follows MemFree
(spark_memprobe/ledger/cuda.py). Two adjacent published runs (native, then container) give
CUDA free at sizing time as kv_cache / 0.9; the hypothesis the fixture encodes (H1) is that
the container run's smaller free memory is page cache charged to the container. GPU
allocations come out of system RAM: they lower MemFree and appear in no meminfo field and in
no memory cgroup (docs/facts.md#f-gb10-uncharged).

Usage: scripts/make_gb10_fixture.py [DEST]   (default tests/fixtures/gb10-synthetic)
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEST = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures", "gb10-synthetic")
REFERENCE = os.path.join(HERE, "..", "tests", "fixtures", "gb10-synthetic", "reference",
                         "benchmark-spark_runs_flat.csv")

GiB = 1 << 30
MiB = 1 << 20
PAGE = 4096                     # A: 4 KiB base pages (fixture_loader assumes 4096 too)
FRACTION = 0.9                  # P: TensorRT-LLM kv_cache_free_gpu_memory_fraction used by the runs
NATIVE_RUN, CONTAINER_RUN = 13, 14   # P: adjacent runs (same label block, 13 minutes apart)
CGROUP = "system.slice/docker-gb10synthetic.scope"   # A: Docker with the systemd cgroup driver
LAUNCHER, WORKER = 48190, 48213                      # A: host PIDs; NSpid 1 and 7 in the container
LIMIT = 64 * GiB                                     # A: `docker run --memory 64g`, to exercise the limit rule
WMARK_LOW, TOTALRESERVE = 128 * MiB, 256 * MiB       # A: /proc/zoneinfo sums on a ~120 GiB host

facts: list[tuple[str, str, str, str]] = []     # (name, value, kind, source or formula)


def pg(n: float) -> int:
    """Bytes rounded to whole pages."""
    return int(round(n / PAGE)) * PAGE


def fact(name: str, value: int, kind: str, source: str) -> int:
    facts.append((name, f"{value} B ({value / GiB:.4f} GiB)", kind, source))
    return value


def runs() -> dict[int, dict]:
    with open(REFERENCE) as fh:
        return {int(r["order"]): r for r in csv.DictReader(fh)}


def model() -> tuple[dict, list[dict]]:
    r = runs()
    nat, con = r[NATIVE_RUN], r[CONTAINER_RUN]
    src = "reference/benchmark-spark_runs_flat.csv (github.com/brandonrc/benchmark-spark)"
    total = fact("MemTotal = cudaMemGetInfo total", pg(119.64 * GiB), "P",
                 f"{src}: every run has kv_cache = 0.9 x (119.64 - peak + ~0.07)")
    free_con = fact("CUDA free at KV sizing, container run", pg(float(con["kv_cache_gib"]) * GiB / FRACTION), "D",
                    f"run {CONTAINER_RUN} ({con['environment']}): kv_cache {con['kv_cache_gib']} GiB / 0.9")
    free_nat = fact("CUDA free at KV sizing, native run", pg(float(nat["kv_cache_gib"]) * GiB / FRACTION), "D",
                    f"run {NATIVE_RUN} ({nat['environment']}): kv_cache {nat['kv_cache_gib']} GiB / 0.9")
    h1 = fact("container page cache (hypothesis H1)", free_nat - free_con, "D",
              "native free - container free: H1 says the whole difference is page cache charged to the container")
    kv = fact("KV cache allocated by the engine", pg(float(con["kv_cache_gib"]) * GiB), "P",
              f"run {CONTAINER_RUN} kv_cache")
    host = {
        "anon": fact("host anon (outside the container)", pg(2.50 * GiB), "A", "DGX OS services and desktop"),
        "pc_active": fact("host page cache, active", pg(4.00 * GiB), "A", "the benchmark recorded no meminfo"),
        "pc_inactive": fact("host page cache, inactive", pg(16.00 * GiB), "A",
                            "e.g. model files downloaded before the run; only the total of the native run is "
                            "constrained (see G below)"),
        "shmem": fact("host shmem", pg(0.06 * GiB), "A", ""),
        "buffers": fact("host Buffers", pg(0.06 * GiB), "A", ""),
        "slab_r": fact("host slab, reclaimable", pg(0.55 * GiB), "A", ""),
        "slab_u": fact("host slab, unreclaimable", pg(0.45 * GiB), "A", ""),
        "kstack": fact("host kernel stacks", pg(0.03 * GiB), "A", ""),
        "pt": fact("host page tables", pg(0.06 * GiB), "A", ""),
        "percpu": fact("host percpu", pg(0.02 * GiB), "A", ""),
        "mapped": fact("host Mapped", pg(0.20 * GiB), "A", ""),
    }
    c = {"anon": (pg(0.20 * GiB), pg(1.30 * GiB)), "pc_active": pg(0.60 * GiB), "pc_inactive": pg(0.60 * GiB),
         "shmem": 0, "slab_r": pg(0.08 * GiB), "slab_u": pg(0.04 * GiB), "kstack": pg(0.005 * GiB),
         "pt": pg(0.02 * GiB), "percpu": pg(0.002 * GiB), "driver": 0, "libs_mapped": (pg(0.05 * GiB), pg(0.40 * GiB)),
         "gpu": 0}
    fact("container at step 01 (anon launcher/worker, page cache, kernel)", sum(c["anon"]) + c["pc_active"] +
         c["pc_inactive"] + c["slab_r"] + c["slab_u"] + c["kstack"] + c["pt"] + c["percpu"], "A",
         "engine started: libraries and Python modules read")
    s2 = dict(c, anon=(pg(0.25 * GiB), pg(5.75 * GiB)), pc_active=pg(8.20 * GiB), pc_inactive=h1 - pg(8.20 * GiB),
              slab_r=pg(0.20 * GiB), slab_u=pg(0.10 * GiB), kstack=pg(0.008 * GiB), pt=pg(0.06 * GiB),
              percpu=pg(0.004 * GiB), libs_mapped=(pg(0.05 * GiB), pg(0.55 * GiB)))
    fact("container anon from step 02 (launcher + worker)", sum(s2["anon"]), "A", "TensorRT-LLM host process")
    pinned = fact("pinned host memory (cudaHostAlloc), from step 03", pg(0.50 * GiB), "A",
                  "lands in shmem (H100 fixture, step 06)")
    ctx_kmem = fact("driver kernel memory (CUDA context), from step 03", pg(0.002 * GiB), "A",
                    "about 2 MiB on the H100 fixture (step 04)")
    s3 = dict(s2, shmem=pinned, driver=ctx_kmem)
    host_used = (host["anon"] + host["pc_active"] + host["pc_inactive"] + host["shmem"] + host["buffers"] +
                 host["slab_r"] + host["slab_u"] + host["kstack"] + host["pt"] + host["percpu"])
    gpu3 = fact("G: engine GPU allocations at KV sizing (NVML per-process)",
                total - free_con - host_used - container_used(s3), "D",
                "MemTotal - container-run free - host - container: everything else the native run counted as used")
    s3["gpu"] = gpu3
    s4 = dict(s3, gpu=gpu3 + kv)
    steps = [("01-engine-started", c), ("02-page-cache-in-container", s2), ("03-kv-sized", s3),
             ("04-kv-allocated", s4)]
    return {"total": total, "host": host, "free_con": free_con, "kv": kv}, \
        [dict(name=n, c=st) for n, st in steps]


def container_used(c: dict) -> int:
    return (sum(c["anon"]) + c["pc_active"] + c["pc_inactive"] + c["shmem"] + c["slab_r"] + c["slab_u"] +
            c["kstack"] + c["pt"] + c["percpu"] + c["driver"])


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def kb(n: int) -> str:
    return f"{n // 1024} kB"


def meminfo(g: dict, c: dict) -> tuple[str, dict]:
    h, total = g["host"], g["total"]
    free = total - (h["anon"] + h["pc_active"] + h["pc_inactive"] + h["shmem"] + h["buffers"] + h["slab_r"] +
                    h["slab_u"] + h["kstack"] + h["pt"] + h["percpu"]) - container_used(c) - c["gpu"]
    lru_file = h["pc_active"] + h["pc_inactive"] + h["buffers"] + c["pc_active"] + c["pc_inactive"]
    krecl = h["slab_r"] + c["slab_r"]
    # mm/show_mem.c si_mem_available()
    avail = free - TOTALRESERVE + lru_file - min(lru_file // 2, WMARK_LOW) + krecl - min(krecl // 2, WMARK_LOW)
    anon = h["anon"] + sum(c["anon"])
    shmem = h["shmem"] + c["shmem"]
    slab_u = h["slab_u"] + c["slab_u"]
    v = {
        "MemTotal": total, "MemFree": free, "MemAvailable": avail, "Buffers": h["buffers"],
        "Cached": h["pc_active"] + h["pc_inactive"] + c["pc_active"] + c["pc_inactive"] + shmem,
        "SwapCached": 0, "Active": h["pc_active"] + h["buffers"] + c["pc_active"],
        "Inactive": anon + shmem + h["pc_inactive"] + c["pc_inactive"], "Active(anon)": 0,
        "Inactive(anon)": anon + shmem, "Active(file)": h["pc_active"] + h["buffers"] + c["pc_active"],
        "Inactive(file)": h["pc_inactive"] + c["pc_inactive"], "Unevictable": 0, "Mlocked": 0,
        "SwapTotal": 0, "SwapFree": 0, "Dirty": 0, "Writeback": 0, "AnonPages": anon,
        "Mapped": h["mapped"] + sum(c["libs_mapped"]) + c["shmem"], "Shmem": shmem, "KReclaimable": krecl,
        "Slab": krecl + slab_u, "SReclaimable": krecl, "SUnreclaim": slab_u,
        "KernelStack": h["kstack"] + c["kstack"], "PageTables": h["pt"] + c["pt"], "SecPageTables": 0,
        "Percpu": h["percpu"] + c["percpu"],
    }
    text = "".join(f"{k + ':':<16}{v[k] // 1024:>9} kB\n" for k in v)
    text += "HugePages_Total:       0\nHugePages_Free:        0\nHugePages_Rsvd:        0\nHugePages_Surp:        0\n"
    text += "Hugepagesize:       2048 kB\nHugetlb:               0 kB\n"
    return text, v


def vmstat(v: dict) -> str:
    p = {"nr_free_pages": v["MemFree"], "nr_inactive_anon": v["Inactive(anon)"], "nr_active_anon": v["Active(anon)"],
         "nr_inactive_file": v["Inactive(file)"], "nr_active_file": v["Active(file)"], "nr_unevictable": 0,
         "nr_slab_reclaimable": v["SReclaimable"], "nr_slab_unreclaimable": v["SUnreclaim"],
         "nr_anon_pages": v["AnonPages"], "nr_mapped": v["Mapped"],
         "nr_file_pages": v["Cached"] + v["Buffers"], "nr_dirty": 0, "nr_writeback": 0, "nr_shmem": v["Shmem"],
         "nr_page_table_pages": v["PageTables"]}
    return "".join(f"{k} {n // PAGE}\n" for k, n in p.items()) + f"nr_kernel_stack {v['KernelStack'] // 1024}\n"


def memory_stat(c: dict) -> dict:
    slab = c["slab_r"] + c["slab_u"]
    kernel = slab + c["kstack"] + c["pt"] + c["percpu"] + c["driver"]
    anon = sum(c["anon"])
    return {"anon": anon, "file": c["pc_active"] + c["pc_inactive"] + c["shmem"], "kernel": kernel,
            "kernel_stack": c["kstack"], "pagetables": c["pt"], "sec_pagetables": 0, "percpu": c["percpu"],
            "sock": 0, "vmalloc": 0, "shmem": c["shmem"], "file_mapped": sum(c["libs_mapped"]) + c["shmem"],
            "file_dirty": 0, "file_writeback": 0, "inactive_anon": anon + c["shmem"], "active_anon": 0,
            "inactive_file": c["pc_inactive"], "active_file": c["pc_active"], "unevictable": 0,
            "slab_reclaimable": c["slab_r"], "slab_unreclaimable": c["slab_u"], "slab": slab}


def status(pid: int, nspid: int, name: str, anon: int, file: int, shmem: int, pte: int) -> str:
    rss = anon + file + shmem
    return (f"Name:\t{name}\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t{pid - 23}\n"
            f"NStgid:\t{pid}\t{nspid}\nNSpid:\t{pid}\t{nspid}\nVmHWM:\t{kb(rss):>12}\nVmRSS:\t{kb(rss):>12}\n"
            f"RssAnon:\t{kb(anon):>12}\nRssFile:\t{kb(file):>12}\nRssShmem:\t{kb(shmem):>12}\n"
            f"VmPTE:\t{kb(pte):>12}\nVmSwap:\t{kb(0):>12}\nThreads:\t{8 if pid == LAUNCHER else 64}\n")


def rollup(anon: int, file: int, shmem: int) -> str:
    rss = anon + file + shmem
    rows = [("Rss", rss), ("Pss", rss), ("Pss_Anon", anon), ("Pss_File", file), ("Pss_Shmem", shmem),
            ("Anonymous", anon), ("Swap", 0)]
    return "00400000-7fffffffffff ---p 00000000 00:00 0    [rollup]\n" + \
        "".join(f"{k + ':':<16}{n // 1024:>9} kB\n" for k, n in rows)


def write_step(root: str, g: dict, st: dict, peak: int) -> int:
    c, d = st["c"], os.path.join(root, "steps", st["name"])
    text, v = meminfo(g, c)
    write(f"{d}/proc/meminfo", text)
    write(f"{d}/proc/vmstat", vmstat(v))
    pt_l = PAGE * 64
    procs = [(LAUNCHER, 1, "trtllm-bench", c["anon"][0], c["libs_mapped"][0], 0, pt_l),
             (WORKER, 7, "python3", c["anon"][1], c["libs_mapped"][1], c["shmem"], c["pt"] - pt_l)]
    for pid, ns, name, anon, file, shmem, pte in procs:
        write(f"{d}/proc/{pid}/status", status(pid, ns, name, anon, file, shmem, pte))
        write(f"{d}/proc/{pid}/smaps_rollup", rollup(anon, file, shmem))
        write(f"{d}/proc/{pid}/cgroup", f"0::/{CGROUP}\n")
    cg = f"{d}/cgroup/{CGROUP}"
    write(f"{d}/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    stat = memory_stat(c)
    current = stat["anon"] + stat["file"] + stat["kernel"] + stat["sock"]
    peak = max(peak, current)
    write(f"{cg}/memory.current", f"{current}\n")
    write(f"{cg}/memory.peak", f"{peak}\n")
    write(f"{cg}/memory.max", f"{LIMIT}\n")
    write(f"{cg}/memory.high", "max\n")
    write(f"{cg}/memory.swap.current", "0\n")
    write(f"{cg}/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
    write(f"{cg}/memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    write(f"{cg}/memory.stat", "".join(f"{k} {n}\n" for k, n in stat.items()))
    write(f"{cg}/memory.numa_stat", "".join(f"{k} N0={n}\n" for k, n in stat.items()
                                            if k not in ("kernel", "percpu", "sock", "vmalloc", "slab")))
    write(f"{cg}/cgroup.procs", f"{LAUNCHER}\n{WORKER}\n")
    not_supported = {"nvml_error": "Not Supported", "code": 3}
    nvml = {"synthetic": True, "driver": "580.126.09", "nvml": "13.580.126.09", "name": "NVIDIA GB10",
            "uuid": "GPU-00000000-0000-0000-0000-0000005b1000", "memory_v1": not_supported,
            "memory_v2": not_supported,
            "compute_processes": [{"pid": WORKER, "usedGpuMemory": c["gpu"]}] if c["gpu"] else []}
    write(f"{d}/nvml.json", json.dumps(nvml, indent=1) + "\n")
    if st["name"].startswith("03"):
        engine = {"synthetic": True, "cuda_free": v["MemFree"], "cuda_total": v["MemTotal"],
                  "kv_budget_at_0_9": int(FRACTION * v["MemFree"])}
        write(f"{d}/engine.json", json.dumps(engine, indent=1) + "\n")
    if st["name"].startswith("04"):
        write(f"{d}/engine.json", json.dumps({"synthetic": True, "kv_bytes": g["kv"]}, indent=1) + "\n")
    return peak


README_HEAD = """# SYNTHETIC: a DGX Spark (GB10)-like host, built from published facts and a model

**Nothing in this folder was captured on a GB10.** It is generated by `scripts/make_gb10_fixture.py`
(run it again to regenerate; the output depends only on that script and
`reference/benchmark-spark_runs_flat.csv`). Same tree layout as the real H100 fixtures:
`steps/NN/proc/{{meminfo,vmstat,<pid>/{{status,smaps_rollup,cgroup}}}}`,
`steps/NN/cgroup/{{cgroup.controllers,{cg}/memory.*,cgroup.procs}}`, `steps/NN/nvml.json` and
`engine.json` where the engine would report something. Every nvml.json and engine.json carries
`"synthetic": true`.

What it encodes:
- NVML device memory NOT_SUPPORTED (`{{"nvml_error": "Not Supported", "code": 3}}` for v1 and v2), as on
  GB10 (DGX Spark known issues: "nvidia-smi reports memory usage Not Supported"; gpud PR #1170 log;
  nvitop PR #208 thread). Per-process `usedGpuMemory` present, with host PIDs (gpustat PR #179;
  unsloth PR #10283 thread).
- MemTotal = cudaMemGetInfo total = 119.64 GiB (benchmark-spark: every published run has
  kv_cache = 0.9 x (119.64 - peak + ~0.07)).
- A container (cgroup v2, `{cg}`, memory.max 64 GiB) whose page cache is large (hypothesis H1 below),
  and CUDA allocations that no memory cgroup charges: they lower MemFree and appear in no meminfo field
  and in no memory.stat key (docs/facts.md#f-gb10-uncharged: "cudaMalloc memory comes from the driver without a
  memcg charge").
- cudaMemGetInfo free = MemFree (the integrated-GPU model in spark_memprobe/ledger/cuda.py).

Hypothesis H1 (what the fixture assumes, not a measurement): in two adjacent published runs, native
(run {nat}) and container (run {con}), CUDA free at KV sizing was kv_cache / 0.9; H1 puts the whole
difference into page cache charged to the container. The ledger then predicts the container's KV cache
loss as 0.9 x that page cache, which equals the published native-minus-container kv_cache difference
by construction. The fixture tests the ledger's arithmetic and rules on UMA; it cannot prove H1.
Runs {nat} and {con} are adjacent (the last native and the first container run of one block); over all
{n} runs, kv_cache / 0.9 ranges {nat_lo:.2f}-{nat_hi:.2f} GiB native and {con_lo:.2f}-{con_hi:.2f} GiB in the container,
so other pairs give a container page cache between {h_lo:.1f} and {h_hi:.1f} GiB under H1.

| step | what the model says happened |
|---|---|
| 01-engine-started | container started, engine processes (launcher {launcher}, worker {worker}) read their libraries |
| 02-page-cache-in-container | the container read/wrote files: its page cache grows to H1's size |
| 03-kv-sized | engine allocated its weights and profiling buffers on the GPU (from RAM, uncharged) and 0.5 GiB pinned host memory; it sizes the KV cache as 0.9 x CUDA free = 0.9 x MemFree (engine.json) |
| 04-kv-allocated | the KV cache (the published kv_cache of run {con}) is allocated on the GPU |

MemAvailable follows the kernel's formula (mm/show_mem.c si_mem_available) with the assumed watermark
and reserve sums below. meminfo holds only the fields the model defines; the others are left out
rather than invented. Dirty, Writeback, swap, sock, vmalloc and unevictable are modelled as 0.

## Every number

| quantity | value | kind | source / formula |
|---|---|---|---|
"""


def main() -> None:
    g, steps = model()
    fact("low watermarks, all zones", WMARK_LOW, "A", "would come from /proc/zoneinfo")
    fact("totalreserve_pages", TOTALRESERVE, "A", "would come from /proc/zoneinfo")
    fact("memory.max of the container", LIMIT, "A", "docker run --memory 64g (to exercise the limit rule)")
    shutil.rmtree(os.path.join(DEST, "steps"), ignore_errors=True)
    peak = 0
    for st in steps:
        peak = write_step(DEST, g, st, peak)
    write(os.path.join(DEST, "uname"), "Linux spark-synthetic 6.17.0-1008-nvidia #8-Ubuntu SMP PREEMPT_DYNAMIC "
                                       "aarch64 aarch64 aarch64 GNU/Linux\n")
    r = runs().values()
    free = {env: [float(x["kv_cache_gib"]) / FRACTION for x in r if x["environment"] == env]
            for env in ("native", "container")}
    head = README_HEAD.format(cg=CGROUP, nat=NATIVE_RUN, con=CONTAINER_RUN, launcher=LAUNCHER, worker=WORKER,
                              n=len(r), nat_lo=min(free["native"]), nat_hi=max(free["native"]),
                              con_lo=min(free["container"]), con_hi=max(free["container"]),
                              h_lo=min(free["native"]) - max(free["container"]),
                              h_hi=max(free["native"]) - min(free["container"]))
    rows = "".join(f"| {n} | {v} | {k} | {s} |\n" for n, v, k, s in facts)
    tail = ("\nOther fixed choices (A): 4 KiB pages; host PIDs {l} and {w} (NSpid 1 and 7 in the container); "
            "driver 580.126.09 and kernel 6.17.0-1008-nvidia as reported on DGX Spark (snowflakedb/ArcticTraining "
            "PR #345; lablup/all-smi issue #80); one NUMA node.\n\n"
            "`reference/benchmark-spark_runs_flat.csv` is a copy of the published runs "
            "(63 runs of github.com/brandonrc/benchmark-spark, MIT licence, flattened with derived columns).\n"
            ).format(l=LAUNCHER, w=WORKER)
    write(os.path.join(DEST, "README.md"), head + rows + tail)


if __name__ == "__main__":
    main()
