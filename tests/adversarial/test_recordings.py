"""Hostile recordings and hostile output paths against record, replay and report (issue 15).

Readers: every bad file is one line and exit 6, never a traceback, at bounded memory, and a read
leaves nothing beside the file (no -shm, no -wal), also on read-only media. Writer: `record`
creates its file new, mode 0600, never through a symlink or a planted sidecar, never blocks on a
FIFO, and a clean stop leaves one complete file; after kill -9 the -wal's data is read or named.

The fuzz tests mutate a real recording (the captured H100 inference scenario, tests/report_recordings.py,
plus a probes, a target and a recording_stopped event) at every level a file can be wrong at: random
bytes, truncation, SQL cells of every table (NULL, text, blobs where numbers belong), header and
event JSON (junk, wrong types, mutated leaves), sample blobs (raw, compressed junk, mutated items).
They drive the real readers in-process: Recording, `memprobe replay --json` and `memprobe report`
through cli.main. The attack tests run `memprobe record` on a live memory cgroup (tests/livecg.py)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict
from typing import Any, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

from report_recordings import fixture_recording
from spark_memprobe.cli import main
from spark_memprobe.probe_report import (CudaCall, CudaOutstanding, PageCacheFile, ProbeReport, ProbeStatus,
                                   report_to_dict)
from spark_memprobe.recording import (EVENTS, HEADER, MAX_SAMPLE_JSON_BYTES, MIN_MAX_BYTES, REMOVED, SCALARS,
                                      Recording, RecordingError, _leaf_type, _shape)

FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLI = [sys.executable, "-m", "spark_memprobe.cli"]


# -- a valid recording to mutate --------------------------------------------------------------
class Bytes(bytes):
    def __repr__(self) -> str:          # hypothesis prints its arguments
        return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    """The bytes of a valid recording with every event kind the readers parse."""
    path = str(tmp_path_factory.mktemp("base") / "run.db")
    fixture_recording("h100-inference-scenario", path,
                      probes=[asdict(ProbeStatus("cuda", "uprobe:libcuda.so.1", True, "works"))])
    with Recording(path) as r:
        pids = sorted({p.pid for s in r.samples() for p in s.processes})
        mono = r.mono
    rep = ProbeReport(started_mono_ns=mono[0], ended_mono_ns=mono[len(mono) // 2], target="cgroup",
                      page_cache=[PageCacheFile(cgroup_id=77, dev_major=254, dev_minor=0, inode=9, added_pages=7000,
                                                removed_pages=1000, last_pid=pids[0], path="/models/x.safetensors",
                                                cgroup_path="/memprobe_engine")],
                      cuda=[CudaOutstanding(pid=pids[0], kind="device", outstanding_bytes=1 << 30, allocs=1, frees=0)],
                      cuda_calls=[CudaCall(ts_ns=mono[1], pid=pids[0], tid=pids[0], cgroup_id=77, func="cuMemAlloc_v2",
                                           kind="device", size_bytes=1 << 30, ptr=1 << 40, result=0)],
                      cgroup_paths={77: "/memprobe_engine"})
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO events(mono_ns, kind, value) VALUES (?, ?, ?)",
                   [(rep.ended_mono_ns, "probes", json.dumps(report_to_dict(rep))),
                    (mono[2], "target", json.dumps({"kind": "restarted", "message": "restarted", "wall_ns": 1,
                                                    "facts": {"pid": 5}})),
                    (mono[-1], "recording_stopped", json.dumps({"reason": "size bound of 1 bytes reached"}))])
    db.commit()
    db.close()
    assert sorted(os.listdir(os.path.dirname(path))) == ["run.db"]
    return Bytes(open(path, "rb").read())


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def read_everything(path: str) -> list[int]:
    """Every reader over `path`: each either works or says one line (RecordingError, exit 6).
    Any other exception fails the test. Returns the exit codes of replay --json and report."""
    directory = os.path.dirname(path)
    before = sorted(os.listdir(directory))
    try:
        with Recording(path) as r:
            list(r.samples())
            [e.value for e in r.events()]          # values are decoded on access
            r.timeline(list(SCALARS))
            r.host
    except RecordingError as e:
        assert "\n" not in str(e), str(e)
    codes = []
    for argv in (["replay", path, "--json"], ["report", path]):
        rc, out, err = run_main(argv)
        assert rc in (0, 6), (argv, rc, err)
        if rc == 6:
            assert err.count("\n") == 1 and err.startswith("memprobe: "), err
        codes.append(rc)
    assert sorted(os.listdir(directory)) == before, "a reader left a file beside the recording"
    return codes


@contextlib.contextmanager
def copy_of(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "run.db")
        with open(path, "wb") as f:
            f.write(data)
        yield path


# -- strategies ---------------------------------------------------------------------------
SPECIAL = st.sampled_from([0, -1, 1 << 63, 1 << 64, -(1 << 63) - 1, 10 ** 30, "", "max", "NaN", [], {}, REMOVED,
                           True, 1.5, float("nan"), float("inf")])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | SPECIAL,
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=8)
CELL = st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1), st.floats(allow_nan=False), st.text(max_size=20),
                 st.binary(max_size=40), JSON.map(json.dumps), st.just("{"), st.just("[" * 100_000))


def loads(text):
    """A JSON cell an earlier mutation may have broken, as a value (None if it is not JSON)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


