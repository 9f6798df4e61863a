#!/usr/bin/env python3
"""End-to-end scenario on a GPU host (issue 11): an LLM-style inference run under `memprobe
record`, twice, explained by `memprobe report`, and the two runs compared.

  run A "cold":   page cache dropped; the engine (in cgroup /memprobe_engine) reads its weights
                  first, so their page cache is charged to the engine's cgroup
  run B "warmed": page cache dropped, then a reader in cgroup /memprobe_warmer reads the weights
                  file and exits; the engine maps pages that are charged to the warmer

    sudo scripts/scenarios/run_inference.py OUT_DIR [--workdir DIR] [--no-bpf] [--layers 20]

OUT_DIR receives: model.json, {A,B}.db (recordings), {A,B}.engine.jsonl (the engine's own log),
{A,B}.md / .html (reports), compare.md, run.json (what happened, with timestamps).
Needs root, pure cgroup v2 with the memory controller, an NVIDIA GPU, torch, transformers and
safetensors; eBPF needs bcc (docs/probes.md). Runs in about 3 minutes on one H100.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CG = "/sys/fs/cgroup"
CLI = [sys.executable, "-m", "spark_memprobe.cli"]


def sh(argv, **kw):
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def fresh_cgroup(name: str) -> str:
    d = os.path.join(CG, name)
    if os.path.isdir(d):
        os.rmdir(d)
    os.mkdir(d)
    return d


def warm(weights: str, cgdir: str) -> None:
    """Read the whole weights file from a process in cgdir, then exit."""
    code = ("import sys; open(sys.argv[1] + '/cgroup.procs', 'w').write('0');"
            "f = open(sys.argv[2], 'rb')\nwhile f.read(1 << 24): pass")
    sh([sys.executable, "-c", code, cgdir, weights])


def one_run(label: str, out: str, weights: str, config: str, bpf: bool, args, before_engine=None) -> dict:
    """Record cgroup /memprobe_engine while the engine runs in it. before_engine runs after the
    recorder started (so its probes see what it does) and before the engine."""
    cgdir = fresh_cgroup("memprobe_engine")
    db = os.path.join(out, f"{label}.db")
    errlog = open(os.path.join(out, f"{label}.record.stderr"), "w")
    rec = subprocess.Popen([*CLI, "record", "cgroup:/memprobe_engine", "-o", db, "--interval", "100ms", "--force",
                            "--bpf" if bpf else "--no-bpf"], stdout=subprocess.PIPE, stderr=errlog, text=True)
    first = rec.stdout.readline()
    print(f"[{label}] {first.strip()}", flush=True)
    if not first.startswith("recording"):
        rec.kill()
        rec.wait()
        raise SystemExit(f"[{label}] record did not start: {first}{rec.stdout.read()}")
    time.sleep(1.0)
    if before_engine is not None:
        before_engine()
        time.sleep(1.0)
    t0 = time.monotonic_ns()
    with open(os.path.join(out, f"{label}.engine.jsonl"), "w") as log:
        eng = subprocess.run([sys.executable, os.path.join(HERE, "engine.py"), cgdir, weights, config,
                              "--kv-cap-gib", str(args.kv_cap_gib), "--tokens", str(args.tokens)],
                             stdout=log, stderr=subprocess.PIPE, text=True)
    if eng.returncode:
        print(eng.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"[{label}] engine failed ({eng.returncode})")
    time.sleep(1.5)
    rec.send_signal(signal.SIGINT)
    tail = rec.communicate(timeout=120)[0]
    errlog.close()
    print(f"[{label}] {tail.strip()}", flush=True)
    for ext in ("md", "html"):
        sh([*CLI, "report", db, "-o", os.path.join(out, f"{label}.{ext}")])
    os.rmdir(cgdir)
    return {"label": label, "engine_started_mono_ns": t0, "db": db, "record_output": first + tail}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--workdir", default="/var/tmp/memprobe-scenario")
    ap.add_argument("--no-bpf", action="store_true")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--kv-cap-gib", type=float, default=8.0)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.workdir, exist_ok=True)
    model_dir = os.path.join(a.workdir, "model")
    made = subprocess.run([sys.executable, os.path.join(HERE, "make_model.py"), model_dir, "--layers", str(a.layers)],
                          check=True, capture_output=True, text=True).stdout
    with open(os.path.join(a.out, "model.json"), "w") as f:
        f.write(made)
    model = json.loads(made)
    weights, config = model["path"], os.path.join(model_dir, "config.json")
    print("model:", made.strip(), flush=True)
    runs = []
    try:
        drop_caches()
        runs.append(one_run("A", a.out, weights, config, not a.no_bpf, a))
        drop_caches()
        wdir = fresh_cgroup("memprobe_warmer")
        runs.append(one_run("B", a.out, weights, config, not a.no_bpf, a, before_engine=lambda: warm(weights, wdir)))
        sh([*CLI, "report", os.path.join(a.out, "A.db"), os.path.join(a.out, "B.db"),
            "-o", os.path.join(a.out, "compare.md")])
    finally:
        for name in ("memprobe_engine", "memprobe_warmer"):
            d = os.path.join(CG, name)
            if os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError as e:
                    print(f"could not remove {d}: {e}", file=sys.stderr)
        shutil.rmtree(a.workdir, ignore_errors=True)
    with open(os.path.join(a.out, "run.json"), "w") as f:
        json.dump({"model": model, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
