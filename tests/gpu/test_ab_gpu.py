"""memprobe ab on the GPU machine: two native arms, each in its own throwaway cgroup, running a
PyTorch engine (tests/gpu/torch_engine.py) that sizes its KV cache from cudaMemGetInfo the way
vLLM v1 does. Arm B holds EXTRA_MIB more GPU memory before sizing, so its KV cache must be smaller
by that much; the model's page cache is evicted before every run (--cache cold), so the arms start
equal, a verdict is given, and the attribution names the GPU row."""
import json
import os
import subprocess
import sys

MiB = 1 << 20
EXTRA_MIB = 512
MODEL_MIB = 256
ENGINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_engine.py")


def test_ab_two_cgroups_torch_engine(tmp_path):
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(MODEL_MIB * MiB))
    out = tmp_path / "out"

    def arm(extra):
        return f"{sys.executable} {ENGINE} {model} 0.5 {extra}"
    r = subprocess.run([sys.executable, "-m", "spark_memprobe.cli", "ab", "--a", arm(0), "--b", arm(EXTRA_MIB),
                        "--rounds", "2", "--cache", "cold", "--files", str(model), "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    j = json.load(open(out / "ab.json"))
    runs = j["runs"]
    assert all(x["value_bytes"] is not None and x["exit_code"] == 0 for x in runs), runs
    assert all("memprobe-ab-" in x["target"] for x in runs), runs
    assert all(x["cache_before"][0]["cached_bytes"] < MiB for x in runs), runs
    d = j["difference"]
    # B's extra GPU memory comes out of its KV cache, within 32 MiB (allocator rounding, other processes)
    assert abs(d["b_minus_a_bytes"] + EXTRA_MIB * MiB) < 32 * MiB, d
    assert j["concluded"], j["refused"]
    assert j["compared_runs"] is not None
    # the attribution: the GPU memory of the target (NVML per-process) differs by about EXTRA_MIB
    assert any("GPU" in c for c in j["causes"]), j["causes"]
