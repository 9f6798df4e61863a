"""Root starts helper processes (the CUDA attribute probe, the demo's child, engine commands);
none may take code from the directory memprobe was started in, from PYTHON* variables or
from search paths with empty entries (which mean the working directory).

Each test plants code that would create a marker file if it ran, in the working directory,
in a PYTHONPATH directory, in a PYTHONSTARTUP file and, for libcuda, behind an empty
LD_LIBRARY_PATH entry, then runs the real helper and requires no marker."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from spark_memprobe.sources.cuda_driver import probe_cuda

# what the helpers import that a file on sys.path could shadow (standard library modules
# that are not built in or frozen), and the package the CUDA probe was once run from
SHADOWED = ["json.py", "ctypes.py", "mmap.py", "signal.py", "subprocess.py", "sitecustomize.py",
            "usercustomize.py", "spark_memprobe/__init__.py", "spark_memprobe/sources/__init__.py",
            "spark_memprobe/sources/cuda_driver.py"]

PLANTED_LIB = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void)
{
    int fd = open("%s/libcuda.so.1", O_WRONLY | O_CREAT, 0600);
    if (fd >= 0)
        close(fd);
}
"""


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A working directory and a PYTHONPATH directory full of planted modules, a
    PYTHONSTARTUP file, all writing a marker into `markers` when run; the test runs from
    that directory with those variables set. Returns the markers directory."""
    markers = tmp_path / "markers"
    markers.mkdir()
    for where in ("cwd", "pythonpath"):
        for rel in SHADOWED:
            f = tmp_path / where / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            name = f"{where}-{rel.replace('/', '.')}"
            f.write_text(f"open({str(markers / name)!r}, 'w').close()\n"
                         "print('{\"planted\": true}')\n")
    (tmp_path / "startup.py").write_text(f"open({str(markers / 'pythonstartup')!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "startup.py"))
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    return markers


def test_cuda_probe_runs_its_own_code_only(planted, monkeypatch):
    """Attack: root starts memprobe in a directory holding ./spark_memprobe/sources/cuda_driver.py
    (and ./json.py, ./ctypes.py ...), with PYTHONPATH and PYTHONSTARTUP pointing at more, and an
    LD_LIBRARY_PATH with an empty entry next to a planted ./libcuda.so.1; `python -m` put the
    working directory first on the child's sys.path. Defence: the probe child runs its own file
    with `python -I`, in /, with LD_LIBRARY_PATH cut to absolute entries, so none of it runs
    (here without a GPU the real probe answers that libcuda is missing)."""
    if shutil.which("cc"):
        src = planted.parent / "planted.c"
        src.write_text(PLANTED_LIB % planted)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", "libcuda.so.1", str(src)], check=True)
        monkeypatch.setenv("LD_LIBRARY_PATH", ":")
    r = probe_cuda(timeout=30)
    assert sorted(os.listdir(planted)) == []
    assert "planted" not in r and ("devices" in r or "libcuda.so.1 not loadable" in r.get("error", "")), r


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo creates a cgroup (root)")
def test_demo_child_runs_its_own_code_only(planted):
    """Attack: `memprobe attach --demo` started by root in a directory holding ./mmap.py (and
    the rest above): `python -c CHILD` has '' (the working directory) first on sys.path, so the
    planted module ran as root. Defence: the demo child runs with `python -I` in /, with an
    empty environment; the real child starts (ready) and no marker appears."""
    from spark_memprobe.cli import CliError
    from spark_memprobe.cli.demo import Demo
    from spark_memprobe.sources.cgroupfs import CgroupFS
    if CgroupFS().layout.memory_version is None:
        pytest.skip("no memory cgroup hierarchy")
    error = None
    try:
        Demo().close()
    except CliError as e:
        error = str(e)
    assert sorted(os.listdir(planted)) == [] and error is None, error


def test_engine_commands_are_not_taken_from_the_working_directory(planted):
    """Attack: PATH with an empty entry (':' here; a common `PATH=$PATH:...` slip) makes
    shutil.which and execvp look in the working directory, where ./podman is planted.
    Defence: commands are found through absolute PATH entries only and run in /."""
    from spark_memprobe.sources.engines import EngineUnavailable, PodmanCLIEngine
    tool = os.path.join(os.getcwd(), "podman")
    with open(tool, "w") as f:
        f.write(f"#!/bin/sh\n: > {planted}/podman\n")
    os.chmod(tool, 0o755)
    # CONTAINERS_STORAGE_CONF: so that podman is asked although this host has no storage
    with pytest.raises(EngineUnavailable, match="podman command is not installed"):
        PodmanCLIEngine(env={"PATH": ":", "CONTAINERS_STORAGE_CONF": "/nonexistent"})
    assert sorted(os.listdir(planted)) == []
