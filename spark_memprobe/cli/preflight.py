"""memprobe preflight: before an engine starts, say in its own terms whether its start-up check
will pass now, what KV budget follows, what stands in the way (ranked in bytes) and the exact
commands that free it (docs/preflight.md). Exit 8 when the engine is predicted to fail."""
from __future__ import annotations

import json
import os
import sys

from . import EXIT_BAD_INPUT, EXIT_PREFLIGHT_FAILS, EXIT_USAGE, CliError
from .args import fraction, positive_int, size
from .common import host_header, print_renderable

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
CGROUPS_READ_MAX = 64          # other cgroups read for the ranking

# flag -> (settings key, engines that take it); None: every engine
FLAGS = {
    "gpu_memory_utilization": ("gpu_memory_utilization", ("vllm",)),
    "kv_cache_memory_bytes": ("kv_cache_memory_bytes", ("vllm",)),
    "non_torch_bytes": ("non_torch_bytes", ("vllm",)),
    "cudagraph_bytes": ("cudagraph_bytes", ("vllm",)),
    "mem_fraction_static": ("mem_fraction_static", ("sglang",)),
    "kv_cache_free_gpu_memory_fraction": ("kv_cache_free_gpu_memory_fraction", ("trtllm",)),
    "ctx_size": ("ctx_size", ("llamacpp",)),
    "kv_bytes_per_token": ("kv_bytes_per_token", ("llamacpp",)),
    "compute_buffer_bytes": ("compute_buffer_bytes", ("llamacpp",)),
    "unified_memory": ("GGML_CUDA_ENABLE_UNIFIED_MEMORY", ("llamacpp",)),
    "num_layers": ("num_layers", ("ollama",)),
    "kv_bytes": ("kv_bytes", ("ollama",)),
    "gpu_overhead": ("OLLAMA_GPU_OVERHEAD", ("ollama",)),
    "uma_free": ("uma_free", ("vllm", "sglang")),
    "weights_bytes": ("weights_bytes", None),
    "activation_peak_bytes": ("activation_peak_bytes", ("vllm", "trtllm")),
}


def add_parser(sub):
    from ..analysis.engines import MODELS
    p = sub.add_parser("preflight", help="will an inference engine start here now, with what KV cache, and what "
                                         "to free if not")
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="the container, unit, cgroup or PID the engine runs in (every form `memprobe attach` takes)")
    p.add_argument("--engine", required=True, choices=sorted(MODELS), help="which engine's arithmetic to use")
    p.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="model file or directory: its page cache is measured (mincore) and its size is the weights")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--as-integrated", action="store_true",
                   help="model this host as integrated UMA (GB10: cudaMemGetInfo = MemFree) even with another GPU")
    e = p.add_argument_group("engine settings (each engine's own flag names)")
    e.add_argument("--gpu-memory-utilization", type=fraction, metavar="F", help="vLLM (default 0.9)")
    e.add_argument("--kv-cache-memory-bytes", type=size, metavar="SIZE", help="vLLM")
    e.add_argument("--mem-fraction-static", type=fraction, metavar="F", help="SGLang (default 0.88)")
    e.add_argument("--kv-cache-free-gpu-memory-fraction", type=fraction, metavar="F", help="TensorRT-LLM (default 0.9)")
    e.add_argument("--ctx-size", type=positive_int, metavar="N", help="llama.cpp context in tokens")
    e.add_argument("--kv-bytes-per-token", type=size, metavar="SIZE", help="llama.cpp: KV bytes per token")
    e.add_argument("--compute-buffer-bytes", type=size, metavar="SIZE", help="llama.cpp compute buffer")
    e.add_argument("--unified-memory", action="store_true", default=None,
                   help="llama.cpp run with GGML_CUDA_ENABLE_UNIFIED_MEMORY=1")
    e.add_argument("--num-layers", type=positive_int, metavar="N", help="Ollama: the model's layer count")
    e.add_argument("--kv-bytes", type=size, metavar="SIZE", help="Ollama: KV cache bytes for its context")
    e.add_argument("--gpu-overhead", type=size, metavar="SIZE", help="Ollama: OLLAMA_GPU_OVERHEAD")
    e.add_argument("--uma-free", choices=["MemAvailable", "MemFree"],
                   help="vLLM/SGLang on an integrated GPU: which free figure this version reads (default "
                        "MemAvailable, current releases; MemFree for releases before their UMA fix)")
    m = p.add_argument_group("what the engine will allocate, when known")
    m.add_argument("--weights-bytes", type=size, metavar="SIZE", help="default: the size of the --model weight files")
    m.add_argument("--activation-peak-bytes", type=size, metavar="SIZE", help="vLLM/TensorRT-LLM profile-run peak")
    m.add_argument("--non-torch-bytes", type=size, metavar="SIZE", help="vLLM non-torch increase (NCCL, cuBLAS)")
    m.add_argument("--cudagraph-bytes", type=size, metavar="SIZE", help="vLLM CUDA-graph estimate")
    return p


