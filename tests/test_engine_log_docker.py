"""`memprobe engine-log --container NAME` against a real Docker engine (tests/engines/dockerd.py):
the container prints vLLM's own KV lines on its stdout; memprobe reads them back through the
engine's log API, with the times Docker stamped on them."""
import json
import subprocess
import sys
import time

import pytest

from engines.dockerd import IMAGE, wait_for_log

pytestmark = pytest.mark.docker

# vllm/v1/worker/gpu_worker.py and vllm/v1/core/kv_cache_utils.py format strings (docs/engine-log.md)
LINES = ["INFO 09-14 10:03:05 [gpu_worker.py:298] Available KV cache memory: 22.50 GiB",
         "INFO 09-14 10:03:05 [kv_cache_utils.py:1307] GPU KV cache size: 190,272 tokens"]


def test_engine_log_reads_a_container_log_through_docker(dockerd):
    script = "".join(f"echo '{line}'; " for line in LINES) + "echo started; sleep 300"
    c = dockerd.client.containers.run(IMAGE, ["/bin/sh", "-c", script], name="memprobe-enginelog", detach=True,
                                      network_mode="none")
    try:
        wait_for_log(c, "started")
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "spark_memprobe.cli", "engine-log", "--container",
                            "memprobe-enginelog", "--json"], capture_output=True, text=True,
                           env=dockerd.env(), timeout=60)
        assert p.returncode == 0, p.stderr
        facts = json.loads(p.stdout)["facts"]
        kinds = {f["kind"]: f for f in facts}
        assert kinds["kv_cache"]["value_bytes"] == int(22.5 * (1 << 30)), facts
        assert kinds["kv_tokens"]["count"] == 190272, facts
        # Docker's --timestamps prefix gives each line the time it was printed, not the log's own
        # month-day text
        assert all(f["wall_s"] is not None and abs(f["wall_s"] - t0) < 120 for f in facts), facts
        p = subprocess.run([sys.executable, "-m", "spark_memprobe.cli", "engine-log", "--container",
                            "no-such-container-xyz"], capture_output=True, text=True, env=dockerd.env(), timeout=60)
        assert p.returncode == 3 and p.stderr.count("\n") == 1 and "no-such-container-xyz" in p.stderr, p.stderr
    finally:
        c.remove(force=True)
