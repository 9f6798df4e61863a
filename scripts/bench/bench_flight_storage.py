"""The flight recorder's storage alone (docs/performance.md, Issue 22): 21 streams' base samples
at 1 Hz, cold (a sleep between seconds, as the recorder runs), in three layouts taken in turns
each second, side by side in one run:
  files: one WAL recording per stream, an INSERT and a COMMIT each a second (the layout now);
  one:   one WAL recording, 21 INSERTs and one COMMIT a second;
  row:   one WAL recording, one row a second holding all 21 streams' changes.
Each sample: 35 changed [id, value] pairs, JSON, deflated with recording.deflate, in a row of the
samples table's width (16 values), as the flight recorder writes a busy target's delta.
    python scripts/bench/bench_flight_storage.py [SECONDS]"""
from __future__ import annotations

import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from spark_memprobe.recording import _JSON_OUT, deflate  # noqa: E402

STREAMS = 21
COLUMNS = ", ".join(f"s{i}" for i in range(10))
INSERT = (f"INSERT INTO samples(stream, mono_ns, wall_ns, keyframe, data, {COLUMNS}, gpu_data) "
          f"VALUES ({', '.join('?' * 16)})")


def open_db(path: str) -> sqlite3.Connection:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")          # as recording.RecordingWriter
    c.execute("CREATE TABLE samples(seq INTEGER PRIMARY KEY, stream INTEGER, mono_ns INTEGER, wall_ns INTEGER, "
              f"keyframe INTEGER, data BLOB, {COLUMNS}, gpu_data TEXT)")
    c.execute("BEGIN")
    return c


def blob(body) -> bytes:
    return deflate(_JSON_OUT.encode(body).encode())


def write(mode: str, conns: list, bodies: list) -> None:
    now = time.monotonic_ns()
    if mode == "files":
        for c, b in zip(conns, bodies):
            c.execute(INSERT, (0, now, now, 0, blob(b), *[1] * 10, None))
        for c in conns:
            c.execute("COMMIT")
            c.execute("BEGIN")
        return
    c = conns[0]
    if mode == "one":
        for i, b in enumerate(bodies):
            c.execute(INSERT, (i, now, now, 0, blob(b), *[1] * 10, None))
    else:
        c.execute(INSERT, (0, now, now, 0, blob(bodies), *[1] * 10, None))
    c.execute("COMMIT")
    c.execute("BEGIN")


def main() -> None:
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 30
    d = tempfile.mkdtemp(prefix="bench-flight-storage-")
    rnd = random.Random(1)
    try:
        conns = {"files": [open_db(f"{d}/f{i}.db") for i in range(STREAMS)],
                 "one": [open_db(f"{d}/one.db")], "row": [open_db(f"{d}/row.db")]}
        cpu = dict.fromkeys(conns, 0.0)
        n = 0
        end = time.monotonic() + secs
        while time.monotonic() < end:
            for mode in conns:
                bodies = [[[rnd.randint(1, 200), rnd.randint(0, 1 << 34)] for _ in range(35)] for _ in range(STREAMS)]
                c0 = time.process_time()
                write(mode, conns[mode], bodies)
                cpu[mode] += time.process_time() - c0
                time.sleep(1.0 / len(conns))               # cold: the next layout a third of a second later
            n += 1
        print(f"{STREAMS} streams' base samples a second, {n} s each, taken in turns:")
        for mode, c in cpu.items():
            print(f"  {mode:6s} {c / n * 100:.3f} % of a core ({c / n / STREAMS * 1e6:.0f} us per stream-second; "
                  f"{c / cpu['files']:.2f}x files)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
