"""Hostile command lines against the real CLI (issue 15; docs/exit-codes.md): out-of-range and
non-finite flag values, cgroup paths that would silently mean the root cgroup, outputs that
cannot be written. Each must end with one line naming what is wrong and the documented exit code,
never a traceback. Flags are found by walking build_parser(), so a new flag of a checked type
is attacked without editing this file."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid

import pytest

from report_recordings import fixture_recording
from spark_memprobe.cli import EXIT_NOT_FOUND, EXIT_OUTPUT, EXIT_USAGE, build_parser
from spark_memprobe.cli import args as cli_args


def memprobe(*args: str) -> list[str]:
    return [sys.executable, "-m", "spark_memprobe.cli", *args]


def run_all(argvs: list[list[str]], **kw) -> list[subprocess.CompletedProcess]:
    """Run the commands concurrently (each is a fresh interpreter: most of the cost is start-up)."""
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) for a in argvs]
    out = []
    try:
        for a, p in zip(argvs, procs):
            o, e = p.communicate(timeout=30)
            out.append(subprocess.CompletedProcess(a, p.returncode, o, e))
    finally:
        for p in procs:               # one that runs (a defence gone) must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The one error line (`memprobe: ...`, or argparse's `memprobe CMD: error: ...` after its
    usage block); fails on a traceback or on a second error line. Log lines may come before."""
    assert "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("memprobe: ") or ": error: " in x]
    assert len(errors) == 1, r.stderr
    return errors[0]


def typed_flags(kind) -> list[tuple[str, str]]:
    """(subcommand, flag) for every option whose argparse type is `kind`."""
    found = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(name, a.option_strings[-1]) for a in sub._actions if a.type is kind and a.option_strings]
    return found


def minimal_argv(command: str, tmp: str) -> list[str]:
    """The command with its required arguments filled in, so only the flag under test is wrong."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices[command]
    argv = [command]
    for a in sub._actions:
        if not a.option_strings and a.nargs not in ("?", "*"):
            argv.append("nothing-here")
        elif a.option_strings and a.required:
            value = (a.choices[0] if a.choices else "2" if a.type is cli_args.positive_int
                     else "true" if a.dest in ("a", "b") else os.path.join(tmp, "out"))
            argv += [a.option_strings[-1], value]
    return argv


DURATION_FLAGS = typed_flags(cli_args.duration)
INTERVAL_FLAGS = typed_flags(cli_args.interval)
BURST_FLAGS = typed_flags(cli_args.burst_interval)            # record: under 10 ms is burst mode
FRACTION_FLAGS = typed_flags(cli_args.fraction)


def test_the_parser_walk_finds_the_known_flags():
    """Guard: the walk below is not vacuous: it finds the flags issue 15 names."""
    assert {("probes", "--duration"), ("record", "--duration"), ("attach", "--exit-grace"),
            ("export", "--stale-after")} <= set(DURATION_FLAGS)
    assert {("attach", "--interval"), ("export", "--interval")} <= set(INTERVAL_FLAGS)
    assert BURST_FLAGS == [("record", "--interval")]
    assert {c for c, _ in FRACTION_FLAGS} == {"snapshot", "attach", "record", "replay", "report", "export", "preflight", "ab"}
    assert ("replay", "--speed") in typed_flags(cli_args.positive_number)
    assert ("attach", "--count") in typed_flags(cli_args.positive_int)


def check_rejected(command: str, flag: str, values: list[str], tmp_path) -> None:
    argvs = [memprobe(*minimal_argv(command, str(tmp_path)), f"{flag}={v}") for v in values]
    for v, r in zip(values, run_all(argvs)):
        line = one_line_error(r)
        assert r.returncode == EXIT_USAGE, (v, r.returncode, r.stderr)
        assert f"argument {flag}" in line, (v, line)
    assert not os.path.exists(tmp_path / "out")           # nothing ran


@pytest.mark.parametrize("command,flag", FRACTION_FLAGS)
def test_fraction_out_of_range_or_nan_is_refused(command, flag, tmp_path):
    """Attack: --kv-fraction nan, inf, 2, 0, -1 (NaN used to crash replay and report later).
    Defence: the shared fraction type: exit 2 at parse time, the flag named, nothing run."""
    check_rejected(command, flag, ["nan", "inf", "2", "0", "-1", "NaN"], tmp_path)


@pytest.mark.parametrize("command,flag", DURATION_FLAGS + INTERVAL_FLAGS + BURST_FLAGS)
def test_duration_zero_negative_or_not_finite_is_refused(command, flag, tmp_path):
    """Attack: a duration of 0 (probes --duration 0 ran forever), -5 (accepted), nan, inf, 1e9,
    empty, beyond a year. Defence: the shared duration type: exit 2 naming the flag itself."""
    check_rejected(command, flag, ["0", "-5", "nan", "inf", "1e9", "", "400d"], tmp_path)


@pytest.mark.parametrize("command,flag", INTERVAL_FLAGS)
def test_interval_keeps_its_10ms_floor(command, flag, tmp_path):
    """Attack: --interval 5ms (a busy sampling loop). Defence: intervals stay at least 10 ms."""
    check_rejected(command, flag, ["5ms", "0.001"], tmp_path)


@pytest.mark.parametrize("command,flag", BURST_FLAGS)
def test_burst_interval_keeps_its_100us_floor(command, flag, tmp_path):
    """Attack: `record --interval 1us` (a C thread spinning at a megahertz). Defence: burst mode
    stops at 0.1 ms, the native sampler's floor (docs/record.md)."""
    check_rejected(command, flag, ["1us", "50us", "0.00005"], tmp_path)


