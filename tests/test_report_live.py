"""Comparison reports of two recordings made live here, in real memory cgroups.

Each run: a child process in a fresh memory cgroup (v1 on hybrid CI hosts, v2 elsewhere) maps a
file of FILE_MIB MiB; a small recorder (tests/report_recordings.py MiniRecorder) takes
PureSampler samples of the cgroup and writes the child's file mappings (/proc/<pid>/smaps) as
`mapped_files` events, and other cgroups as `other_cgroups` events.

  - page cache dropped: run A reads and maps the file (its page cache is charged to A's cgroup);
    run B maps the same file after its pages were dropped (posix_fadvise DONTNEED). The
    comparison must put the difference in the page-cache row and name the file.
  - first touch: run A as above; in run B another cgroup reads the file first and its process
    exits, then B's child maps it. The comparison must name first-touch ownership and the owner.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from livecg import MiB, LiveCgroup, fresh_file
from report_recordings import MiniRecorder
from spark_memprobe.analysis.compare import compare
from spark_memprobe.analysis.report import analyse, open_recording
from spark_memprobe.cli import main
from spark_memprobe.views.report_compare import build_comparison, cause_text
from spark_memprobe.views.report_doc import build_report
from spark_memprobe.views.report_md import render_markdown

FILE_MIB = 192
TOL = 0.05                        # memory.stat flush lag and the child's own pages

def needs_root_cgroups():
    if os.geteuid() != 0:
        pytest.skip("needs root to create memory cgroups")
    try:
        cg = LiveCgroup()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no memory cgroup can be created here: {e}")
    cg.cleanup()


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def record(out: str, cg: LiveCgroup, others=(), seconds: float = 0.6) -> str:
    r = MiniRecorder(out, cg.path, cg.version, others=[o.path for o in others])
    try:
        r.run(seconds)
    finally:
        r.close()
    return out


@pytest.fixture
def workdir(tmp_path):
    needs_root_cgroups()
    d = os.environ.get("MEMPROBE_V2_SCRATCH") or str(tmp_path)
    return d


def run_a(workdir, tmp_path, path) -> str:
    """Run A: the target reads the file first (charged to it) and maps every page."""
    cg = LiveCgroup()
    try:
        cg.start_child()
        cg.do(f"read {path}")
        cg.do(f"map {path}")
        return record(str(tmp_path / "a.db"), cg)
    finally:
        cg.cleanup()


def test_compare_names_the_dropped_file(workdir, tmp_path):
    path = fresh_file(workdir, FILE_MIB * MiB)
    try:
        a = run_a(workdir, tmp_path, path)
        drop_cache(path)
        cg = LiveCgroup()
        try:
            cg.start_child()
            cg.do(f"mapcold {path}")            # mapped, never touched: not in the page cache
            b = record(str(tmp_path / "b.db"), cg)
        finally:
            cg.cleanup()
        da, db = analyse(open_recording(a)), analyse(open_recording(b))
        c = compare(da, db)
        pc = next(r for r in c.peak.rows if r.key == "page_cache")
        assert abs(pc.delta + FILE_MIB * MiB) <= TOL * FILE_MIB * MiB, pc
        cause = c.peak.causes[0]
        assert cause.kind == "file" and path in [x.path for x in cause.files], c.peak.causes
        assert path in cause_text(c.peak, cause)
        f = next(x for x in c.peak.files if x.path == path)
        assert f.a == FILE_MIB * MiB and f.b == 0                # smaps Rss of the child's mapping
        assert "first_touch" not in [x.kind for x in c.peak.causes]
        md = render_markdown(build_comparison(c))
        verdict = md.split("## Side by side")[0]
        assert path.replace("_", "\\_") in verdict or path in verdict
        assert "page cache of" in verdict
        # the CLI writes the same comparison, mode 0600
        out = str(tmp_path / "cmp.md")
        assert main(["report", a, b, "-o", out]) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        text = open(out).read()
        assert text.split("## Side by side")[0] == verdict
    finally:
        os.unlink(path)


def test_compare_names_first_touch_ownership(workdir, tmp_path):
    path = fresh_file(workdir, FILE_MIB * MiB)
    try:
        a = run_a(workdir, tmp_path, path)
        drop_cache(path)
        warmer = LiveCgroup()
        cg = None
        try:
            warmer.start_child()
            warmer.do(f"read {path}")            # first touch: the file's pages are charged to warmer
            warmer.stop_child()                  # and its process is gone
            cg = LiveCgroup()
            cg.start_child()
            cg.do(f"map {path}")                 # the target maps every page: cached, owned by warmer
            b = record(str(tmp_path / "b.db"), cg, others=[warmer])
        finally:
            if cg is not None:
                cg.cleanup()
            warmer.cleanup()
        da, db = analyse(open_recording(a)), analyse(open_recording(b))
        c = compare(da, db)
        pc = next(r for r in c.peak.rows if r.key == "page_cache")
        assert abs(pc.delta + FILE_MIB * MiB) <= TOL * FILE_MIB * MiB, pc
        cause = c.peak.causes[0]
        assert cause.kind == "first_touch" and cause.first_touch.run == "B", c.peak.causes
        assert [o.name for o in cause.first_touch.finding.owners] == [warmer.path]
        text = cause_text(c.peak, cause)
        assert warmer.path in text and "first-touch page-cache ownership" in text
        ft = db.peak.ledger.finding("first_touch")
        assert ft is not None and warmer.path in ft.title
        assert abs(ft.bytes - FILE_MIB * MiB) <= TOL * FILE_MIB * MiB
        # both runs map the file with every page resident: no file-residency difference
        f = next(x for x in c.peak.files if x.path == path)
        assert f.a == f.b == FILE_MIB * MiB
        md = render_markdown(build_comparison(c))
        assert "first-touch page-cache ownership" in md.split("## Side by side")[0]
    finally:
        os.unlink(path)


def _bpf_ok():
    try:
        from spark_memprobe.sources.bpf import base_status
    except ImportError as e:
        return False, f"eBPF probes not importable: {e}"
    return base_status()


def test_compare_names_the_file_from_ebpf_page_cache(workdir, tmp_path):
    """The same comparison with the eBPF page-cache probe recording: the file and its owner come from
    the kernel's page-cache tracepoints, not from the mappings."""
    ok, why = _bpf_ok()
    if not ok:
        pytest.skip(f"eBPF probes unavailable here: {why}")
    path = fresh_file(workdir, FILE_MIB * MiB)
    try:
        runs = []
        for name, warm in (("a", True), ("b", False)):
            cg = LiveCgroup()
            try:
                cg.start_child()
                r = MiniRecorder(str(tmp_path / f"{name}.db"), cg.path, cg.version, bpf=True)
                try:
                    r.tick()
                    if warm:
                        cg.do(f"read {path}")            # pages added while the probe watches
                        cg.do(f"map {path}")
                    else:
                        cg.do(f"mapcold {path}")
                    r.run(0.8)
                finally:
                    r.close()
                runs.append(r.path)
            finally:
                cg.cleanup()
            drop_cache(path)
        da, db = (analyse(open_recording(p)) for p in runs)
        # run A's report names the file, its size and its owner, from eBPF
        row = next(f for f in da.files if f.path == path)
        assert da.files_source.startswith("eBPF page-cache ownership")
        assert abs(row.bytes - FILE_MIB * MiB) <= TOL * FILE_MIB * MiB
        assert row.owner == da.peak.sample.cgroup.path and row.owner_is_target and row.mapped_by_target
        c = compare(da, db)
        assert c.peak.files_source.startswith("eBPF page-cache ownership")
        cause = c.peak.causes[0]
        assert cause.kind == "file" and path in [x.path for x in cause.files], c.peak.causes
        md = render_markdown(build_report(da))
        assert "**high** for naming files and owners" in md
    finally:
        os.unlink(path)


