"""Running the arms of an A/B experiment (`memprobe ab`, docs/ab.md): runs in A/B/B/A order, the
page cache of the named files set before each run (evicted, pre-read or left as it is) and then
measured with mincore, each run recorded through the same LiveFeed and Recorder as `record`, and
the engine's KV cache (or the user's metric) taken from the run's output.

The target of a `docker run` command is its container (found through the --cidfile this module
adds to the command); the target of any other command is a throwaway memory cgroup created for
the run, which the command's first process joins before it execs, and removed afterwards."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..recording import RecordingError
from ..sources.cgroupfs import CgroupFS, list_procs
from ..sources.child_process import python_argv
from ..sources.engine_log import parse_lines
from ..sources.pagecache import NotRegularFile, cached_bytes, evict, open_regular
from ..sources.targets.resolver import Resolver, TargetError
from .live import LiveFeed
from .recorder import Recorder, recording_header
from .ticker import Ticker

READ_CHUNK = 1 << 20
CID_WAIT_S = 30.0           # how long `docker run` may take to create and start its container
# the first process joins the cgroup, then becomes the command (writing 0 to cgroup.procs moves the
# writer: Documentation/admin-guide/cgroup-v2.rst "cgroup.procs"; v1 the same, cgroup-v1/cgroups.rst)
JOIN_AND_EXEC = ("import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\nos.write(fd,b'0')\nos.close(fd)\n"
                 "os.execvp(sys.argv[2],sys.argv[2:])")
# --metric units are binary with or without the "i": engines print "GB" for bytes / 2**30
# (sources/engine_log.py cites vLLM and SGLang)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def unit_bytes(unit: str) -> Optional[int]:
    """'GiB', 'GB', 'g', 'B', '' -> bytes per unit; None for anything else."""
    u = unit.strip().lower()
    return UNITS.get(u[:-1].removesuffix("i") if u.endswith("b") else u)


class AbError(Exception):
    """A run could not be set up (cgroup, cidfile, recording): one line for the user."""


@dataclass
class FileCache:
    """One named file's page cache just before a run (mincore), and what preparing it left."""
    path: str
    cached_bytes: Optional[int]
    size_bytes: Optional[int]
    note: Optional[str] = None         # why it is missing, or what eviction could not drop


@dataclass
class Run:
    index: int                         # 1.. in the order run
    arm: str                           # "A" or "B"
    argv: list[str]
    recording: str
    log: str
    target: Optional[str] = None
    cache: list[FileCache] = field(default_factory=list)
    exit_code: Optional[int] = None
    duration_s: Optional[float] = None
    value_bytes: Optional[int] = None  # the engine's KV cache (or --metric) from the run's output
    value_line: Optional[str] = None
    error: Optional[str] = None


def order(rounds: int) -> list[str]:
    """A/B/B/A: each pair of rounds runs A B then B A, so drift over time hits both arms alike."""
    return [x for r in range(rounds) for x in (("A", "B") if r % 2 == 0 else ("B", "A"))]


