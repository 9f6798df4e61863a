"""First-touch owners with eBPF page-cache ownership (issue 17, defect 3): only the cgroups that
own pages of the files the target maps are named, and the report's confidence paragraph says the
finding's own confidence."""
from __future__ import annotations

from types import SimpleNamespace

from spark_memprobe.analysis.report import FindingSeen
from spark_memprobe.ledger import LedgerInputs, MappedFile, PageCacheBytes, build_ledger
from spark_memprobe.samples import (CgroupSample, HostInfo, Meminfo, PlatformProfile, ProcessSample, Sample)
from spark_memprobe.views.report_doc import attribution

MiB, GiB = 1 << 20, 1 << 30
HOST = HostInfo(page_size=4096, platform=PlatformProfile("discrete", ["test"]))


def engine_sample() -> Sample:
    stat = {"anon": 256 * MiB, "file": 64 * MiB, "shmem": 0, "kernel": 32 * MiB, "file_mapped": 16 * MiB,
            "active_file": 32 * MiB, "inactive_file": 32 * MiB}
    cg = CgroupSample(path="/engine", version=2, current_bytes=352 * MiB, stat=stat, procs=[10])
    p = ProcessSample(pid=10, rss_anon_bytes=256 * MiB, rss_file_bytes=GiB + 16 * MiB, rss_shmem_bytes=0)
    mi = {"MemTotal": 64 * GiB, "MemFree": 40 * GiB, "MemAvailable": 60 * GiB}
    return Sample(mono_ns=1, wall_ns=1, meminfo=Meminfo(bytes=mi), cgroup=cg, processes=[p])


def others():
    """/warmer read the weights; /idle holds mapped page cache of something else: both have no
    process, so counters alone would name both."""
    return [CgroupSample(path="/warmer", version=2, stat={"file_mapped": GiB, "file": GiB}, procs=[]),
            CgroupSample(path="/idle", version=2, stat={"file_mapped": 100 * MiB, "file": 200 * MiB}, procs=[])]


def test_ebpf_names_only_the_owner_of_the_mapped_files():
    inputs = LedgerInputs(
        page_cache=[PageCacheBytes(cgroup="/warmer", bytes=GiB, dev="fe:01", inode=7, path="/models/w.safetensors"),
                    PageCacheBytes(cgroup="/idle", bytes=200 * MiB, dev="fe:01", inode=9, path="/var/log/big")],
        mapped_files=[MappedFile(pid=10, path="/models/w.safetensors", size_bytes=GiB, dev="fe:01", inode=7)],
        others=others())
    f = next(x for x in build_ledger(HOST, engine_sample(), inputs).findings if x.rule == "first_touch")
    assert [o.name for o in f.owners] == ["/warmer"] and f.owners[0].bytes == GiB
    assert f.confidence == "high" and "/idle" not in f.title


def test_without_ebpf_the_counters_name_owners_with_medium_confidence():
    inputs = LedgerInputs(mapped_files=[MappedFile(pid=10, path="/models/w.safetensors", size_bytes=GiB)],
                          others=others())
    f = next(x for x in build_ledger(HOST, engine_sample(), inputs).findings if x.rule == "first_touch")
    assert sorted(o.name for o in f.owners) == ["/idle", "/warmer"] and f.confidence == "medium"


def test_the_report_paragraph_says_the_findings_confidence():
    """The report said 'high' for naming owners (eBPF ran) while the finding said 'medium', with
    nothing to tell the reader why: the paragraph now names the finding's confidence and its
    reason."""
    inputs = LedgerInputs(mapped_files=[MappedFile(pid=10, path="/models/w.safetensors", size_bytes=GiB)],
                          others=others())
    f = next(x for x in build_ledger(HOST, engine_sample(), inputs).findings if x.rule == "first_touch")
    seen = FindingSeen(finding=f, index=0, t_s=0.0, raised=1, scanned=1, first_s=0.0, last_s=0.0)
    moment = SimpleNamespace(inputs=LedgerInputs(page_cache=[]))
    d = SimpleNamespace(findings=[seen], probes=[{"name": "pagecache"}], moments=[moment], files_source=None)
    level, why = attribution(d)
    assert level == "high" and "the first-touch finding is medium confidence" in why
    f.confidence = "high"
    assert "first-touch" not in attribution(d)[1]


def test_analysis_takes_the_ebpf_report_nearest_the_sample(tmp_path):
    """Issue 17, defect 5: a report's pinned-memory evidence cited the eBPF report from before the
    allocation ("live cudaHostAlloc = 4 B") while the counters already showed 532 MiB. The
    analysis takes the report completed nearest the sample; the replay screen keeps the last one
    before it, as the live screen had it."""
    from dataclasses import asdict

    from report_recordings import fixture_recording
    from spark_memprobe.probe_report import CudaOutstanding, ProbeReport, report_to_dict
    from spark_memprobe.feed.replay import ReplayFeed
    from spark_memprobe.recording import Recording, RecordingWriter

    src = fixture_recording("h100-cgroup2-scenario", str(tmp_path / "src.db"))
    rec = Recording(src)
    w = RecordingWriter(str(tmp_path / "r.db"), rec.header)
    samples = list(rec.samples())
    for s in samples:
        w.add_sample(s)

    def report(ended, pinned):
        r = ProbeReport(started_mono_ns=ended - 10**9, ended_mono_ns=ended,
                        cuda=[CudaOutstanding(pid=1, cgroup_id=1, kind="host-pinned", outstanding_bytes=pinned,
                                              allocs=1, frees=0)])
        return report_to_dict(r)
    at = samples[5].mono_ns
    w.add_event(at - 900_000_000, "probes", report(at - 900_000_000, 4))
    w.add_event(at + 100_000_000, "probes", report(at + 100_000_000, 532 << 20))
    w.close()
    rec.close()
    feed = ReplayFeed(Recording(str(tmp_path / "r.db")))
    pinned = lambda r: r.cuda[0].outstanding_bytes   # noqa: E731
    assert pinned(feed.report_at(at)) == 4                          # what the screen had
    assert pinned(feed.report_at(at, nearest=True)) == 532 << 20    # what the report explains with
    assert pinned(feed.report_at(at - 800_000_000, nearest=True)) == 4
    assert asdict(feed.at(samples[5], nearest=True).report) == asdict(feed.report_at(at, nearest=True))
