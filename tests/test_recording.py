"""Recordings replay exactly; a kill -9 loses at most the last second; bad files get one line."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Optional

import pytest

from fixture_loader import load_step, steps
from report_recordings import fixture_recording
from spark_memprobe.cli import EXIT_BAD_INPUT, main
from spark_memprobe.recording import (deflate, GPU_FIELDS, KEYFRAME_EVERY, Recording, RecordingError, RecordingWriter,
                                      flatten, unflatten)
from spark_memprobe.probe_report import ProbeReport, report_to_dict
from spark_memprobe.feed.replay import ReplayFeed
from spark_memprobe.samples import CgroupSample, Sample, sample_from_dict, sample_to_dict
from spark_memprobe.sources.sampler import PureSampler

ALL = [(s, "memprobe_fixture") for s in steps("h100-cgroup2-scenario")] + \
      [(s, "memprobe_engine") for s in steps("h100-inference-scenario")]


def fixture_samples():
    out = []
    for i, (st, cg) in enumerate(ALL):
        host, s = load_step(st, cg)
        s.mono_ns, s.wall_ns = i * 100_000_000, 1_700_000_000_000_000_000 + i
        out.append((host, s))
    return out


def test_flatten_roundtrip():
    d = {"a": {"b": [1, {"c": None}], "e": {}, "f": []}, "g": "x", "h": {"0": 5}}
    assert unflatten(flatten(d)) == d


def test_fixture_samples_replay_exactly(tmp_path):
    samples = fixture_samples()
    path = str(tmp_path / "run.db")
    w = RecordingWriter(path, {"host": asdict(samples[0][0]), "interval_ns": 100_000_000})
    for _, s in samples:
        w.add_sample(s)
    w.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    r = Recording(path)
    assert len(r) == len(samples)
    # each blob was deflated with a 4 KiB window (CINFO 4 in the zlib header) when its JSON fits
    # one, else 32 KiB (CINFO 7), and read back above
    for (blob,) in r.db.execute("SELECT data FROM samples"):
        assert blob[0] >> 4 == (4 if len(zlib.decompress(blob)) <= 4096 else 7)
    got = list(r.samples())
    for (_, want), have in zip(samples, got):
        assert sample_to_dict(have) == sample_to_dict(want)
    assert r.host == samples[0][0]
    # random access rebuilds from the last keyframe
    assert sample_to_dict(r.sample(7)) == sample_to_dict(samples[7][1])
    tl = r.timeline(["cg_current_bytes", "mem_available_bytes"])
    assert [t[2] for t in tl] == [s.cgroup.current_bytes for _, s in samples]


def test_deflate_window_by_size():
    """recording.deflate: a 4 KiB window for JSON that fits one (a tenth of zlib.compress's set-up
    cost), 32 KiB above; both inflate with zlib's defaults, and the small window costs nothing
    in size where the whole text fits it."""
    small = json.dumps([[i, 10 ** 9 + 7 * i] for i in range(150)], separators=(",", ":")).encode()
    large = json.dumps([[i, 10 ** 9 + 7 * i] for i in range(600)], separators=(",", ":")).encode()
    assert len(small) <= 4096 < len(large)
    for text, cinfo in ((small, 4), (large, 7)):
        blob = deflate(text)
        assert blob[0] >> 4 == cinfo and zlib.decompress(blob) == text
    assert len(deflate(small)) <= len(zlib.compress(small, 6))


def test_live_samples_delta_and_keyframes(tmp_path):
    path = str(tmp_path / "live.db")
    w = RecordingWriter(path, {})
    want = []
    with PureSampler() as smp:
        for _ in range(KEYFRAME_EVERY + 5):
            s = smp.sample()
            want.append(sample_to_dict(s))
            w.add_sample(s)
    w.close()
    r = Recording(path)
    assert r.keyframes == [0, KEYFRAME_EVERY]
    assert [sample_to_dict(s) for s in r.samples()] == want
    assert sample_to_dict(r.sample(KEYFRAME_EVERY + 3)) == want[KEYFRAME_EVERY + 3]
    size = os.path.getsize(path)
    print(f"{size / len(want):.0f} bytes per sample (host-only samples)")


@pytest.mark.parametrize("page", [None, 1024])
def test_a_commit_of_one_small_row_writes_one_page_to_the_wal(tmp_path, page):
    """Why the flight recorder's base files have 1 KiB pages (feed/flight.py BASE_PAGE_BYTES):
    each commit of a ~200-byte row appends the leaf page it changed, whole, to the -wal."""
    path = str(tmp_path / "rows.db")
    w = RecordingWriter(path, {}, commit_every_s=None, page_size=page)
    flat = {"cgroup/current_bytes": 1 << 20, "cgroup/stat/anon": 0}
    w.add_flat(1, 1, dict(flat))
    w.commit()
    wal0 = os.path.getsize(path + "-wal")
    for i in range(40):                 # one changed value a second, each its own commit
        flat["cgroup/current_bytes"] += 4096 * (i + 1)
        w.add_flat(2 + i, 2 + i, dict(flat))
        w.commit()
    per_commit = (os.path.getsize(path + "-wal") - wal0) / 40
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
    w.close()
    assert size == (page or 4096)
    assert size + 24 <= per_commit <= 1.25 * (size + 24), (size, per_commit)       # 24: the frame header
    with Recording(path) as r:
        assert len(r) == 41


WRITER = r"""
import sys, time
from spark_memprobe.recording import RecordingWriter
from spark_memprobe.sources.sampler import PureSampler
w = RecordingWriter(sys.argv[1], {})
with PureSampler() as smp:
    while True:
        w.add_sample(smp.sample())
        print("tick", flush=True)
        time.sleep(0.1)