def mutate_json(data, v):
    """v with one leaf (or subtree) replaced, at a depth hypothesis picks."""
    if isinstance(v, (dict, list)) and v and data.draw(st.booleans()):
        k = data.draw(st.sampled_from(sorted(v) if isinstance(v, dict) else range(len(v))))
        v[k] = mutate_json(data, v[k])
        return v
    return data.draw(JSON)


INT = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.sampled_from([0, -1, 1, 4096, (1 << 63) - 1, -(1 << 63)]))


def of_type(hint) -> st.SearchStrategy:
    """Values that pass the reader's type checks (recording.py), to reach the code behind them:
    negative, zero and 64-bit numbers, empty and odd strings, None where a field may be None."""
    if hint is Any:
        return JSON
    if hint is type(None):
        return st.none()
    if get_origin(hint) is Union:
        return st.one_of([of_type(h) for h in get_args(hint)])
    if hint is bool:
        return st.booleans()
    if hint is int:
        return INT
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False) | INT
    if hint is str:
        return st.text(max_size=10) | st.sampled_from(["", "/", "max", "#0", "../x"])
    if get_origin(hint) is list:
        return st.lists(of_type(get_args(hint)[0]), max_size=3)
    if get_origin(hint) is dict:
        kt, vt = get_args(hint)
        return st.dictionaries(INT.map(str) if kt is int else st.text(max_size=6), of_type(vt), max_size=3)
    hints, required = _shape(hint)          # a dataclass, or a dict shape (a missing key reads as None)
    required = required or {k for k, t in hints.items() if t is not Any and type(None) not in get_args(t)}
    return st.fixed_dictionaries({k: of_type(hints[k]) for k in sorted(required)},
                                 optional={k: of_type(t) for k, t in hints.items() if k not in required})


def retype(data, v, hint):
    """v with one part, at a depth hypothesis picks, replaced by a value of the type that part has."""
    alts = [h for h in (get_args(hint) if get_origin(hint) is Union else (hint,)) if h is not type(None)]
    h = alts[0] if len(alts) == 1 else None
    if isinstance(v, dict) and v and h is not None and data.draw(st.booleans()):
        k = data.draw(st.sampled_from(sorted(v)))
        sub = get_args(h)[1] if get_origin(h) is dict else _shape(h)[0].get(k, Any) if h is not Any else Any
        v[k] = retype(data, v[k], sub)
        return v
    if isinstance(v, list) and v and get_origin(h) is list and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(v) - 1))
        v[i] = retype(data, v[i], get_args(h)[0])
        return v
    return data.draw(of_type(hint))


