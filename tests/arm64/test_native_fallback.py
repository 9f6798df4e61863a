"""When the native sampler cannot be compiled (no compiler, another architecture's quirk), the
install still succeeds and `memprobe doctor` says why: setup.py keeps the build error next to
the package and native_available() reports it. Runs on every host (a copy of the package,
built with a compiler that always fails)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_failed_build_installs_and_doctor_says_why(tmp_path):
    for name in ("setup.py", "csrc", "spark_memprobe"):
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, tmp_path / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "_native.c", "_native_build_error.txt"))
        else:
            shutil.copy(src, tmp_path / name)
    env = dict(os.environ, CC="/bin/false", LDSHARED="/bin/false")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr                   # the install goes on without the extension
    assert "warning: native sampler not built" in r.stderr
    err = (tmp_path / "spark_memprobe" / "_native_build_error.txt").read_text()
    assert "CompileError" in err or "failed" in err, err
    code = "from spark_memprobe.sources.sampler import native_available; print(native_available())"
    # -S: no site-packages, so the editable install of the checkout cannot answer instead of the copy
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, check=True).stdout
    assert "(False," in out and "the build at install failed: " + err.strip()[:40] in out, out