def is_docker_run(argv: list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "docker" and run_index(argv) is not None


def run_index(argv: list[str]) -> Optional[int]:
    """Where `run` is in `docker [global options] [container] run ...`."""
    for i, a in enumerate(argv[1:], 1):
        if a == "run":
            return i
        if not (a.startswith("-") or a == "container" or argv[i - 1] in ("-H", "--host", "--context", "-c",
                                                                       "--config", "-l", "--log-level")):
            return None
    return None


def value_from_output(lines: list[str], metric: Optional[re.Pattern]) -> tuple[Optional[int], Optional[str]]:
    """(bytes, the line it came from): the last match of --metric (a number and an optional unit),
    else the engine's KV cache as sources/engine_log.py reads it."""
    if metric is None:
        log = parse_lines(lines)
        fact = log.latest("kv_cache")
        return log.total_bytes("kv_cache"), fact.line if fact is not None else None
    for line in reversed(lines):
        m = metric.search(line)
        if m:
            unit = (m.group(2) if m.re.groups >= 2 else "") or ""
            mult = unit_bytes(unit)
            if mult is None:
                continue
            try:
                return int(float(m.group(1)) * mult), line.strip()
            except ValueError:
                continue
    return None, None


def prepare_cache(paths: list[str], mode: str) -> list[FileCache]:
    """Evict (cold) or read (warm) each file, or leave it (as-is); then measure it."""
    notes: dict[str, str] = {}
    for p in paths:
        try:
            if mode == "cold":
                r = evict(p)
                if r.cached_after_bytes:
                    who = ", ".join(f"{m.comm} {m.pid}" for m in r.mappers)
                    notes[p] = (f"eviction left {r.cached_after_bytes} B cached ({r.stayed_mapped_bytes} B mapped"
                                + (f" by {who}" if who else "") + f", {r.stayed_dirty_bytes} B dirty)")
            elif mode == "warm":
                fd = open_regular(p)
                try:
                    while os.read(fd, READ_CHUNK):
                        pass
                finally:
                    os.close(fd)
        except OSError as e:
            notes[p] = f"{mode}: {e.strerror or e}"
    out = []
    for p in paths:
        try:
            c, size = cached_bytes(p)
            out.append(FileCache(p, c, size, notes.get(p)))
        except OSError as e:
            out.append(FileCache(p, None, None, f"mincore: {e.strerror or e}"))
    return out


class _Throwaway:
    """A memory cgroup for one native run: created empty, removed after (remaining processes killed)."""

    def __init__(self, cgroup_root: str, name: str):
        self.cgfs = CgroupFS(cgroup_root)
        root = self.cgfs.memory_root()
        if root is None:
            raise AbError(f"no memory cgroup hierarchy under {cgroup_root}")
        self.rel = "/" + name
        self.dir = os.path.join(root, name)
        try:
            os.mkdir(self.dir, 0o700)
        except OSError as e:
            raise AbError(f"cannot create cgroup {self.dir}: {e.strerror}") from None

    def remove(self) -> Optional[str]:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                for pid in list_procs(self.dir):
                    os.kill(pid, signal.SIGKILL)      # what the command left running
                os.rmdir(self.dir)
                return None
            except ProcessLookupError:
                continue
            except FileNotFoundError:
                return None
            except OSError as e:
                if time.monotonic() > deadline:
                    return f"cannot remove cgroup {self.dir}: {e.strerror}"
                time.sleep(0.05)


def _docker_target(resolver: Resolver, cidfile: str, proc: subprocess.Popen):
    """The container that `docker run --cidfile` created, once it runs; None if the command ended first."""
    deadline = time.monotonic() + CID_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with os.fdopen(open_regular(cidfile)) as f:     # never a FIFO or a planted link
                cid = f.read(128).strip()
        except (FileNotFoundError, NotRegularFile):
            cid = ""
        if len(cid) == 64:
            try:
                return resolver.resolve(f"docker:{cid}")
            except TargetError:              # created, not started yet
                pass
        time.sleep(0.02)
    return None


def _record(feed: LiveFeed, rec: Recorder, proc: subprocess.Popen, interval_s: float) -> None:
    """Sample until the command has exited (one sample after it)."""
    tick = Ticker(interval_s)
    while True:
        done = proc.poll() is not None
        item, end = feed.tick()
        rec.write(item)
        if done or end is not None or rec.full:
            return
        time.sleep(tick.next())


def run_one(run: Run, resolver: Resolver, interval_s: float, kv_fraction: float, env: dict,
            metric: Optional[re.Pattern]) -> None:
    """Run one command, recorded; fills run's target, exit code, duration and value."""
    docker = is_docker_run(run.argv)
    argv = list(run.argv)
    cg = None
    feed = rec = proc = None
    log = os.open(run.log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    t0 = time.monotonic()
    try:
        if docker:
            cidfile = run.log + ".cid"
            i = run_index(argv)
            argv[i + 1:i + 1] = ["--cidfile", cidfile]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    close_fds=True)
            # a fresh resolver: one lists the engines' containers once, before this one existed
            target = _docker_target(Resolver(resolver.proc, resolver.cgroup_root, resolver.env), cidfile, proc)
            if target is None:
                run.error = "the container ended (or never started) before it could be followed"
        else:
            cg = _Throwaway(resolver.cgroup_root, f"memprobe-ab-{os.getpid()}-{run.index}")
            target = resolver.resolve(f"cgroup:{cg.rel}")
        if target is not None:
            feed = LiveFeed(resolver, target, bpf=False, exit_grace_s=0.2)
            try:
                rec = Recorder(run.recording, recording_header(feed, interval_s, kv_fraction))
            except RecordingError as e:
                raise AbError(f"cannot create {run.recording}: {e}") from None
            run.target = feed.target_text()
        if not docker:
            procs = os.path.join(cg.dir, "cgroup.procs")
            proc = subprocess.Popen(python_argv("-c", JOIN_AND_EXEC, procs, *argv), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, close_fds=True)
        if feed is not None:
            _record(feed, rec, proc, interval_s)
        run.exit_code = proc.wait()
    except (FileNotFoundError, PermissionError) as e:
        raise AbError(f"cannot run {argv[0]}: {e.strerror}") from None
    except TargetError as e:
        raise AbError(str(e)) from None
    finally:
        if proc is not None and proc.poll() is None:        # interrupted: stop the command
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        run.duration_s = time.monotonic() - t0
        os.close(log)
        if feed is not None:
            feed.close()
        if rec is not None:
            note = rec.close()
            if note:
                run.error = note
        if cg is not None:
            left = cg.remove()
            if left:
                run.error = left
    with open(run.log, errors="replace") as f:
        lines = f.read().splitlines()
    run.value_bytes, run.value_line = value_from_output(lines, metric)


def run_arms(argv_a: list[str], argv_b: list[str], rounds: int, cache: str, files: list[str], outdir: str,
             interval_s: float = 0.1, kv_fraction: float = 0.9, metric: Optional[re.Pattern] = None,
             resolver: Optional[Resolver] = None, say: Optional[Callable[[str], None]] = None) -> tuple[list[Run], bool]:
    """Every run, in A/B/B/A order, into outdir (recordings NN-A.db, outputs NN-A.log); and whether
    SIGINT/SIGTERM stopped the experiment early."""
    resolver = resolver or Resolver()
    say = say or (lambda text: print(text, flush=True))
    env = dict(os.environ)
    runs: list[Run] = []
    try:
        for i, arm in enumerate(order(rounds), 1):
            stem = os.path.join(outdir, f"{i:02d}-{arm}")
            run = Run(i, arm, argv_a if arm == "A" else argv_b, stem + ".db", stem + ".log")
            runs.append(run)
            run.cache = prepare_cache(files, cache)
            run_one(run, resolver, interval_s, kv_fraction, env, metric)
            say(f"run {i} ({arm}): exit {run.exit_code}, {run.duration_s:.1f} s, "
                f"value {run.value_bytes if run.value_bytes is not None else 'not found'}"
                + "".join(f"; {os.path.basename(c.path)} {c.cached_bytes} B cached before" for c in run.cache)
                + (f"; {run.error}" if run.error else ""))
    except KeyboardInterrupt:               # the runs so far (the last one stopped) are still reported
        runs[-1].error = "interrupted"
        return runs, True
    return runs, False
