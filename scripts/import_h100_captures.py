#!/usr/bin/env python3
"""Copy raw captures from an H100 host (a folder holding h100-cgroup2-scenario and
h100-inference-scenario, each with its README.md) into tests/fixtures as root trees.

The readers take roots (proc=..., cgroup_root=...), so each step becomes
    steps/NN/proc/{meminfo,vmstat,<pid>/{status,smaps_rollup,cgroup,maps}}
    steps/NN/cgroup/{cgroup.controllers,<name>/memory.*}
    steps/NN/{nvml.json,nvidia-smi.xml,cuda_meminfo.json,engine.json}
File contents are copied byte for byte; only the places change. Nothing is invented:
cgroup.procs exists only where it was captured.
Usage: scripts/import_h100_captures.py CAPTURES [DEST]
"""
import os
import re
import shutil
import sys

if len(sys.argv) < 2:
    raise SystemExit("usage: scripts/import_h100_captures.py CAPTURES [DEST]")
SRC = sys.argv[1]
DST = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../tests/fixtures")
STEP_FILES = {"nvml.json", "nvidia-smi.xml", "cuda_meminfo.json", "engine.json"}


def copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def import_cgroup2_scenario(src, dst):
    controllers = os.path.join(src, "root.cgroup.controllers")
    for step in sorted(os.listdir(os.path.join(src, "steps"))):
        s, d = os.path.join(src, "steps", step), os.path.join(dst, "steps", step)
        status = open(os.path.join(s, "pid.status")).read()
        pid = re.search(r"^Pid:\s+(\d+)", status, re.M).group(1)
        cgpath = open(os.path.join(s, "cgroup")).read().strip().split("::", 1)[1].lstrip("/")
        copy(controllers, os.path.join(d, "cgroup", "cgroup.controllers"))
        for f in os.listdir(s):
            fs = os.path.join(s, f)
            if f in ("meminfo", "vmstat"):
                copy(fs, os.path.join(d, "proc", f))
            elif f == "pid.status":
                copy(fs, os.path.join(d, "proc", pid, "status"))
            elif f == "pid.smaps_rollup":
                copy(fs, os.path.join(d, "proc", pid, "smaps_rollup"))
            elif f == "cgroup":
                copy(fs, os.path.join(d, "proc", pid, "cgroup"))
            elif f.startswith("memory."):
                copy(fs, os.path.join(d, "cgroup", cgpath, f))
            elif f in STEP_FILES:
                copy(fs, os.path.join(d, f))
            else:
                raise SystemExit(f"unexpected file {fs}")


def import_inference_scenario(src, dst, controllers):
    for step in sorted(os.listdir(os.path.join(src, "steps"))):
        s, d = os.path.join(src, "steps", step), os.path.join(dst, "steps", step)
        copy(controllers, os.path.join(d, "cgroup", "cgroup.controllers"))
        for root, _, files in os.walk(s):
            for f in files:
                fs = os.path.join(root, f)
                rel = os.path.relpath(fs, s)
                if rel in ("meminfo", "vmstat"):
                    copy(fs, os.path.join(d, "proc", rel))
                elif rel.startswith("cgroup/engine/"):
                    # the engine's /proc/<pid>/cgroup says 0::/memprobe_engine: put it where it was
                    copy(fs, os.path.join(d, "cgroup", "memprobe_engine", rel[len("cgroup/engine/"):]))
                else:
                    copy(fs, os.path.join(d, rel))


def main():
    a, b = "h100-cgroup2-scenario", "h100-inference-scenario"
    for name in (a, b):
        shutil.rmtree(os.path.join(DST, name), ignore_errors=True)
        for f in os.listdir(os.path.join(SRC, name)):
            if os.path.isfile(os.path.join(SRC, name, f)):
                copy(os.path.join(SRC, name, f), os.path.join(DST, name, f))
    import_cgroup2_scenario(os.path.join(SRC, a), os.path.join(DST, a))
    # same host and boot as the cgroup2 scenario (its README says so); its root controllers
    import_inference_scenario(os.path.join(SRC, b), os.path.join(DST, b),
                              os.path.join(SRC, a, "root.cgroup.controllers"))
    for name in (a, b):
        with open(os.path.join(DST, name, "IMPORTED.md"), "w") as f:
            f.write(f"Imported from the capture {name} (README.md here) by scripts/import_h100_captures.py: files copied\n"
                    "byte for byte into a proc/ and cgroup/ root tree per step (see the script's docstring).\n"
                    + ("cgroup/cgroup.controllers of each step is the root.cgroup.controllers of\n"
                       "h100-cgroup2-scenario (same host, same boot). The captured cgroup/engine/ folder is\n"
                       "cgroup/memprobe_engine/ here: the engine's /proc/<pid>/cgroup names that path.\n"
                       "cgroup/warmer/ keeps its captured name (its real path was not captured).\n"
                       if name == b else ""))


if __name__ == "__main__":
    main()
