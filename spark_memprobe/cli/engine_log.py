"""memprobe engine-log FILE | --container NAME: the memory facts an inference engine's own
start-up lines tell (vLLM, SGLang, TensorRT-LLM, llama.cpp, Ollama; docs/engine-log.md)."""
from __future__ import annotations

import errno
import json
import sys
import time
from dataclasses import asdict

from . import EXIT_NOT_FOUND, EXIT_PERMISSION, EXIT_USAGE, CliError


def add_parser(sub):
    p = sub.add_parser("engine-log", help="what an inference engine's log says about its memory "
                                          "(weights, KV cache, utilisation, admission errors)")
    p.add_argument("file", nargs="?", metavar="FILE", help="the engine's log file (a regular file)")
    p.add_argument("--container", metavar="NAME", help="read the container's own log through its engine instead")
    p.add_argument("--year", type=int, help="year of timestamps that have none (vLLM's); default: the file's")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def read_log(args):
    """The EngineLog of FILE or --container, errors as CliErrors."""
    from ..sources.engine_log import container_log, find_container, read_engine_log
    from ..sources.engines import EngineUnavailable
    from ..sources.pagecache import NotRegularFile
    if (args.file is None) == (args.container is None):
        raise CliError("give either FILE or --container NAME", EXIT_USAGE)
    if args.file is not None:
        try:
            return read_engine_log(args.file, args.year)
        except NotRegularFile as e:
            raise CliError(str(e), EXIT_USAGE)
        except OSError as e:
            code = {errno.ENOENT: EXIT_NOT_FOUND, errno.EACCES: EXIT_PERMISSION}.get(e.errno, EXIT_USAGE)
            raise CliError(f"{args.file}: {e.strerror or e}", code)
    from ..sources.targets import Resolver
    r = Resolver(proc=args.proc, cgroup_root=args.cgroup_root)
    try:
        engine, c = find_container(r, args.container)
        return container_log(engine, c, args.year)
    except LookupError as e:
        raise CliError(e.args[0], EXIT_USAGE if e.args[1] == "ambiguous" else EXIT_NOT_FOUND)
    except EngineUnavailable as e:
        raise CliError(f"{args.container}: {e.reason}", EXIT_PERMISSION if e.permission else EXIT_NOT_FOUND)


def fact_text(f) -> str:
    """One fact as a short phrase: '22.50 GiB', '53,136 tokens', 'free 19.77 of 22.05 GiB ...'."""
    from ..views.fmt import fmt_bytes
    parts = []
    if f.text and f.kind in ("version", "utilization"):
        parts.append(f.text)
    if f.value_bytes is not None:
        parts.append(fmt_bytes(f.value_bytes))
    if f.count is not None:
        parts.append(f"{f.count:,}" + {"kv_tokens": " tokens", "kv_blocks": " blocks"}.get(f.kind, ""))
    if f.fraction is not None:
        parts.append(f"{f.fraction:g}")
    if f.free_bytes is not None:
        parts.append(f"free {fmt_bytes(f.free_bytes)}" + (f" of {fmt_bytes(f.total_bytes)}" if f.total_bytes else ""))
    elif f.total_bytes is not None:
        parts.append(f"device total {fmt_bytes(f.total_bytes)}")
    if f.requested_bytes is not None:
        parts.append(f"{'needs' if f.kind == 'kv_shortfall' else 'requested'} {fmt_bytes(f.requested_bytes)}")
    if f.text and f.kind not in ("version", "utilization"):
        parts.append(f"({f.text})")
    if f.device:
        parts.append(f"on {f.device}")
    return ", ".join(parts)


def run(args) -> int:
    log = read_log(args)
    if args.json:
        json.dump({"source": log.source, "engine": log.engine, "lines": log.lines, "capped": log.capped,
                   "facts": [asdict(f) for f in log.facts]}, sys.stdout, indent=1)
        print()
        return 0
    print(f"{log.source}: {log.lines:,} lines read" + (" (capped: the rest was not read)" if log.capped else "")
          + (f", engine {log.engine}" if log.engine else ", no engine start-up line recognised"))
    for f in log.facts:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.wall_s)) if f.wall_s is not None else "-"
        print(f"{f.line_no:>8}  {when:19}  {f.engine:8}  {f.kind:15}  {fact_text(f)}")
    return 0


def engine_follower(args, target: dict):
    """The LogFollower `record --engine-log FILE` or `--engine-log-container` asks for (None when
    neither): the file, or the target container's own log through its engine."""
    from ..sources.engine_log import LogFollower, find_container
    from ..sources.engines import EngineUnavailable
    from ..sources.pagecache import NotRegularFile
    if args.engine_log is not None:
        try:
            return LogFollower(path=args.engine_log)
        except NotRegularFile as e:
            raise CliError(f"--engine-log: {e}", EXIT_USAGE)
        except OSError as e:
            raise CliError(f"--engine-log {args.engine_log}: {e.strerror or e}",
                           EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_PERMISSION)
    if not args.engine_log_container:
        return None
    if target.get("kind") != "container" or not target.get("id"):
        raise CliError("--engine-log-container: the target is not a container", EXIT_USAGE)
    from ..sources.targets import Resolver
    try:
        engine, c = find_container(Resolver(proc=args.proc, cgroup_root=args.cgroup_root), target["id"])
    except LookupError as e:
        raise CliError(f"--engine-log-container: {e.args[0]}", EXIT_NOT_FOUND)
    except EngineUnavailable as e:
        raise CliError(f"--engine-log-container: {e.reason}", EXIT_NOT_FOUND)
    return LogFollower(engine=engine, container=c, every_s=2.0)


def add_record_arguments(p) -> None:
    """record's engine-log flags (docs/record.md)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--engine-log", metavar="FILE", help="also record the facts of this inference engine log "
                                                        "as they appear (docs/engine-log.md)")
    g.add_argument("--engine-log-container", action="store_true",
                   help="also record the facts of the target container's own log, through its engine")