"""


def test_kill_9_loses_at_most_the_last_second(tmp_path):
    path = str(tmp_path / "killed.db")
    p = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    ticks = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        p.stdout.readline()
        ticks += 1
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = Recording(path)
    assert ticks - len(r) <= 11, (ticks, len(r))       # 10 Hz: at most one second lost
    assert len(list(r.samples())) == len(r)


def bad_recordings(tmp_path, good: str) -> dict[str, tuple[str, str]]:
    """{case: (path, what its one-line error says)}: bad files made from the recording `good`.
    The only SQL in the tests outside tests/adversarial: these files are broken on purpose."""
    data = open(good, "rb").read()
    out = {}
    p = tmp_path / "text.db"
    p.write_text("hello")
    out["text"] = (str(p), "not an SQLite file")
    p = tmp_path / "foreign.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE x(a)")
    db.commit()
    db.close()
    out["foreign"] = (str(p), "not a memprobe recording")
    p = tmp_path / "empty.db"
    RecordingWriter(str(p), {"probes": None}).close()
    out["empty"] = (str(p), "the recording holds no samples; nothing to report")
    p = tmp_path / "trunc.db"
    p.write_bytes(data[:len(data) // 2])
    out["truncated"] = (str(p), "corrupt")
    for name, sql, args, want in [
            ("blob", "UPDATE samples SET data = x'deadbeef' WHERE seq = 3", (), "corrupt sample data"),
            ("fields", "UPDATE samples SET data = ? WHERE seq = 0", (zlib.compress(b"[[999999, 5]]"),),
             "corrupt sample data"),
            ("newer", "UPDATE meta SET value = '99' WHERE key = 'schema_version'", (), "written by a newer memprobe"),
            ("probe event", """INSERT INTO events(mono_ns, kind, value) VALUES (5, 'probes', '{"bogus": 1}')""", (),
             "corrupt 'probes' event")]:
        p = tmp_path / f"{name.replace(' ', '-')}.db"
        p.write_bytes(data)
        db = sqlite3.connect(p)
        db.execute(sql, args)
        db.commit()
        db.close()
        out[name] = (str(p), want)
    out["missing"] = (str(tmp_path / "nothing.db"), "no such recording")
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    return fixture_recording("h100-cgroup2-scenario", str(tmp_path_factory.mktemp("good") / "good.db"))


def test_bad_files_one_line_errors(tmp_path, good):
    for name, (path, want) in bad_recordings(tmp_path, good).items():
        try:
            with Recording(path) as r:
                list(r.samples())
                [e.value for e in r.events()]
        except RecordingError as e:
            assert "\n" not in str(e) and want in str(e), (name, str(e))
        else:
            assert name == "empty", f"{name}: read without an error"


def test_bad_recordings_report_one_line_exit_6(tmp_path, good, capsys):
    for name, (path, want) in bad_recordings(tmp_path, good).items():
        capsys.readouterr()
        assert main(["report", path]) == EXIT_BAD_INPUT, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"memprobe: {path}") and want in err, (name, err)
        assert "Traceback" not in err
        # a comparison with one bad side fails the same way
        assert main(["report", good, path]) == EXIT_BAD_INPUT, name
        capsys.readouterr()


def test_refuses_to_overwrite_and_symlinks(tmp_path):
    p = tmp_path / "x.db"
    p.write_text("keep")
    with pytest.raises(RecordingError, match="exists"):
        RecordingWriter(str(p), {})
    assert p.read_text() == "keep"
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(RecordingError, match="symlink"):
        RecordingWriter(str(link), {}, overwrite=True)
    assert not (tmp_path / "elsewhere.db").exists()


def test_size_bound_stops_and_says_so(tmp_path):
    path = str(tmp_path / "small.db")
    w = RecordingWriter(path, {}, max_bytes=200_000)
    with PureSampler() as smp:
        kept = sum(w.add_sample(smp.sample()) for _ in range(2000))
    w.close()
    r = Recording(path)
    assert len(r) == kept < 2000
    assert r.events("recording_stopped")


@dataclass
class NewerCgroup(CgroupSample):
    tier_bytes: Optional[int] = None                # a field a newer memprobe might add


@dataclass
class NewerSample(Sample):
    nics: list = field(default_factory=list)        # a whole new part of the sample


def test_a_newer_recording_with_more_fields_still_reads(tmp_path):
    """The schema only grows: header keys, sample fields and event kinds a reader does not know are
    skipped, and everything it knows reads as written (report and replay included)."""
    host, s = load_step(steps("h100-cgroup2-scenario")[4], "memprobe_fixture")
    path = str(tmp_path / "newer.db")
    w = RecordingWriter(path, {"host": asdict(host), "interval_ns": 10 ** 8, "probes": None,
                               "energy": {"unit": "J", "per_sample": True}})
    want = []
    for i in range(3):
        cg = NewerCgroup(**asdict(s.cgroup), tier_bytes=i)
        cg.pressure = s.cgroup.pressure
        newer = NewerSample(**{**vars(s), "cgroup": cg, "mono_ns": (i + 1) * 10 ** 8}, nics=[{"rx_bytes": i}])
        w.add_sample(newer)
        w.add_event(newer.mono_ns, "gpu_power", {"watts": [300 + i]})
        want.append({**sample_to_dict(s), "mono_ns": newer.mono_ns})
    w.close()
    with Recording(path) as r:
        assert [sample_to_dict(x) for x in r.samples()] == want
        assert r.header["energy"] == {"unit": "J", "per_sample": True}
        assert [e.value for e in r.events("gpu_power")] == [{"watts": [300]}, {"watts": [301]}, {"watts": [302]}]
    assert main(["report", path, "-o", str(tmp_path / "r.md")]) == 0
    assert main(["replay", path, "--json"]) == 0


def test_an_old_file_with_a_targets_table_reads(tmp_path, good):
    """Writers before this layout made a `targets` table (never filled from the CLI): it is ignored."""
    path = tmp_path / "old.db"
    path.write_bytes(open(good, "rb").read())
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE targets(seq INTEGER PRIMARY KEY, mono_ns INTEGER, wall_ns INTEGER, value TEXT)")
    db.execute("""INSERT INTO targets(mono_ns, wall_ns, value) VALUES (1, 2, '{"cgroup_path": "/x"}')""")
    db.commit()
    db.close()
    with Recording(str(path)) as r, Recording(good) as g:
        assert [sample_to_dict(x) for x in r.samples()] == [sample_to_dict(x) for x in g.samples()]
    assert main(["report", str(path), "-o", str(tmp_path / "r.md")]) == 0


def test_events_are_decoded_when_asked_for(tmp_path):
    """Opening a replay parses no event: a bad 'probes' event (the writer takes any JSON) is found
    only by the item that needs it, as one line."""
    host, s = load_step(steps("h100-cgroup2-scenario")[0], "memprobe_fixture")
    path = str(tmp_path / "run.db")
    w = RecordingWriter(path, {"host": asdict(host), "probes": []})
    for i in range(6):
        s.mono_ns = (i + 1) * 10 ** 9
        w.add_sample(s)
        w.add_event(s.mono_ns, "probes", {"bogus": i} if i == 3 else report_to_dict(ProbeReport(0, s.mono_ns)))
        w.add_event(s.mono_ns, "mapped_files", {"files": []})
    w.close()
    with Recording(path) as r:
        feed = ReplayFeed(r)
        assert len(feed.reports) == 6
        for i in (0, 1, 2, 4, 5):
            assert feed.item(i).report.ended_mono_ns == (i + 1) * 10 ** 9
        with pytest.raises(RecordingError, match="corrupt 'probes' event"):
            feed.item(3)


def test_reader_api_by_index_and_time(tmp_path):
    samples = fixture_samples()
    path = str(tmp_path / "run.db")
    w = RecordingWriter(path, {"host": asdict(samples[0][0])})
    for i, (_, s) in enumerate(samples):
        w.add_sample(s)
        w.add_event(s.mono_ns, "target", {"kind": "restarted", "message": f"m{i}"})
    w.close()
    with Recording(path) as r:
        mono = [s.mono_ns for _, s in samples]
        assert r.mono == mono
        assert r.index_at(mono[5]) == 5 and r.index_at(mono[5] + 1) == 5 and r.index_at(mono[0] - 1) is None
        got = r.samples_at([9, 2, 2, 7, len(r) + 3])
        assert sorted(got) == [2, 7, 9]
        assert all(sample_to_dict(got[i]) == sample_to_dict(samples[i][1]) for i in got)
        # a walk builds a sample in part: only the fields asked for (and the times); changed() says
        # whether they moved since the previous sample
        fields = ("gpus", "processes/*/pid")
        for step in r.walk(4, 8):
            part, whole = step.sample(fields), samples[step.index][1]
            assert part.gpus == whole.gpus and part.meminfo is None and part.cgroup is None
            assert [p.pid for p in part.processes] == [p.pid for p in whole.processes]
            assert part.processes[0].rss_bytes is None and part.mono_ns == whole.mono_ns
            prev = samples[step.index - 1][1]
            moved = step.index == 4 or whole.gpus != prev.gpus or [p.pid for p in whole.processes] != \
                [p.pid for p in prev.processes]
            assert step.changed(fields) == moved
        ev = r.events("target")
        assert ev.value_at(mono[3]) == {"kind": "restarted", "message": "m3"} and ev.value_at(mono[0] - 1) is None
        assert ev.between(mono[2], mono[4]) == [{"kind": "restarted", "message": "m3"},
                                                {"kind": "restarted", "message": "m4"}]
        assert ev[-1].value["message"] == f"m{len(r) - 1}" and ev[-1].kind == "target"


def test_fields_a_newer_version_adds_inside_known_values_are_skipped(tmp_path):
    """Additive inside values too: a newer writer's extra keys in the header's host and GPU
    facts, in an eBPF report and its entries, in a kernel-state zone and in another cgroup are
    ignored; what this version knows reads as written."""
    from spark_memprobe.probe_report import CudaOutstanding, ProbeReport, report_to_dict
    from spark_memprobe.feed.replay import ReplayFeed
    from spark_memprobe.samples import KernelMemory, Zone

    host, s = load_step(steps("h100-cgroup2-scenario")[4], "memprobe_fixture")
    h = asdict(host)
    h["cpu_model"] = "Grace"                                  # new HostInfo field
    h["gpus"][0]["hbm_stacks"] = 6                            # new GpuInfo field
    path = str(tmp_path / "newer-values.db")
    w = RecordingWriter(path, {"host": h, "interval_ns": 10 ** 8, "probes": []})
    s.mono_ns = 10 ** 9
    w.add_sample(s)
    rep = report_to_dict(ProbeReport(started_mono_ns=0, ended_mono_ns=10 ** 9, cuda=[
        CudaOutstanding(pid=1, cgroup_id=2, kind="device", outstanding_bytes=4096, allocs=1, frees=0)]))
    rep["gpu_faults"] = [1, 2]                                # new ProbeReport field
    rep["cuda"][0]["stream"] = 7                              # new CudaOutstanding field
    w.add_event(10 ** 9, "probes", rep)
    k = asdict(KernelMemory(zones=[Zone(node=0, name="Normal", free_pages=10, high_pages=5, managed_pages=100,
                                        protection_pages=[0], low_pages=3)]))
    k["zones"][0]["cma_pages"] = 0                            # new Zone field
    k["thp_enabled"] = "always"                               # new KernelMemory field
    w.add_event(10 ** 9, "kernel", k)
    cg = asdict(s.cgroup)
    cg["tier"] = "cxl"                                        # new CgroupSample field
    w.add_event(10 ** 9, "other_cgroups", {"cgroups": [cg]})
    w.close()
    with Recording(path) as r:
        assert r.host.gpus[0].uuid == host.gpus[0].uuid and not hasattr(r.host, "cpu_model")
        item = ReplayFeed(r).item(0)
        assert item.report.cuda[0].outstanding_bytes == 4096
        assert item.kernel["zones"][0]["free_pages"] == 10
    assert main(["report", path, "-o", str(tmp_path / "r.md")]) == 0
    assert main(["replay", path, "--json"]) == 0


def test_gpu_data_repeats_the_blobs_gpu_items_and_old_files_report_the_same(tmp_path):
    """gpu_data holds exactly the items of each sample's blob under GPU_FIELDS (NULL where none
    changed); a report reads it instead of the blobs, and a file without the column (written
    before it was added) walks and reports the same from its blobs."""
    samples = [s for _, s in fixture_samples()]
    # a few samples where only the GPU numbers move, and one where nothing GPU moves
    for k in range(3):
        s = sample_from_dict(sample_to_dict(samples[-1]))
        s.mono_ns, s.wall_ns = samples[-1].mono_ns + (k + 1) * 10 ** 8, samples[-1].wall_ns + k + 1
        s.gpus[0].used_bytes += k and (k << 20)
        samples.append(s)
    os.makedirs(tmp_path / "new")
    os.makedirs(tmp_path / "old")
    new, old = str(tmp_path / "new" / "run.db"), str(tmp_path / "old" / "run.db")
    w = RecordingWriter(new, {"host": asdict(fixture_samples()[0][0]), "interval_ns": 100_000_000, "probes": None})
    for s in samples:
        w.add_sample(s)
    w.close()
    db = sqlite3.connect(new)
    paths = dict(db.execute("SELECT id, path FROM paths"))
    gpu_ids = {i for i, p in paths.items()
               if any(p == f or p.startswith(f + "/") for f in GPU_FIELDS if "*" not in f)
               or p.startswith("processes/") and p.endswith("/pid")}
    rows = db.execute("SELECT data, gpu_data FROM samples ORDER BY seq").fetchall()
    db.close()
    assert any(g is None for _, g in rows) and sum(g is not None for _, g in rows) > len(rows) // 2
    for data, gpu_data in rows:
        want = [item for item in json.loads(zlib.decompress(data)) if item[0] in gpu_ids]
        assert (json.loads(gpu_data) if gpu_data is not None else []) == want
    open(old, "wb").write(open(new, "rb").read())
    db = sqlite3.connect(old)
    db.execute("ALTER TABLE samples DROP COLUMN gpu_data")     # the layout before the column
    db.commit()
    db.close()
    with Recording(new) as n, Recording(old) as o:
        assert n.has_gpu_data and not o.has_gpu_data
        got = [(st.full, sample_to_dict(st.sample(GPU_FIELDS))) for st in n.walk(gpu_only=True)]
        assert [g for _, g in got] == [sample_to_dict(st.sample(GPU_FIELDS)) for st in o.walk(gpu_only=True)]
        assert {f for f, _ in got} == {False}
    for p in (new, old):
        assert main(["report", p, "-o", p + ".md"]) == 0
    assert open(new + ".md").read().replace("/new/", "/old/") == open(old + ".md").read()
