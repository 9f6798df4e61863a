"""Issue 11 on a real GPU: an LLM-style inference run under `memprobe record`, checked against
the engine's own log and the kernel. Runs scripts/scenarios/run_inference.py (about 3 minutes
on one H100) unless MEMPROBE_E2E_OUT names a folder where it already ran."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from spark_memprobe.feed import ledger_of
from spark_memprobe.feed.replay import ReplayFeed
from spark_memprobe.recording import Recording

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GiB = 1 << 30


class Run:
    def __init__(self, out: str, label: str):
        self.label = label
        self.log = {}
        for line in open(os.path.join(out, f"{label}.engine.jsonl")):
            j = json.loads(line)
            self.log[j["step"]] = j
        self.feed = ReplayFeed(Recording(os.path.join(out, f"{label}.db")))
        self.md = open(os.path.join(out, f"{label}.md")).read()
        self.pid = self.log["joined"]["pid"]

    def index_after(self, step: str, delay_s: float) -> int:
        """First sample at least delay_s after the engine logged `step`."""
        t = self.log[step]["mono_ns"] + int(delay_s * 1e9)
        return next(i for i, m in enumerate(self.feed.rec.mono) if m >= t)

    def item(self, step: str, delay_s: float = 1.5):
        return self.feed.item(self.index_after(step, delay_s))


@pytest.fixture(scope="module")
def out():
    d = os.environ.get("MEMPROBE_E2E_OUT") or tempfile.mkdtemp(prefix="memprobe-e2e-")
    if not os.path.exists(os.path.join(d, "run.json")):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "scenarios", "run_inference.py"), d],
                       check=True, timeout=1500)
    return d


@pytest.fixture(scope="module")
def runs(out):
    return {k: Run(out, k) for k in ("A", "B")}


@pytest.fixture(scope="module")
def model(out):
    return json.load(open(os.path.join(out, "model.json")))


def weights_entry(report, model):
    return [f for f in report.page_cache if f.inode == model["inode"] and f.net_pages > 0]


@pytest.mark.parametrize("label,owner", [("A", "/memprobe_engine"), ("B", "/memprobe_warmer")])
def test_weights_page_cache_named_and_charged_to_first_reader(runs, model, label, owner):
    r = runs[label]
    item = r.item("kv_and_pinned")
    files = weights_entry(item.report, model)
    print(label, [(f.path, f.net_bytes, f.cgroup_path) for f in files])
    assert len(files) == 1, files
    f = files[0]
    assert f.path == model["path"] and f.cgroup_path == owner
    assert abs(f.net_bytes - model["bytes"]) <= 0.01 * model["bytes"]
    assert model["path"] in r.md and owner in r.md


def test_cuda_allocations_by_kind_match_the_engine_and_nvml(runs):
    r = runs["A"]
    kv, pinned = r.log["kv_and_pinned"]["kv_bytes"], r.log["kv_and_pinned"]["pinned_bytes"]
    w, k = r.item("weights_on_gpu"), r.item("kv_and_pinned")

    def device(item):
        return sum(c.outstanding_bytes for c in item.report.cuda if c.pid == r.pid and c.kind in ("device", "vmm", "pool"))

    def host(item):
        return sum(c.outstanding_bytes for c in item.report.cuda if c.pid == r.pid and c.kind == "host-pinned")

    def nvml_proc(item):
        return sum(p.used_bytes or 0 for g in item.sample.gpus for p in g.processes or [] if p.pid == r.pid)

    def nvml_used(item):
        return sum(g.used_bytes for g in item.sample.gpus)

    # each eBPF report lists the calls since the previous one: gather them up to the KV sample
    calls = [c for m, _, v in r.feed.rec.events("probes") if m <= k.sample.mono_ns
             for c in v.get("cuda_calls") or [] if c["pid"] == r.pid and c["result"] == 0]
    print("KV", kv, "pinned", pinned, "device", device(w), device(k), "host", host(k),
          "nvml proc", nvml_proc(w), nvml_proc(k), "nvml used", nvml_used(w), nvml_used(k))
    assert any(c["kind"] == "device" and c["size_bytes"] == kv for c in calls), "no driver allocation of the KV bytes"
    # the engine's two pinned buffers, exactly, as two cuMemHostAlloc calls; torch adds a few
    # bytes of pinned memory of its own (5 B measured on the H100)
    assert sorted(c["size_bytes"] for c in calls if c["func"] == "cuMemHostAlloc" and c["size_bytes"] >= 1 << 20) \
        == [pinned // 2, pinned // 2]
    assert pinned <= host(k) <= pinned + (1 << 20)
    grew_uprobes = device(k) - device(w)
    assert abs((nvml_proc(k) - nvml_proc(w)) - grew_uprobes) <= 0.02 * nvml_proc(k)
    assert abs((nvml_used(k) - nvml_used(w)) - grew_uprobes) <= 0.02 * nvml_used(k)
    # the weights: device bytes before the KV cache, against what torch says it holds
    assert device(w) >= r.log["weights_on_gpu"]["torch_allocated"]
    assert abs(nvml_proc(k) - device(k)) <= 0.02 * nvml_proc(k) + GiB      # the rest is the CUDA context


def test_pinned_is_shmem_and_the_process_has_anonymous_memory(runs):
    r = runs["A"]
    pinned = r.log["kv_and_pinned"]["pinned_bytes"]
    p, k = r.item("profiled"), r.item("kv_and_pinned")
    grew = k.sample.cgroup.stat["shmem"] - p.sample.cgroup.stat["shmem"]
    print("shmem grew", grew, "pinned", pinned)
    assert abs(grew - pinned) <= 0.02 * pinned
    proc = [x for x in k.sample.processes if x.pid == r.pid][0]
    assert proc.rss_anon_bytes > 100 << 20 and k.sample.cgroup.stat["anon"] > 100 << 20
    assert proc.rss_shmem_bytes >= pinned


def test_cuda_free_model_matches_what_the_engine_saw(runs):
    r = runs["A"]
    before = r.feed.item(r.index_after("profiled", -0.05))         # the sample just before the engine logged
    led = ledger_of(before, r.feed.header)
    seen = r.log["profiled"]["cuda_free"]
    print("engine cudaMemGetInfo free", seen, "modelled", led.cuda[0].free_bytes)
    assert abs(led.cuda[0].free_bytes - seen) <= 0.02 * seen


def test_kv_rule_silent_on_discrete_with_the_uma_prediction(runs):
    r = runs["A"]
    led = ledger_of(r.item("kv_and_pinned"), r.feed.header)
    rule = led.rule("kv_cache_thief")
    assert led.platform == "discrete" and rule.status == "silent" and "discrete" in rule.reason
    assert led.kv.prediction and not led.kv.applies and led.kv.lost_bytes is not None
    assert "PREDICTION" in r.md.upper() and "discrete" in r.md


def test_comparison_names_first_touch(out):
    text = open(os.path.join(out, "compare.md")).read()
    print(text[:3000])
    assert "first" in text.lower() and "touch" in text.lower() and "/memprobe_warmer" in text