@pytest.mark.parametrize("command,flag", typed_flags(cli_args.positive_int) + typed_flags(cli_args.positive_number))
def test_counts_and_speeds_below_or_at_zero_are_refused(command, flag, tmp_path):
    """Attack: `attach --count 0`, `probes --top -1`, `replay --speed 0` (a division by zero),
    `--speed nan`. Defence: exit 2 naming the flag."""
    check_rejected(command, flag, ["0", "-1", "nan", "inf"], tmp_path)


@pytest.mark.parametrize("command,flag", DURATION_FLAGS + INTERVAL_FLAGS + BURST_FLAGS)
def test_every_duration_flag_takes_hours_and_compound_forms(command, flag, tmp_path):
    """`1h` was refused everywhere: every duration flag parses the documented forms."""
    forms = {"1h": 3600, "1h30m": 5400, "90m": 5400, "2s": 2, "250ms": 0.25, "1.5": 1.5, "1d": 86400,
             "2m30s": 150, "1s500ms": 1.5}
    dest = flag.lstrip("-").replace("-", "_")
    for text, seconds in forms.items():
        ns = build_parser().parse_args(minimal_argv(command, str(tmp_path)) + [f"{flag}={text}"])
        assert getattr(ns, dest) == pytest.approx(seconds), text