def blob_of(data, db, seq: int):
    """A new blob for sample `seq`: junk, compressed junk, or the real one with a part mutated."""
    how = data.draw(st.sampled_from(["raw", "zjunk", "zjson", "mutate", "typed", "typed", "typed"]))
    if how == "raw":
        return data.draw(st.binary(max_size=200))
    if how == "zjunk":
        return zlib.compress(data.draw(st.binary(max_size=200)))
    if how == "zjson":
        return zlib.compress(json.dumps(data.draw(JSON)).encode())
    row = db.execute("SELECT data FROM samples WHERE seq = ?", (seq,)).fetchone()
    try:
        body = json.loads(zlib.decompress(row[0]))
    except (TypeError, ValueError, zlib.error):          # an earlier mutation broke it
        body = None
    if how == "typed" and isinstance(body, list) and body:
        paths = dict(db.execute("SELECT id, path FROM paths"))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(body) - 1))
            pid = data.draw(st.sampled_from(sorted(paths)))
            t = _leaf_type(paths[pid]) if isinstance(paths[pid], str) else None
            if t is not None:
                body[i] = [pid, data.draw(st.just(REMOVED) | of_type(t))]
        return zlib.compress(json.dumps(body).encode())
    return zlib.compress(json.dumps(mutate_json(data, body)).encode())


def mutate(data, db) -> str:
    """One mutation of the open recording `db`; returns what it did (for the failure report)."""
    n = db.execute("SELECT count(*) FROM samples").fetchone()[0]
    seq = data.draw(st.integers(0, n - 1))
    what = data.draw(st.sampled_from(["header", "header_leaf", "header_typed", "blob", "blob", "blob_cell", "event",
                                      "event_leaf", "event_typed", "event_typed", "sample_cell", "sample_int",
                                      "event_mono", "paths", "meta"]))
    if what == "header":
        key = data.draw(st.sampled_from(sorted(HEADER)))
        db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, data.draw(CELL)))
    elif what == "header_leaf":
        key = data.draw(st.sampled_from(sorted(HEADER)))
        row = db.execute("SELECT value FROM header WHERE key = ?", (key,)).fetchone()
        v = mutate_json(data, loads(row[0]) if row else None)
        db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, json.dumps(v)))
    elif what == "header_typed":
        key = data.draw(st.sampled_from(sorted(HEADER)))
        row = db.execute("SELECT value FROM header WHERE key = ?", (key,)).fetchone()
        v = retype(data, loads(row[0]) if row else None, HEADER[key])
        db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, json.dumps(v)))
    elif what == "event_typed":
        rows = db.execute("SELECT seq, kind, value FROM events ORDER BY seq").fetchall()
        eseq, kind, value = data.draw(st.sampled_from(rows))
        v = retype(data, loads(value), EVENTS.get(kind, Any))
        db.execute("UPDATE events SET value = ? WHERE seq = ?", (json.dumps(v), eseq))
    elif what == "sample_int":
        col = data.draw(st.sampled_from(["mono_ns", "wall_ns", *SCALARS]))
        db.execute(f"UPDATE samples SET {col} = ? WHERE seq = ?",
                   (data.draw(st.one_of(INT.filter(lambda v: v < 1 << 63), st.none())), seq))
    elif what == "blob":
        db.execute("UPDATE samples SET data = ? WHERE seq = ?", (blob_of(data, db, seq), seq))
    elif what == "blob_cell":
        db.execute("UPDATE samples SET data = ? WHERE seq = ?", (data.draw(CELL), seq))
    elif what == "event":
        kind = data.draw(st.sampled_from(["probes", "target", "recording_stopped", "mapped_files", "other_cgroups",
                                          "other"]))
        db.execute("INSERT INTO events(mono_ns, kind, value) VALUES (?, ?, ?)",
                   (data.draw(st.integers(0, 1 << 40)), kind, data.draw(CELL)))
    elif what == "event_leaf":
        rows = db.execute("SELECT seq, value FROM events ORDER BY seq").fetchall()
        eseq, value = data.draw(st.sampled_from(rows))
        db.execute("UPDATE events SET value = ? WHERE seq = ?", (json.dumps(mutate_json(data, loads(value))), eseq))
    elif what == "sample_cell":
        col = data.draw(st.sampled_from(["mono_ns", "wall_ns", "keyframe", *SCALARS]))
        db.execute(f"UPDATE samples SET {col} = ? WHERE seq = ?", (data.draw(CELL), seq))
    elif what == "event_mono":
        db.execute("UPDATE events SET mono_ns = ? WHERE seq = (SELECT min(seq) FROM events)", (data.draw(CELL),))
    elif what == "paths":
        pid = data.draw(st.integers(1, db.execute("SELECT max(id) FROM paths").fetchone()[0]))
        db.execute("UPDATE OR IGNORE paths SET path = ? WHERE id = ?", (data.draw(CELL), pid))
    else:
        db.execute("UPDATE meta SET value = ? WHERE key = ?",
                   (data.draw(CELL), data.draw(st.sampled_from(["magic", "schema_version"]))))
    return what


