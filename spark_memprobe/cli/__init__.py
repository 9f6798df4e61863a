"""memprobe command line: one module per subcommand, each with add_parser() and run().

Exit codes (docs/exit-codes.md): 0 ok, 1 unexpected error, 2 usage, 3 target not found,
4 permission denied, 5 needed facility missing (e.g. no memory cgroup hierarchy),
6 bad input file (corrupt / foreign / newer recording), 7 output not writable, 130 interrupted (Ctrl-C)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_MISSING, EXIT_BAD_INPUT, EXIT_OUTPUT = range(8)
EXIT_INTERRUPTED = 130

SUBCOMMANDS = ["snapshot", "doctor", "ls", "attach", "record", "replay", "report", "probes", "export"]


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
        mod = importlib.import_module(f".{name}", __name__)
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    # SIGTERM ends us like Ctrl-C does, so cleanup (detach, flush) runs on both
    signal.signal(signal.SIGTERM, _sigterm)
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or EXIT_OK
    except CliError as e:
        print(f"memprobe: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except PermissionError as e:
        print(f"memprobe: permission denied: {e.filename or e} (run as root)", file=sys.stderr)
        return EXIT_PERMISSION


if __name__ == "__main__":
    sys.exit(main())