def test_hours_reach_the_command(tmp_path):
    """Through the real CLI: `record --duration 1h30m` gets past parsing (exit 3: no such PID)."""
    r = subprocess.run(memprobe("record", "pid:99999999", "-o", str(tmp_path / "r.db"), "--duration", "1h30m"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_NOT_FOUND and "argument" not in r.stderr, r.stderr


# -- cgroup paths -----------------------------------------------------------------------------------

def test_cgroup_paths_that_mean_another_cgroup_are_refused(tmp_path):
    """Attack: `cgroup:/x/../../..`, `--cgroup ''`, `--cgroup /../..`, a bare `/x/..` target, for
    every command that takes one (each used to mean the root cgroup). Defence: exit 2, one line,
    and nothing created (record made no file)."""
    out = str(tmp_path / "r.db")
    cases = [
        (["snapshot", "cgroup:/x/../../.."], "'..' component"),
        (["snapshot", "--cgroup", ""], "argument --cgroup: empty cgroup path"),
        (["snapshot", "--cgroup", "/../.."], "argument --cgroup: cgroup path '/../..'"),
        (["snapshot", "--cgroup", "  "], "argument --cgroup: empty cgroup path"),
        (["probes", "--run", "--cgroup", "/system.slice/.."], "argument --cgroup"),
        (["probes", "--dump-bpf", "--cgroup", ""], "argument --cgroup"),
        (["attach", "/x/../..", "--no-bpf", "--count", "1"], "'..' component"),
        (["record", "cgroup:/../..", "-o", out, "--no-bpf"], "'..' component"),
        (["export", "--listen", "127.0.0.1:0", "cgroup:/a/../.."], "'..' component"),
        (["snapshot", "cgroup:/sys/fs/cgroup/memory/../../../etc"], "'..' component"),
    ]
    for (argv, text), r in zip(cases, run_all([memprobe(*a) for a, _ in cases])):
        line = one_line_error(r)
        assert r.returncode == EXIT_USAGE and text in line, (argv, r.returncode, r.stderr)
    assert not os.path.exists(out)


def test_the_root_cgroup_said_plainly_still_works():
    """The defence refuses what the user did not mean, not the root: `cgroup:/` is allowed."""
    r = subprocess.run(memprobe("snapshot", "cgroup:/", "--json"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_nul_bytes_in_cgroup_paths_are_refused():
    """Attack: a NUL byte inside a cgroup path (os functions raise ValueError: a traceback).
    argv cannot carry NUL, so this calls the two entry points the CLI uses, in process."""
    from spark_memprobe.sources.targets import Resolver, TargetError
    with pytest.raises(argparse.ArgumentTypeError, match="NUL"):
        cli_args.cgroup_path("/a\0b")
    with pytest.raises(TargetError, match="NUL") as e:
        Resolver().resolve("cgroup:/a\0b")
    assert e.value.kind == "usage"


def test_symlink_planted_under_the_cgroup_root_is_not_followed(tmp_path):
    """Attack: a cgroup root (a captured tree, as --cgroup-root takes) holding a symlink to a
    directory outside it; `snapshot --cgroup /evil` followed it and read the files there.
    Defence: the directory must be a real one inside the hierarchy (realpath check): exit 3."""
    root, outside = tmp_path / "cg", tmp_path / "outside"
    (root / "memory").mkdir(parents=True)
    outside.mkdir()
    for d in (root / "memory", outside):
        (d / "memory.usage_in_bytes").write_text("4096\n")
        (d / "cgroup.procs").write_text("")
    (root / "memory" / "evil").symlink_to(outside)
    cases = [["--cgroup-root", str(root), "snapshot", "--cgroup", "/evil"],
             ["--cgroup-root", str(root), "snapshot", "cgroup:/evil"]]
    for argv, r in zip(cases, run_all([memprobe(*a) for a in cases])):
        line = one_line_error(r)
        assert r.returncode == EXIT_NOT_FOUND and "no such" in line and "cgroup" in line, (argv, r.stderr)
    from spark_memprobe.sources.targets import is_real_dir
    assert not is_real_dir(str(outside), str(root / "memory"))      # outside the root, though real


# -- outputs that cannot be written -----------------------------------------------------------------

@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    return fixture_recording("h100-cgroup2-scenario", str(tmp_path_factory.mktemp("rec") / "run.db"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """mount(tmpfs, options) at a fresh directory; unmounted after the test even on failure."""
    mounted = []

    def mount(options: str) -> str:
        d = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a tmpfs")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "memprobe-test", str(d)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return str(d)
    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=True)


def test_report_output_in_a_missing_directory_exits_7(recording, tmp_path):
    """Attack: `report -o /proc/nonexistent/x.md` (a traceback and exit 1 before).
    Defence: one line naming the path and the reason, exit 7."""
    r = subprocess.run(memprobe("report", recording, "-o", "/proc/nonexistent/x.md"), capture_output=True,
                       text=True, timeout=60)
    line = one_line_error(r)
    assert r.returncode == EXIT_OUTPUT and "/proc/nonexistent/x.md" in line, r.stderr


def test_report_output_on_a_read_only_filesystem_exits_7(recording, small_tmpfs):
    """Attack: `report -o` into a read-only mount (root ignores directory modes, so a mode-0555
    directory is no test). Defence: one line, exit 7."""
    d = small_tmpfs("ro,size=1m")
    r = subprocess.run(memprobe("report", recording, "-o", f"{d}/x.html"), capture_output=True, text=True,
                       timeout=60)
    line = one_line_error(r)
    assert r.returncode == EXIT_OUTPUT and "Read-only file system" in line, r.stderr


def test_report_on_a_full_filesystem_leaves_the_old_file_whole(recording, small_tmpfs):
    """Attack: `report -o old.html` on a filesystem with room for 16 KiB (the HTML is ~90 KB): the
    old code truncated old.html first, then failed half-way. Defence: written beside and renamed
    over: exit 7, old.html unchanged, no partial or temporary file left."""
    d = small_tmpfs("size=16k,mode=0700")
    with open(f"{d}/old.html", "w") as f:
        f.write("OLD REPORT")
    r = subprocess.run(memprobe("report", recording, "-o", f"{d}/old.html"), capture_output=True, text=True,
                       timeout=60)
    line = one_line_error(r)
    assert r.returncode == EXIT_OUTPUT and "No space left on device" in line, r.stderr
    assert os.listdir(d) == ["old.html"] and open(f"{d}/old.html").read() == "OLD REPORT"


def test_outputs_onto_a_symlink_exit_7(recording, tmp_path):
    """Attack: `report -o` onto a planted symlink. Defence: refused, the target untouched, exit 7."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "r.md").symlink_to(victim)
    r = subprocess.run(memprobe("report", recording, "-o", str(tmp_path / "r.md")), capture_output=True,
                       text=True, timeout=60)
    line = one_line_error(r)
    assert r.returncode == EXIT_OUTPUT and "symlink" in line and victim.read_text() == "keep"


def test_record_output_not_writable_exits_7(small_tmpfs):
    """Attack: `record -o` into a read-only mount and into a missing directory.
    Defence: one line, exit 7 (it said "bad input file", 6, before)."""
    d = small_tmpfs("ro,size=1m")
    argvs = [memprobe("record", f"pid:{os.getpid()}", "--no-bpf", "-o", path)
             for path in (f"{d}/r.db", "/proc/nonexistent/r.db")]
    for r in run_all(argvs):
        line = one_line_error(r)
        assert r.returncode == EXIT_OUTPUT and "cannot create" in line, r.stderr


def test_stdout_that_cannot_be_written_exits_7(recording):
    """Attack: standard output on a full device (`> /dev/full`), for report and snapshot.
    Defence: one line `cannot write to standard output`, exit 7, no traceback."""
    with open("/dev/full", "w") as full:
        for argv in (["report", recording], ["snapshot", "--json"], ["doctor"]):
            r = subprocess.run(memprobe(*argv), stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
            line = one_line_error(r)
            assert r.returncode == EXIT_OUTPUT and "cannot write to standard output" in line, (argv, r.stderr)