FAKECUDA = os.path.join(os.path.dirname(__file__), "fakecuda")
# what tests/fakecuda/caller.c allocates on "alloc" (tests/test_bpf_probes.py SIZES)
CUDA_SIZES = {"device": (64 << 20) + (1 << 20) + 4096 + 1024 * 300, "managed": 32 << 20,
              "host-pinned": (8 << 20) + (4 << 20), "vmm": (2 << 20) + (6 << 20), "pool": (16 << 20) + (8 << 20),
              "host-registered": 3 << 20}


def test_report_cuda_allocations_by_kind_from_uprobes(workdir, tmp_path):
    """A process in the target cgroup calls the libcuda stand-in (tests/fakecuda) while the eBPF
    CUDA uprobes record: the report shows the live bytes per kind, the largest calls with exact
    sizes and results, and finds the GPU moments from them when NVML is absent."""
    ok, why = _bpf_ok()
    if not ok:
        pytest.skip(f"eBPF probes unavailable here: {why}")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build the libcuda stand-in")
    build = tmp_path / "fakecuda"
    subprocess.run(["sh", os.path.join(FAKECUDA, "build.sh"), str(build)], check=True)
    cg = LiveCgroup()
    caller = None
    try:
        def join():
            with open(os.path.join(cg.dir, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        caller = subprocess.Popen([str(build / "caller"), str(build / "libcuda.so.1")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, preexec_fn=join)
        assert caller.stdout.readline().strip() == "ready"

        def cmd(c):
            caller.stdin.write(c + "\n")
            caller.stdin.flush()
            return caller.stdout.readline().strip()

        r = MiniRecorder(str(tmp_path / "cuda.db"), cg.path, cg.version, bpf=True,
                         cuda_libs=[str(build / "libcuda.so.1")])
        try:
            r.run(0.6)
            assert cmd("alloc").startswith("allocated")
            r.run(1.2)
            assert cmd("free") == "freed"
            r.run(0.8)
        finally:
            r.close()
    finally:
        if caller is not None:
            caller.kill()
            caller.wait()
        cg.cleanup()
    data = analyse(open_recording(str(tmp_path / "cuda.db")))
    assert data.gpu_series_key == "cuda_device"
    # the live bytes per kind over the run: every kind at its exact size, back to 0 after the frees
    for kind, size in CUDA_SIZES.items():
        s = data.cuda_kinds[kind]
        assert max(s.values) == size and s.values[-1] == 0, (kind, s.values)
    gp = data.moment("gpu_peak")
    assert gp is not None and gp.inputs.cuda_bytes == CUDA_SIZES
    # the largest calls with exact sizes; failed calls named with their CUresult
    calls = {(c.func, c.size_bytes, c.result) for c in data.cuda_calls}
    assert ("cuMemAlloc_v2", 64 << 20, 0) in calls and ("cuMemAlloc_v2", 1 << 50, 2) in calls
    md = render_markdown(build_report(data))
    sec = md.split("## GPU memory by kind (eBPF CUDA uprobes)")[1].split("\n## ")[0]
    assert "| CUDA managed |" in sec and "64 MiB (67108864 B)" in sec and "CUresult 2" in sec
