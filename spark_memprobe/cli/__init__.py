"""memprobe command line: one module per subcommand, each with add_parser() and run().

Exit codes (docs/exit-codes.md): 0 ok, 1 unexpected error, 2 usage, 3 target not found,
4 permission denied, 5 needed facility missing (e.g. no memory cgroup hierarchy),
6 bad input file (corrupt / foreign / newer recording), 7 output not writable, 130 interrupted
(SIGINT or SIGTERM stopped a one-shot command; one that runs until stopped exits 0)."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from typing import Optional

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_MISSING, EXIT_BAD_INPUT, EXIT_OUTPUT = range(8)
EXIT_INTERRUPTED = 130
EXIT_PREFLIGHT_FAILS = 8   # preflight: the engine is predicted to refuse to start (or get no KV cache)
FORCE_AFTER_S = 5.0        # a signal this long after the first ends memprobe without its cleanup

SUBCOMMANDS = ["snapshot", "doctor", "ls", "attach", "record", "replay", "report", "probes", "export", "evict", "preflight", "ab", "engine-log"]

_first_signal: Optional[float] = None


class CliError(Exception):
    """An error the user should see as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    p = argparse.ArgumentParser(prog="memprobe",
                                description="Where every byte of a GPU host's memory is counted.")
    p.add_argument("--version", action="version", version=f"memprobe {__version__}")
    p.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)          # tests: fixture roots
    p.add_argument("--cgroup-root", default="/sys/fs/cgroup", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f".{name.replace('-', '_')}", __name__)
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def _runs_until_stopped(args) -> bool:
    """attach, record, export, probes --run and replay's screen end when stopped: SIGINT or
    SIGTERM is their normal end (exit 0, after cleanup), whenever it comes, startup included."""
    if args.command == "probes":
        return args.run
    if args.command == "replay":
        return not args.json and sys.stdin.isatty() and sys.stdout.isatty()
    return args.command in ("attach", "record", "export")


def _on_signal(signum, frame):
    """SIGINT and SIGTERM. The first raises KeyboardInterrupt, so every command stops through its
    cleanup (detach probes, close the recording). Later ones are ignored while that cleanup runs:
    a second Ctrl-C cannot cut it short. One that comes FORCE_AFTER_S or more after the first
    ends the process at once, for a cleanup that hangs."""
    global _first_signal
    now = time.monotonic()
    if _first_signal is None:
        _first_signal = now
        raise KeyboardInterrupt
    if now - _first_signal >= FORCE_AFTER_S:
        os.write(2, b"memprobe: stopped by a second signal without finishing cleanup\n")
        os._exit(EXIT_INTERRUPTED)


class _Stdout:
    """sys.stdout while a command runs: a failed write (full disk, /dev/full, I/O error) becomes
    _StdoutError, told apart from every other OSError, and ends the command with exit 7."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def _guard(self, fn, *a):
        try:
            return fn(*a)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _StdoutError(e.strerror or str(e)) from None

    def write(self, text):
        return self._guard(self._f.write, text)

    def flush(self):
        return self._guard(self._f.flush)


class _StdoutError(Exception):
    pass


def _drop_stdout() -> None:
    """Point fd 1 at /dev/null, so that Python's flush of what is still buffered at exit does
    not fail a second time (and print a traceback) on a stdout that cannot be written."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.close(fd)


def main(argv=None) -> int:
    global _first_signal
    _first_signal = None
    for s in (signal.SIGINT, signal.SIGTERM):      # SIGTERM ends us as Ctrl-C does
        signal.signal(s, _on_signal)
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
    try:
        code = args._run(args) or EXIT_OK
        sys.stdout.flush()
        return code
    except CliError as e:
        print(f"memprobe: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK if _runs_until_stopped(args) else EXIT_INTERRUPTED
    except BrokenPipeError:             # the reader went away (| head): nothing is wrong
        _drop_stdout()
        return EXIT_OK
    except _StdoutError as e:
        _drop_stdout()
        print(f"memprobe: cannot write to standard output: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    except PermissionError as e:
        print(f"memprobe: permission denied: {e.filename or e} (run as root)", file=sys.stderr)
        return EXIT_PERMISSION
    finally:
        sys.stdout = stdout
        if _first_signal is not None:
            # Python puts its handlers back to SIG_DFL as it exits, but leaves SIG_IGN alone
            # (Modules/signalmodule.c _PySignal_Fini): a late Ctrl-C would kill us mid-exit
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
