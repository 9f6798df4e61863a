"""Recordings for the report tests, made with RecordingWriter the way `memprobe record` writes them
(header keys and event kinds: spark_memprobe/recording.py docstring).

  fixture_recording(scenario, path)   one sample per captured fixture step, in order, 1 s apart
  MiniRecorder                        a live recorder for tests: PureSampler samples of a real
                                      cgroup plus the target's file mappings (/proc/<pid>/smaps)
                                      and other cgroups, as `mapped_files` / `other_cgroups` events
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from typing import Optional

from fixture_loader import FIXTURES, load_step, steps
from spark_memprobe.recording import RecordingWriter
from spark_memprobe.samples import sample_to_dict

SCENARIOS = {
    "h100-cgroup2-scenario": ("memprobe_fixture", []),
    "h100-inference-scenario": ("memprobe_engine", ["warmer"]),
    "gb10-synthetic": ("system.slice/docker-gb10synthetic.scope", []),
}
WALL0 = 1_764_000_000_000_000_000       # wall clock of the first fixture sample (2025-11-24)
STEP_NS = 1_000_000_000


def read_maps(path: str, smaps: bool = False) -> list[dict]:
    """The tool's reader on /proc/<pid>/{maps,smaps} given as a path."""
    from spark_memprobe.sources.procfs import read_maps as read
    proc, pid = os.path.split(os.path.dirname(path))
    return read(int(pid), proc, smaps=smaps)


def fixture_recording(scenario: str, path: str, probes: Optional[list] = None) -> str:
    cgroup, others = SCENARIOS[scenario]
    from spark_memprobe.sources.cgroupfs import CgroupFS
    sts = steps(scenario)
    host0, _ = load_step(sts[0], cgroup)
    header = {"host": asdict(host0), "target": {"kind": "cgroup", "query": cgroup, "cgroup_path": "/" + cgroup,
                                                "cgroup_version": 2},
              "probes": probes, "interval_ns": STEP_NS, "started_wall_ns": WALL0,
              "argv": ["fixture", scenario], "kv_fraction": 0.9}
    w = RecordingWriter(path, header)
    for i, st in enumerate(sts):
        host, s = load_step(st, cgroup)
        s.mono_ns, s.wall_ns = (i + 1) * STEP_NS, WALL0 + i * STEP_NS
        w.add_sample(s)
        if others:
            cgfs = CgroupFS(os.path.join(st, "cgroup"))
            w.add_event(s.mono_ns, "other_cgroups",
                        {"cgroups": [asdict(cgfs.read(o)) for o in others]})
        files = []
        for p in s.processes:
            maps = os.path.join(st, "proc", str(p.pid), "maps")
            if os.path.exists(maps):
                files += read_maps(maps)
        if files or any(os.path.exists(os.path.join(st, "proc", str(p.pid), "maps")) for p in s.processes):
            w.add_event(s.mono_ns, "mapped_files", {"files": files})
    w.close()
    return path


class MiniRecorder:
    """Samples one memory cgroup (and its processes) into a recording, with the target's file
    mappings from /proc/<pid>/smaps and, optionally, other cgroups read at the same time."""

    def __init__(self, path: str, cgroup: str, version: int, others: Optional[list[str]] = None,
                 bpf: bool = False, interval_s: float = 0.05, cuda_libs: Optional[list[str]] = None):
        from spark_memprobe.sources.capabilities import checks_to_dicts, check_cgroups, check_root, check_tracefs
        from spark_memprobe.sources.cgroupfs import CgroupFS
        from spark_memprobe.sources.platform import read_host_info
        from spark_memprobe.sources.sampler import PureSampler
        self.cgfs = CgroupFS()
        self.others = others or []
        self.interval_s = interval_s
        from spark_memprobe.sources.nvml import NvmlReader
        nvml = NvmlReader()
        try:
            host = read_host_info(self.cgfs.layout.mode, nvml, None, cuda=False)
        finally:
            nvml.close()
        self.session = None
        probes = None
        if bpf:
            # the page-cache probe (page cache per file and owner) and, given libraries, the CUDA
            # uprobes on them (sources/bpf)
            from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession
            self.session = ProbeSession(ProbeOptions(faults=False, fault_addresses=False, memcg=False,
                                                     cuda=bool(cuda_libs), cuda_libs=list(cuda_libs or []),
                                                     uvm=False, cgroup=cgroup))
            self.session.start()
            probes = [asdict(st) for st in self.session.statuses]
        self.last_report = 0.0
        header = {"host": asdict(host),
                  "capabilities": checks_to_dicts([check_root(), check_cgroups(), check_tracefs()]),
                  "target": {"kind": "cgroup", "query": cgroup, "cgroup_path": cgroup, "cgroup_version": version},
                  "probes": probes, "interval_ns": int(interval_s * 1e9), "started_wall_ns": time.time_ns(),
                  "argv": [os.path.basename(sys.argv[0]), "test"], "kv_fraction": 0.9}
        self.w = RecordingWriter(path, header)
        self.smp = PureSampler(cgroup=cgroup, version=version, nvml=True)
        self.path = path

    def tick(self) -> None:
        self.smp.refresh_pids()
        s = self.smp.sample(detail=True)
        self.w.add_sample(s)
        files = []
        for p in s.processes:
            try:
                files += read_maps(f"/proc/{p.pid}/smaps", smaps=True)
            except (FileNotFoundError, ProcessLookupError):
                pass
        self.w.add_event(s.mono_ns, "mapped_files", {"files": files})
        if self.session is not None:
            self.session.poll()
            if time.monotonic() - self.last_report >= 0.25:
                from spark_memprobe.probe_report import report_to_dict
                rep = self.session.collect()
                self.w.add_event(rep.ended_mono_ns, "probes", report_to_dict(rep))
                self.last_report = time.monotonic()
        if self.others:
            self.w.add_event(s.mono_ns, "other_cgroups", {"cgroups": [asdict(self.cgfs.read(o)) for o in self.others]})

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick()
            time.sleep(self.interval_s)

    def close(self) -> str:
        if self.session is not None:
            self.session.close()
        self.smp.close()
        self.w.close()
        return self.path


def fixture_dir(scenario: str) -> str:
    return os.path.join(FIXTURES, scenario)


def sample_dict(s):
    return sample_to_dict(s)