# -- fuzz: readers --------------------------------------------------------------------------
@settings(max_examples=250, **FUZZ)
@given(data=st.data())
def test_fuzz_mutated_recordings_one_line_exit_6(base, data):
    """Attack: a valid recording with 1-3 hostile changes: header values of the wrong type or junk
    JSON, NULL/text/blob cells where numbers belong (mono_ns, scalar columns, keyframe), sample
    blobs that are junk, compressed junk, not a list, or hold NULL / strings / huge numbers / NaN
    inside, event JSON that is junk or has the wrong shape, field paths and meta rows replaced.
    Defence: typed checks in spark_memprobe/recording.py (Events decode values on access): every
    reader works or exits 6 with one line; nothing is left beside the file."""
    with copy_of(base) as path:
        db = sqlite3.connect(path)
        done = [mutate(data, db) for _ in range(data.draw(st.integers(1, 3)))]
        db.commit()
        db.close()
        note(done)
        read_everything(path)


@settings(max_examples=80, **FUZZ)
@given(cut=st.integers(0, 1 << 20), junk=st.binary(max_size=64))
def test_fuzz_truncated_and_patched_files(base, cut, junk):
    """Attack: a recording cut short at any byte, or with bytes overwritten at any offset.
    Defence: SQLite errors and every value check become one line, exit 6."""
    cut %= len(base)
    for data in (base[:cut], base[:cut] + junk + base[cut + len(junk):]):
        with copy_of(data) as path:
            read_everything(path)


@settings(max_examples=200, **FUZZ)
@given(body=st.binary(max_size=4096), sqlite_head=st.booleans())
def test_fuzz_random_bytes(body, sqlite_head):
    """Attack: random bytes as the file, with or without SQLite's 16-byte magic in front.
    Defence: one line, exit 6."""
    with copy_of((b"SQLite format 3\x00" if sqlite_head else b"") + body) as path:
        assert read_everything(path) == [6, 6]


# -- memory: a zlib bomb ---------------------------------------------------------------------
HWM = r"""
import sys
from spark_memprobe.recording import Recording, RecordingError
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
with Recording(sys.argv[1]) as r:       # imports and caches first: only the bomb's cost is measured
    list(r.samples())
before = hwm()
try:
    with Recording(sys.argv[2]) as r:
        list(r.samples())
    print("read", hwm() - before)
except RecordingError as e:
    print("refused", hwm() - before, e)
"""