def _settings(args) -> dict:
    out = {}
    for flag, (key, engines) in FLAGS.items():
        v = getattr(args, flag)
        if v is None:
            continue
        if engines is not None and args.engine not in engines:
            raise CliError(f"--{flag.replace('_', '-')} is a setting of {', '.join(engines)}, not of {args.engine}",
                           EXIT_USAGE)
        out[key] = v
    return out


def _model_files(paths: list[str]) -> list[str]:
    """Regular files named, or found under named directories (links not followed)."""
    out = []
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            for d, dirs, names in os.walk(p):
                dirs.sort()
                out += [os.path.join(d, n) for n in sorted(names)]
        else:
            out.append(p)
    return out


def _cached_files(paths: list[str], notes: list[str]):
    from ..analysis.engines.blockers import CachedFile
    from ..sources.pagecache import NotRegularFile, cached_bytes
    out = []
    for path in _model_files(paths):
        try:
            c, n = cached_bytes(path)
        except NotRegularFile as e:
            if path in paths:
                raise CliError(str(e), EXIT_BAD_INPUT)
            notes.append(f"{path}: skipped ({e})")
            continue
        except OSError as e:
            raise CliError(f"--model {path}: {e.strerror or e}", EXIT_BAD_INPUT)
        out.append(CachedFile(path, c, n))
    return out


def _other_cgroups(cgfs, target_path, version):
    """Memory cgroups one or two levels below the root (the children of a parent that has
    any), leaving out the target, its ancestors and descendants."""
    from ..analysis.engines.blockers import CgroupUse
    from ..ledger.facts import under

    def children(path):
        try:
            with os.scandir(cgfs.directory(path, version)) as it:
                return sorted(os.path.join(path, e.name) for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    paths = []
    for c in children("/"):
        paths += children(c) or [c]
    out = []
    for p in paths:
        if len(out) >= CGROUPS_READ_MAX:
            break
        if target_path and (under(p, target_path) or under(target_path, p)):
            continue
        try:
            s = cgfs.read(p, version, notes=[], numa=False, procs=False)
        except OSError:
            continue
        out.append(CgroupUse(p, s.stat_get("anon"), s.stat_get("file")))
    return out


def run(args) -> int:
    from ..analysis.engines import MODELS, EngineState
    from ..analysis.engines.blockers import rank_blockers, remedies
    from ..feed.host import open_host
    from ..ledger import LedgerInputs, build_ledger
    from ..sources.cgroupfs import CgroupFS
    from ..sources.zones import read_kernel_memory
    from ..views.preflight import preflight_to_dict, render_preflight

    settings = _settings(args)
    cgroup = version = pids = None
    target = "host"
    if args.target is not None:
        from .target import resolve_target
        _, t = resolve_target(args, args.target)
        cgroup, version, pids, target = t.cgroup_path, t.cgroup_version, t.pids, t.describe()
    notes: list[str] = []
    files = _cached_files(args.model, notes)
    weights = [f for f in files if f.path.endswith(WEIGHT_SUFFIXES)] or files
    if files and "weights_bytes" not in settings:
        settings["weights_bytes"] = sum(f.file_bytes for f in weights)
        notes.append(f"weights_bytes = the size of {len(weights)} model file(s); what the engine allocates "
                     "differs by its dtype, quantisation and tensor parallelism")
    if files:
        settings["page_cache_growth_bytes"] = sum(f.file_bytes - f.cached_bytes for f in weights)
    smp, s, host = open_host(args.proc, args.cgroup_root, detail=True, cgroup=cgroup, version=version, pids=pids)
    smp.close()
    kernel = read_kernel_memory(args.proc, s.notes)
    ledger = build_ledger(host, s, LedgerInputs(kernel=kernel))
    state = EngineState.from_ledger(ledger, s, as_integrated=args.as_integrated)
    pred = MODELS[args.engine].predict(state, settings)
    cgfs = CgroupFS(args.cgroup_root)
    others = _other_cgroups(cgfs, cgroup, version) if cgfs.layout.memory_version else []
    blockers = rank_blockers(state, pred, files, others)
    fixes = remedies(state, pred, blockers)
    header = host_header(smp.kind, target)
    if args.json:
        json.dump(dict(header=header, **preflight_to_dict(state, pred, blockers, fixes, notes)), sys.stdout, indent=1)
        print()
    else:
        print_renderable(render_preflight(header, state, pred, blockers, fixes, notes))
    return EXIT_PREFLIGHT_FAILS if pred.fails else 0
