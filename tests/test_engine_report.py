"""`record --engine-log` and `report` live: a real memory cgroup reads a model file while a
vLLM-format log says its KV cache size; the recording holds the engine facts at their lines'
times and the report compares the engine's KV with the model's and names the file's page cache
charged to the cgroup, with `memprobe evict` as the remedy."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from livecg import MiB, fresh_file
from spark_memprobe.cli import main
from spark_memprobe.recording import Recording

FILE_MIB = 64


def vllm_line(msg: str) -> str:
    # vllm/logger.py _FORMAT and _DATE_FORMAT (v0.10.1): "%(levelname)s %(asctime)s [file:line] %(message)s"
    return f"(EngineCore_DP0 pid=1) INFO {time.strftime('%m-%d %H:%M:%S')} [gpu_worker.py:298] {msg}\n"


def test_record_engine_log_and_report_compare_kv(live_cgroup, tmp_path):
    model = fresh_file(str(tmp_path), FILE_MIB * MiB)
    log = tmp_path / "vllm.log"
    log.write_text(vllm_line("non-default args: {'gpu_memory_utilization': 0.8}"))
    db, md = tmp_path / "run.db", tmp_path / "run.md"
    live_cgroup.start_child()
    rec = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "record", f"cgroup:{live_cgroup.path}",
                            "-o", str(db), "--duration", "5s", "--interval", "200ms", "--no-bpf",
                            "--engine-log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert rec.stdout.readline().startswith("recording ")
        time.sleep(0.6)                                   # the first samples: a cold cache
        live_cgroup.do(f"read {model}")
        live_cgroup.do(f"map {model}")
        time.sleep(2.1)     # mapped_files are read once a second; vLLM's timestamps are whole seconds
        with open(log, "a") as f:
            f.write(vllm_line("Model loading took 0.0625 GiB and 1.2 seconds"))
            f.write(vllm_line("Available KV cache memory: 22.50 GiB"))
        out, err = rec.communicate(timeout=30)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert rec.returncode == 0, err
    with Recording(str(db)) as r:
        facts = [v for _, _, v in r.events("engine_fact")]
        mono = r.mono
        kv_mono = [m for m, _, v in r.events("engine_fact") if v["kind"] == "kv_cache"]
    assert [f["kind"] for f in facts] == ["utilization", "weights", "kv_cache"]
    assert mono[0] < kv_mono[0] <= mono[-1]               # placed on the timeline, inside the run
    assert main(["report", str(db), "-o", str(md)]) == 0
    text = md.read_text()
    assert "vllm said 22.5 GiB of KV cache" in text
    assert "at that instant the model gives" in text
    assert f"page cache of {model}" in text and live_cgroup.path in text
    assert f"memprobe evict {model}" in text
