"""Helper processes. memprobe runs as root, often from a directory that someone else can
write, so no process it starts may take code from there (docs/probes.md, "Files inside a
target and helper processes").

    subprocess.run(python_argv(script, ...), **isolated({...}))   a Python helper
    subprocess.run([which("ctr", env), ...], **isolated(env))      a command

A Python helper runs in isolated mode (-I: neither the working directory nor the script's
directory is on sys.path, PYTHON* variables and the user's site-packages are ignored;
docs.python.org/3/using/cmdline.html#cmdoption-I), so a planted ./mmap.py or
./spark_memprobe/... is never imported.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Mapping, Optional

SEARCH_PATHS = ("PATH", "LD_LIBRARY_PATH")


def search_path(value: str) -> str:
    """The absolute entries of a colon-separated search path: an empty or relative entry
    means the working directory to execvp(3), ld.so(8) and shutil.which."""
    return os.pathsep.join(p for p in value.split(os.pathsep) if p.startswith("/"))


def isolated(env: Mapping[str, str]) -> dict:
    """Keyword arguments for subprocess.run/Popen: working directory /, stdin /dev/null, no
    inherited descriptors, and exactly `env` with its search paths cut to absolute entries."""
    clean = {k: search_path(v) if k in SEARCH_PATHS else v for k, v in env.items()}
    return {"cwd": "/", "env": clean, "stdin": subprocess.DEVNULL, "close_fds": True}


def python_argv(*args: str) -> list[str]:
    """This Python in isolated mode, running `args` (a script path, or -c CODE)."""
    return [sys.executable, "-I", *args]


def which(name: str, env: Mapping[str, str]) -> Optional[str]:
    """A command found through the absolute entries of env's PATH only."""
    return shutil.which(name, path=search_path(env.get("PATH") or os.defpath))