def with_blob(good: str, path: str, blob: bytes) -> str:
    shutil.copy(good, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE samples SET data = ? WHERE seq = 0", (blob,))
    db.commit()
    db.close()
    return path


def test_zlib_bomb_costs_no_memory(tmp_path):
    """Attack: a 510 KB sample blob that inflates to 512 MiB of JSON whitespace (the issue's bomb
    drove a reader to 1 GB RSS), and a blob just under the bound packed with the smallest JSON
    items (the most objects a parse can build). Defence: zlib.decompressobj with max_length
    MAX_SAMPLE_JSON_BYTES (recording.py _decode): peak RSS grows < 100 MB, and the CLI says one line."""
    good = fixture_recording("h100-cgroup2-scenario", str(tmp_path / "good.db"))
    z = zlib.compressobj(6)
    blank = b" " * (1 << 20)
    bomb = b"".join(z.compress(blank) for _ in range(512)) + z.compress(b"[]") + z.flush()
    assert len(bomb) < 600_000
    items = MAX_SAMPLE_JSON_BYTES // 6 - 1         # [1,0], about 700,000 of them
    dense = zlib.compress(b"[" + b"[1,0]," * items + b"[1,0]]", 9)
    for name, blob in (("bomb", bomb), ("dense", dense)):
        path = with_blob(good, str(tmp_path / f"{name}.db"), blob)
        out = subprocess.run([sys.executable, "-c", HWM, good, path], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        verdict, grew = out.stdout.split()[:2]
        print(f"\n{name}: {len(blob)} bytes of blob, {verdict}, peak RSS grew {int(grew) >> 20} MiB")
        assert verdict == "refused" and int(grew) < 100 << 20, out.stdout
    r = subprocess.run([*CLI, "replay", str(tmp_path / "bomb.db"), "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 6 and r.stderr.count("\n") == 1 and "inflates past" in r.stderr, r.stderr


# -- the defects the issue names, through the real CLI --------------------------------------------
def test_named_defects_one_line_exit_6_through_the_cli(tmp_path):
    """Attack: the files that gave tracebacks (exit 1): NULL and text inside a sample blob, a blob
    that is not a list, a header of the wrong type, junk event JSON, NULL mono_ns (report), a
    NaN kv_fraction. Defence: the typed reader (recording.py). Each is one line, exit 6, for
    replay --json and report, run as real processes."""
    good = fixture_recording("h100-cgroup2-scenario", str(tmp_path / "good.db"))
    sqls = {
        "null-in-blob": ("UPDATE samples SET data = ? WHERE seq = 0", (zlib.compress(b"[[1, null]]"),)),
        "text-in-blob": ("UPDATE samples SET data = ? WHERE seq = 0", (zlib.compress(b'[[1, "x"]]'),)),
        "blob-not-list": ("UPDATE samples SET data = ? WHERE seq = 0", (zlib.compress(b'{"a": 1}'),)),
        "header-type": ("UPDATE header SET value = '[1, 2]' WHERE key = 'host'", ()),
        "event-junk": ("INSERT INTO events(mono_ns, kind, value) VALUES (5, 'target', '{junk')", ()),
        "null-mono": ("UPDATE samples SET mono_ns = NULL WHERE seq = 1", ()),
    }
    for name, (sql, args) in sqls.items():
        path = str(tmp_path / f"{name}.db")
        shutil.copy(good, path)
        db = sqlite3.connect(path)
        db.execute(sql, args)
        db.commit()
        db.close()
        for cmd in (["replay", path, "--json"], ["report", path]):
            r = subprocess.run([*CLI, *cmd], capture_output=True, text=True, timeout=60)
            assert r.returncode == 6, (name, cmd, r.stderr)
            assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"memprobe: {path}: corrupt"), (name, r.stderr)
    path = str(tmp_path / "nan.db")                  # NaN kv_fraction: read as missing, default 0.9
    shutil.copy(good, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE header SET value = 'NaN' WHERE key = 'kv_fraction'")
    db.commit()
    db.close()
    assert run_main(["report", path])[0] == 0


# -- the writer and readers on real recordings -----------------------------------------------------
@pytest.fixture(scope="module")
def cgroup():
    """A live memory cgroup with one process in it (tests/livecg.py), removed at the end."""
    from livecg import LiveCgroup
    if os.geteuid() != 0:
        pytest.skip("needs root to create a memory cgroup")
    try:
        cg = LiveCgroup()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no memory cgroup can be created here: {e}")
    try:
        cg.start_child()
        yield cg
    finally:
        cg.cleanup()


def record(cg, out: str, *extra: str, duration: str = "1s") -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "record", f"cgroup:{cg.path}", "-o", out, "--interval", "100ms", "--no-bpf",
                           *(("--duration", duration) if duration else ()), *extra],
                          capture_output=True, text=True, timeout=60)


def recorded_samples(r: subprocess.CompletedProcess) -> int:
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("recorded "), r.stdout + r.stderr
    return int(line.split()[1])


def ls(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture(scope="module")
def clean(cgroup, tmp_path_factory) -> tuple[str, int]:
    """(path, samples) of a recording that `memprobe record` stopped cleanly."""
    path = str(tmp_path_factory.mktemp("clean") / "run.db")
    r = record(cgroup, path)
    assert r.returncode == 0, r.stderr
    return path, recorded_samples(r)


@pytest.fixture(scope="module")
def killed(cgroup, tmp_path_factory) -> str:
    """The directory of a recording whose recorder got SIGKILL: run.db, run.db-wal, run.db-shm."""
    d = tmp_path_factory.mktemp("killed")
    p = subprocess.Popen([*CLI, "record", f"cgroup:{cgroup.path}", "-o", str(d / "run.db"), "--interval", "100ms",
                          "--no-bpf"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("recording "), p.stderr.read()
        time.sleep(2.0)                                 # at least one commit (once a second)
    finally:
        p.kill()
        p.communicate()
    assert ls(d) == ["run.db", "run.db-shm", "run.db-wal"]
    return str(d)


def test_clean_stop_leaves_one_complete_file(clean, tmp_path):
    """Attack: a user copies only run.db after a clean stop (the issue: the .db alone must be
    complete). Defence: close checkpoints and switches to a rollback journal (recording.py
    RecordingWriter.close): nothing beside the file, mode 0600, and the copy holds every sample."""
    path, n = clean
    assert ls(os.path.dirname(path)) == ["run.db"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert open(path, "rb").read(20)[18] == 1             # file format: 1 rollback journal, 2 WAL
    copy = str(tmp_path / "copy.db")
    shutil.copyfile(path, copy)
    with Recording(copy) as r:
        assert len(r) == n > 0 and len(list(r.samples())) == n


def old_style(clean_path: str, path: str) -> str:
    """The clean recording as memprobe wrote it before: WAL mode in the header, no -wal beside it."""
    shutil.copyfile(clean_path, path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.close()
    assert not any(os.path.lexists(path + suffix) for suffix in ("-wal", "-shm", "-journal"))
    return path


def test_readers_leave_no_trace(clean, killed, tmp_path):
    """Attack: replay and report run by root beside a recording (the issue: they left root-owned
    -shm and -wal files). Defence: immutable=1 without a -wal, mode=ro with one, and a -shm that
    SQLite had to make for a -wal without one is removed (recording.py Recording). The directory
    is listed before and after each reader: nothing appears, nothing goes."""
    cases = {"clean": os.path.dirname(clean[0])}
    d = tmp_path / "old"
    d.mkdir()
    old_style(clean[0], str(d / "run.db"))
    cases["WAL header, no -wal"] = str(d)
    d = tmp_path / "pair"
    d.mkdir()
    for name in ("run.db", "run.db-wal"):                # copied without its -shm
        shutil.copyfile(os.path.join(killed, name), d / name)
    cases["db and -wal, no -shm"] = str(d)
    d = tmp_path / "killed"
    shutil.copytree(killed, d)
    cases["killed: db, -wal, -shm"] = str(d)
    for name, directory in cases.items():
        before = ls(directory)
        path = os.path.join(directory, "run.db")
        for argv in (["replay", path, "--json"], ["report", path]):
            rc, out, err = run_main(argv)
            assert rc == 0, (name, argv, err)
            assert ls(directory) == before, (name, argv, before, ls(directory))


def test_read_only_media(clean, killed, tmp_path):
    """Attack: recordings on read-only media (a read-only bind mount in a private mount namespace),
    read by root: a clean one, one with a WAL header and no -wal, a killed recorder's db + -wal +
    -shm, and a db + -wal copied without -shm. Defence: immutable=1 / mode=ro (recording.py). The
    first three are read in full; the last one cannot be read there and the line says to copy the
    pair into a writable directory."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux) for a read-only bind mount")
    src, dst = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    dst.mkdir()
    shutil.copyfile(clean[0], src / "clean.db")
    old_style(clean[0], str(src / "old.db"))
    for name in ("run.db", "run.db-wal", "run.db-shm"):
        shutil.copyfile(os.path.join(killed, name), src / name.replace("run", "killed"))
    for name in ("run.db", "run.db-wal"):
        shutil.copyfile(os.path.join(killed, name), src / name.replace("run", "pair"))
    script = ("import sys, json\nfrom spark_memprobe.cli import main\n"
              "for name in ('clean', 'old', 'killed', 'pair'):\n"
              "    print('exit', name, main(['replay', f'{sys.argv[1]}/{name}.db', '--json']), file=sys.stderr)\n")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        'mount --bind -o ro "$1" "$2" && touch "$2/x" 2>/dev/null; exec "$3" -c "$4" "$2"',
                        "sh", str(src), str(dst), sys.executable, script],
                       capture_output=True, text=True, timeout=60)
    if "mount" in r.stderr and "permission denied" in r.stderr.lower():
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()}")
    codes = dict(line.split()[1:] for line in r.stderr.splitlines() if line.startswith("exit "))
    assert codes == {"clean": "0", "old": "0", "killed": "0", "pair": "6"}, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert lines and not (src / "x").exists()
    pair = next(line for line in r.stderr.splitlines() if "pair.db" in line)
    assert "-wal" in pair and "copy" in pair, pair
    assert ls(src) == sorted(["clean.db", "old.db", "killed.db", "killed.db-wal", "killed.db-shm", "pair.db",
                              "pair.db-wal"])


def test_kill_9_then_replay(killed, tmp_path):
    """Attack: kill -9 of `memprobe record`, then replay (the issue: "no such table"). Defence: the
    -wal is read with its db (recording.py Recording, mode=ro), and a db copied without its -wal
    says that the -wal holds the data."""
    r = subprocess.run([*CLI, "replay", os.path.join(killed, "run.db"), "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) >= 5                # 2 s at 10 Hz, committed once a second
    lone = tmp_path / "lone.db"
    shutil.copyfile(os.path.join(killed, "run.db"), lone)
    rc, _out, err = run_main(["replay", str(lone), "--json"])
    assert rc == 6 and err.count("\n") == 1 and f"{lone}-wal, which is missing" in err, err


def test_name_with_hash_question_percent(cgroup, clean, tmp_path):
    """Attack: a recording named `x#1?mode=rw%41.db` next to a decoy recording named `x` (the issue:
    the unquoted SQLite URI opened the wrong file: everything after '#' is a fragment). Defence:
    the reader quotes the path (urllib.parse.quote) and the writer takes it literally: record and
    replay use the named file, and the decoy is not touched."""
    decoy = tmp_path / "x"
    shutil.copyfile(clean[0], decoy)
    before = decoy.read_bytes()
    path = str(tmp_path / "x#1?mode=rw%41.db")
    r = record(cgroup, path, duration="0.5s")
    assert r.returncode == 0, r.stderr
    n = recorded_samples(r)
    assert n != clean[1]
    out = subprocess.run([*CLI, "replay", path, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == n, out.stderr
    assert decoy.read_bytes() == before and ls(tmp_path) == sorted(["x", os.path.basename(path)])


def test_fifo_output_and_input_fail_fast(cgroup, tmp_path):
    """Attack: a FIFO where `record --force` writes (the issue: it blocked forever) and where replay
    reads. Defence: the writer refuses anything but a regular file before opening it, the reader
    opens with O_NONBLOCK and checks S_ISREG (recording.py): one line, exit 7 and 6, in seconds."""
    fifo = tmp_path / "run.db"
    os.mkfifo(fifo)
    t = time.monotonic()
    r = record(cgroup, str(fifo), "--force")
    assert r.returncode == 7 and r.stderr.count("\n") == 1 and "FIFO" in r.stderr, r.stderr
    rc, _out, err = run_main(["replay", str(fifo), "--json"])
    assert rc == 6 and "FIFO" in err, err
    assert time.monotonic() - t < 20 and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_planted_sidecar_symlinks_are_not_followed(cgroup, clean, tmp_path):
    """Attack: symlinks planted at run.db-shm, run.db-wal and run.db-journal pointing at victim
    files, before a recording (and before --force replaces one). The issue: a traceback and a
    partial file. Defence: sidecars without their database are unlinked (never opened) before
    SQLite starts (recording.py _create_file): the victims keep their bytes and mode, the
    recording is complete."""
    for force in (False, True):
        d = tmp_path / f"force-{force}"
        d.mkdir()
        path = d / "run.db"
        if force:
            shutil.copyfile(clean[0], path)
        victims = {}
        for suffix in ("-shm", "-wal", "-journal"):
            v = tmp_path / f"victim{suffix}-{force}"
            v.write_bytes(b"keep " * 100)
            v.chmod(0o644)
            victims[v] = (v.read_bytes(), os.stat(v).st_mode, os.stat(v).st_mtime_ns)
            os.symlink(v, f"{path}{suffix}")
        r = record(cgroup, str(path), *(("--force",) if force else ()), duration="0.5s")
        assert r.returncode == 0, r.stderr
        for v, (data, mode, mtime) in victims.items():
            assert (v.read_bytes(), os.stat(v).st_mode, os.stat(v).st_mtime_ns) == (data, mode, mtime)
        assert ls(d) == ["run.db"]
        with Recording(str(path)) as rec:
            assert len(rec) == recorded_samples(r)


def test_force_replaces_old_file_with_a_new_0600_one(cgroup, tmp_path):
    """Attack: `record --force` over an old 0644 file that is also a hard link to a victim (the
    issue: the old mode was kept; O_TRUNC wrote through the link). Defence: the old name is
    unlinked and a new file created with O_EXCL|O_NOFOLLOW, mode 0600 (recording.py _create_file)."""
    path = tmp_path / "run.db"
    path.write_bytes(b"old data")
    path.chmod(0o644)
    os.link(path, tmp_path / "victim")
    r = record(cgroup, str(path), "--force", duration="0.5s")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (tmp_path / "victim").read_bytes() == b"old data"
    assert stat.S_IMODE(os.stat(tmp_path / "victim").st_mode) == 0o644
    r = record(cgroup, str(path), duration="0.5s")       # without --force: refused, exit 7
    assert r.returncode == 7 and "exists (use --force" in r.stderr


def test_max_size_below_a_header_and_one_sample(cgroup, tmp_path):
    """Attack: `--max-size` too small for the header (the issue: "recorded 0 samples", exit 0).
    Defence: below MIN_MAX_BYTES is a usage error before anything is created (cli/record.py);
    at MIN_MAX_BYTES the header and samples fit."""
    path = tmp_path / "run.db"
    r = record(cgroup, str(path), "--max-size", "10K")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--max-size" in r.stderr, r.stderr
    assert ls(tmp_path) == []
    r = record(cgroup, str(path), "--max-size", f"{MIN_MAX_BYTES >> 10}K", duration="0.5s")
    assert r.returncode == 0 and recorded_samples(r) >= 1, r.stdout + r.stderr


def test_disk_full_while_recording(cgroup, tmp_path):
    """Attack: the output filesystem fills up while recording (a 160 KiB tmpfs in a private mount
    namespace: the header fits, the first second of samples does not). Defence: write errors are
    RecordingErrors (recording.py _writes): the file is closed, the summary says how many samples
    were written, one line on stderr and exit 7, no traceback."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux) for a small tmpfs")
    d = tmp_path / "full"
    d.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs -o size=160k tmpfs "$1" && shift && exec "$@"', "sh", str(d),
                        *CLI, "record", f"cgroup:{cgroup.path}", "-o", str(d / "run.db"), "--interval", "100ms",
                        "--duration", "5s", "--no-bpf"], capture_output=True, text=True, timeout=60)
    if "mount" in r.stderr and "permission denied" in r.stderr.lower():
        pytest.skip(f"no tmpfs mount here: {r.stderr.strip()}")
    assert r.returncode == 7, r.stdout + r.stderr
    assert r.stderr == f"memprobe: writing {d}/run.db: database or disk is full\n", r.stderr
    assert "samples not written" in r.stdout.splitlines()[-1], r.stdout
