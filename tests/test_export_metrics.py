"""memprobe export, without a live host: metric families built from captured fixture ledgers
(views/metrics.py), rendered by prometheus_client and parsed back with its parsers; naming
conventions; docs/export.md documents every metric; the alert rules pass promtool (check and
unit tests); the Grafana dashboard only queries documented metrics."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fixture_loader import load_step, steps
from spark_memprobe.probe_report import FaultCount, ProbeReport, ProbeStatus
from spark_memprobe.ledger import LedgerInputs, PageCacheBytes, build_ledger
from spark_memprobe.views.metrics import (OTHER_FILES, TARGET_LABELS, ExporterStats, TargetMetrics,
                                          build_families, top_files)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
MiB = 1 << 20
H100, H100_CG = "h100-cgroup2-scenario", "memprobe_fixture"
GB10, GB10_CG = "gb10-synthetic", "system.slice/docker-gb10synthetic.scope"
NAME_RE = re.compile(r"^memprobe_[a-z][a-z0-9_]*$")


def step(scenario: str, prefix: str) -> str:
    return next(s for s in steps(scenario) if os.path.basename(s).startswith(prefix))


def labels_for(cgroup: str, target: str = "web") -> dict:
    return {"host": "fixture", "target": target, "kind": "container", "container": target,
            "container_id": "ab" * 32, "pod": "", "namespace": "", "cgroup": cgroup}


class Fams:
    """Families as a registry collector."""

    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return iter(self.fams)


def render(fams, openmetrics: bool = False) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fams(fams))
    return (generate_openmetrics if openmetrics else generate_latest)(reg).decode()


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def pick(ss, metric, **labels):
    return [s for s in ss if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]


def one(ss, metric, **labels) -> float:
    got = pick(ss, metric, **labels)
    assert len(got) == 1, (metric, labels, got)
    return got[0].value


def h100_families(prefix="05", inputs=None, report=None, top=10):
    host, s = load_step(step(H100, prefix), H100_CG)
    lg = build_ledger(host, s, inputs)
    host_s = load_step(step(H100, prefix), None)[1]
    hl = build_ledger(host, host_s)
    tm = TargetMetrics(labels_for("/" + H100_CG), lg, [p.pid for p in s.processes], "/" + H100_CG, inputs,
                       {"engine": "docker", "image": "img:1"})
    stats = ExporterStats(cycles=3, cycle_seconds=0.01, last_cycle_unix=1.7e9, interval_seconds=5.0,
                          errors={"host": 1}, target_changes={"added": 1}, fixed_targets={"web": True})
    return host, lg, hl, build_families(host, [tm], hl, report, top, stats, "0.1.0")


def check_cells(ss, lg, lab) -> int:
    """Every cell that was read is a sample with the cell's bytes; unread (None) and
    never-counted cells are absent. Returns how many None cells were checked."""
    nones = 0
    for r in lg.rows:
        if re.match(r".*\.file\d+$", r.key):
            continue
        for view, v in r.cells.items():
            if r.parent is None:
                got = pick(ss, "memprobe_ledger_bytes", row=r.key, view=view, **lab)
            else:
                got = pick(ss, "memprobe_ledger_detail_bytes", row=r.parent, detail=r.key.split(".", 1)[1],
                           view=view, **lab)
            if v is None:
                nones += 1
                assert got == [], (r.key, view, got)
            else:
                assert [g.value for g in got] == [v], (r.key, view)
    n = len(pick(ss, "memprobe_ledger_bytes", **lab)) + len(pick(ss, "memprobe_ledger_detail_bytes", **lab))
    assert n == sum(1 for r in lg.rows for v in r.cells.values() if v is not None
                    and not re.match(r".*\.file\d+$", r.key))
    return nones


def test_ledger_cells_views_and_findings_match_the_ledger_exactly():
    host, lg, hl, fams = h100_families()
    ss = samples(render(fams))
    lab = dict(cgroup="/" + H100_CG, container="web")
    check_cells(ss, lg, lab)
    # target views: their totals; host-wide views once per host, not per target
    for c in lg.columns:
        got = pick(ss, "memprobe_view_bytes", view=c.key, **lab)
        if c.key in ("host_used", "host_nofree", "nvml_used", "cuda_used") or c.total is None:
            assert got == [], c.key
        else:
            assert [g.value for g in got] == [c.total], c.key
    for c in hl.columns:
        if c.key in ("host_used", "host_nofree", "nvml_used", "cuda_used"):
            assert one(ss, "memprobe_host_view_bytes", view=c.key) == c.total
    # step 05: cudaMalloc 2 GiB is GPU memory no cgroup charges
    f = lg.finding("gpu_uncharged")
    assert f is not None and f.bytes > 2 * 1024 * MiB
    assert one(ss, "memprobe_finding_bytes", rule="gpu_uncharged", **lab) == f.bytes
    assert one(ss, "memprobe_finding_severity", rule="gpu_uncharged", **lab) == {"info": 1, "warning": 2,
                                                                                  "critical": 3}[f.severity]
    ft = lg.finding("first_touch")
    assert one(ss, "memprobe_finding_lower_bound_bytes", rule="first_touch", **lab) == ft.bytes_low
    # a rule that checked and found nothing is 0; one that could not apply is absent
    for rr in lg.rules:
        got = pick(ss, "memprobe_finding_bytes", rule=rr.rule, **lab)
        if rr.status == "silent":
            assert got == [], rr.rule
        elif rr.status == "clear":
            assert [g.value for g in got] == [0.0], rr.rule
    # per GPU: the GPU's UUID labels CUDA free and the KV budget
    uuid = host.gpus[0].uuid
    assert uuid and one(ss, "memprobe_cuda_free_bytes", gpu_uuid=uuid, gpu_index="0") == hl.cuda[0].free_bytes
    assert one(ss, "memprobe_kv_cache_gap_bytes", gpu_uuid=uuid, basis="uma_prediction", **lab) == lg.kv.lost_bytes
    for p in lg.kv.parts:
        assert one(ss, "memprobe_kv_cache_gap_part_bytes", part=p.key, **lab) == p.kv_bytes
    assert one(ss, "memprobe_platform_info", platform="discrete") == 1
    assert one(ss, "memprobe_gpu_info", gpu_uuid=uuid, name=host.gpus[0].name) == 1
    assert one(ss, "memprobe_target_info", engine="docker", image="img:1", **lab) == 1
    assert one(ss, "memprobe_target_up", target="web") == 1
    assert one(ss, "memprobe_exporter_errors_total", stage="host") == 1
    # no eBPF report: no eBPF series (absent, not 0)
    for name in ("memprobe_page_faults_total", "memprobe_page_cache_file_bytes", "memprobe_cuda_outstanding_bytes",
                 "memprobe_probe_attached"):
        assert pick(ss, name) == [], name


def test_every_series_carries_the_target_labels_and_names_follow_conventions():
    _, _, _, fams = h100_families()
    text = render(fams)
    per_target = {"memprobe_ledger_bytes", "memprobe_ledger_detail_bytes", "memprobe_view_bytes",
                  "memprobe_finding_bytes", "memprobe_finding_severity", "memprobe_kv_cache_gap_bytes",
                  "memprobe_kv_cache_gap_part_bytes", "memprobe_kv_cache_budget_bytes", "memprobe_target_info",
                  "memprobe_target_processes"}
    seen = set()
    for fam in text_string_to_metric_families(text):
        assert NAME_RE.match(fam.name), fam.name
        assert fam.type in ("gauge", "counter", "info", "unknown"), (fam.name, fam.type)
        for s in fam.samples:
            seen.add(s.name)
            assert NAME_RE.match(s.name), s.name
            if fam.type == "counter":
                assert s.name.endswith("_total"), s.name
            if fam.type == "gauge" and s.name.endswith("_total"):
                pytest.fail(f"gauge named like a counter: {s.name}")
            if s.name in per_target:
                assert set(TARGET_LABELS) <= set(s.labels), (s.name, s.labels)
            # sizes in bytes, times in seconds: no other units in names
            assert not re.search(r"_(kb|kib|mb|mib|gb|gib|pages|ms|milliseconds)(_|$)", s.name), s.name
    assert per_target <= seen


def test_openmetrics_rendering_parses_with_units_and_eof():
    _, lg, _, fams = h100_families()
    text = render(fams, openmetrics=True)
    assert text.endswith("# EOF\n")
    assert "# UNIT memprobe_ledger_bytes bytes" in text
    fams2 = {f.name: f for f in parse_openmetrics(text)}
    assert fams2["memprobe_ledger_bytes"].unit == "bytes"
    assert fams2["memprobe_platform"].type == "info"
    assert fams2["memprobe_exporter_cycles"].type == "counter"
    anon = [s for s in fams2["memprobe_ledger_bytes"].samples if s.labels["row"] == "anon"
            and s.labels["view"] == "current"]
    assert [s.value for s in anon] == [lg.cell("anon", "current")]


def test_integrated_host_kv_gap_is_measured_not_predicted():
    host, s = load_step(step(GB10, "03"), GB10_CG)
    lg = build_ledger(host, s)
    hl = build_ledger(host, load_step(step(GB10, "03"), None)[1])
    fams = build_families(host, [TargetMetrics(labels_for("/" + GB10_CG), lg)], hl)
    ss = samples(render(fams))
    # GB10: NVML device memory is NOT_SUPPORTED: the nvml_used cells are None and must be absent
    assert check_cells(ss, lg, dict(cgroup="/" + GB10_CG)) >= 2
    assert pick(ss, "memprobe_ledger_bytes", view="nvml_used") == []
    assert lg.kv.applies and lg.kv.lost_bytes > 10 * 1024 * MiB
    assert one(ss, "memprobe_kv_cache_gap_bytes", basis="measured") == lg.kv.lost_bytes
    assert one(ss, "memprobe_host_kv_cache_gap_bytes", basis="measured") == hl.kv.lost_bytes
    assert pick(ss, "memprobe_kv_cache_gap_bytes", basis="uma_prediction") == []
    assert one(ss, "memprobe_finding_bytes", rule="kv_cache_thief") == lg.finding("kv_cache_thief").bytes
    assert one(ss, "memprobe_finding_severity", rule="kv_cache_thief") == 3
    assert one(ss, "memprobe_kv_cache_budget_bytes", sizing="cuda_free") == lg.kv.kv_from_cuda_free_bytes
    # GB10: NVML device memory is NOT_SUPPORTED, so nvml_used is absent, never 0
    assert pick(ss, "memprobe_host_view_bytes", view="nvml_used") == []


def test_ebpf_series_bounded_files_faults_and_cuda():
    cg = "/" + H100_CG
    files = [PageCacheBytes(cgroup=cg, bytes=(i + 1) * MiB, dev="08:01", inode=100 + i, path=f"/data/f{i:02d}")
             for i in range(15)]
    files.append(PageCacheBytes(cgroup="/other", bytes=999 * MiB, path="/data/not-mine"))
    files.append(PageCacheBytes(cgroup=cg, bytes=7 * MiB, dev="08:01", inode=7, path=None))
    inputs = LedgerInputs(page_cache=files, cuda_bytes={"device": 2 << 30, "host-pinned": 1 << 30})
    report = ProbeReport(started_mono_ns=0, ended_mono_ns=1,
                         probes=[ProbeStatus("faults", "perf:software/page-faults", True),
                                 ProbeStatus("uvm", "fentry:x", False, "refused")],
                         faults=[FaultCount(cgroup_id=1, pid=4242, faults=100, memory_cgroup=cg + "/sub"),
                                 FaultCount(cgroup_id=1, pid=1, faults=50, memory_cgroup="/other"),
                                 FaultCount(cgroup_id=1, pid=99999, faults=7, memory_cgroup=None)])
    host, lg, _, fams = h100_families(inputs=inputs, report=report, top=10)
    ss = samples(render(fams))
    got = {s.labels["file"]: s.value for s in pick(ss, "memprobe_page_cache_file_bytes")}
    mine = sorted([(f.path or f"inode {f.inode} on {f.dev}", f.bytes) for f in files if f.cgroup == cg],
                  key=lambda x: -x[1])
    assert len(got) == 11 and OTHER_FILES in got              # top 10 + the rest
    assert {k: v for k, v in got.items() if k != OTHER_FILES} == dict(mine[:10])
    assert got[OTHER_FILES] == sum(b for _, b in mine[10:])
    assert "/data/not-mine" not in got
    assert sum(got.values()) == sum(b for _, b in mine)        # nothing lost by the cap
    assert top_files(inputs, cg, 0) == [(OTHER_FILES, sum(b for _, b in mine))]
    # faults: the process whose memory cgroup is below the target's counts, the others do not
    # (pid 99999 is not one of the fixture's processes)
    assert one(ss, "memprobe_page_faults_total", cgroup=cg) == 100
    assert one(ss, "memprobe_cuda_outstanding_bytes", allocation="device", cgroup=cg) == 2 << 30
    assert one(ss, "memprobe_probe_attached", probe="faults") == 1
    assert one(ss, "memprobe_probe_attached", probe="uvm") == 0


# -- documentation ----------------------------------------------------------------------------

def documented_metrics() -> set[str]:
    text = open(os.path.join(DOCS, "export.md")).read()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(memprobe_[a-z0-9_]+)`", section))


def test_every_exported_metric_is_documented_and_every_documented_one_exists():
    inputs = LedgerInputs(page_cache=[PageCacheBytes(cgroup="/" + H100_CG, bytes=MiB, path="/f")],
                          cuda_bytes={"device": 1})
    report = ProbeReport(0, 1, probes=[ProbeStatus("faults", "perf", True)],
                         faults=[FaultCount(1, 1, 5, memory_cgroup="/" + H100_CG)])
    _, _, _, fams = h100_families(inputs=inputs, report=report)
    gb = load_step(step(GB10, "03"), GB10_CG)
    fams += build_families(gb[0], [TargetMetrics(labels_for("/" + GB10_CG), build_ledger(*gb))])
    from test_kernel_views import kernel_host_families      # the page allocator's families (issue 24)
    _, kernel_lg, kernel_fams = kernel_host_families()
    fams += kernel_fams
    names = {s.name for s in samples(render(fams))} | {"memprobe_exporter_data_age_seconds"}
    docs = documented_metrics()
    assert names - docs == set(), "exported but not in docs/export.md"
    assert docs - names == set(), "documented but never exported"
    # every row, detail, view and rule key a ledger can carry is named in the metrics section
    text = open(os.path.join(DOCS, "export.md")).read().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    keys = set()
    for lg in (h100_families()[1], build_ledger(*gb), kernel_lg):
        keys |= {r.key.split(".")[-1] for r in lg.rows if not re.match(r".*\.file\d+$", r.key)}
        keys |= {c.key for c in lg.columns} | {rr.rule for rr in lg.rules}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == [], missing


# -- alert rules -------------------------------------------------------------------------------

ALERTS = os.path.join(DOCS, "prometheus-alerts.yml")


def promtool() -> str:
    exe = shutil.which("promtool")
    if not exe:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/setup.sh --test installs it)")
    return exe


def test_promtool_checks_the_alert_rules():
    p = subprocess.run([promtool(), "check", "rules", ALERTS], capture_output=True, text=True, timeout=60)
    print(p.stdout, p.stderr)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", p.stdout + p.stderr)


def annotations(alert: str, values: dict) -> dict:
    """The rule's annotations with its templates filled in by hand: promtool compares the
    rendered text, so this also checks that every template renders (humanize1024, durations)."""
    text = open(ALERTS).read()
    block = text.split(f"- alert: {alert}\n", 1)[1].split("- alert:", 1)[0]
    out = {}
    for key in ("summary", "description"):
        m = re.search(rf"^ +{key}: (?:'(.*)'|>-\n((?:^ {{12}}.*\n)+))", block, re.M)
        assert m, (alert, key)
        v = m.group(1) if m.group(1) is not None else " ".join(x.strip() for x in m.group(2).splitlines())
        v = re.sub(r"\{\{ \$value \| \w+ \}\}", values["value"], v)
        v = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda x: values[x.group(1)], v)
        out[key] = v
    return out


def test_alert_rules_fire_on_the_right_series(tmp_path):
    """promtool's rule unit tests: uncharged GPU memory above the threshold fires, below it does
    not; a measured KV-cache gap fires, a predicted one (non-UMA host) does not; stale exporter
    data fires; a series that is absent does not fire as if it were 0."""
    exe = promtool()
    lab = 'host="h1",target="web",kind="container",container="web",cgroup="/docker/abc"'
    labels = dict(re.findall(r'(\w+)="([^"]*)"', lab))
    test = {
        "rule_files": [ALERTS],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'memprobe_finding_bytes{{{lab},rule="gpu_uncharged"}}', "values": "0+0x5 8e9+0x30"},
                {"series": f'memprobe_finding_bytes{{{lab.replace("web", "small")},rule="gpu_uncharged"}}',
                 "values": "1e8+0x40"},
                {"series": 'memprobe_host_kv_cache_gap_bytes{host="h1",gpu_uuid="GPU-1",basis="measured"}',
                 "values": "0+0x5 20e9+0x30"},
                {"series": 'memprobe_host_kv_cache_gap_bytes{host="h2",gpu_uuid="GPU-2",basis="uma_prediction"}',
                 "values": "50e9+0x40"},
                {"series": 'memprobe_exporter_data_age_seconds{host="h1",job="memprobe",instance="a:9464"}',
                 "values": "1+0x40"},
                {"series": 'memprobe_exporter_data_age_seconds{host="h2",job="memprobe",instance="b:9464"}',
                 "values": "1+0x5 600+60x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "MemprobeUnchargedGPUMemory", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "MemprobeUnchargedGPUMemory",
                 "exp_alerts": [{"exp_labels": {**labels, "rule": "gpu_uncharged", "severity": "warning"},
                                 "exp_annotations": annotations("MemprobeUnchargedGPUMemory", {
                                     "target": "web", "host": "h1", "value": "7.451Gi"})}]},
                {"eval_time": "4m", "alertname": "MemprobeKVCacheGap", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "MemprobeKVCacheGap",
                 "exp_alerts": [{"exp_labels": {"host": "h1", "gpu_uuid": "GPU-1", "basis": "measured",
                                                "severity": "warning"},
                                 "exp_annotations": annotations("MemprobeKVCacheGap", {
                                     "host": "h1", "value": "18.63Gi"})}]},
                {"eval_time": "25m", "alertname": "MemprobeExporterStale",
                 "exp_alerts": [{"exp_labels": {"host": "h2", "job": "memprobe", "instance": "b:9464",
                                                "severity": "warning"},
                                 "exp_annotations": annotations("MemprobeExporterStale", {
                                     "host": "h2", "instance": "b:9464", "value": "29m 0s"})}]},
            ],
        }],
    }
    f = tmp_path / "alerts_test.yml"
    f.write_text(json.dumps(test))          # JSON is YAML
    p = subprocess.run([exe, "test", "rules", str(f)], capture_output=True, text=True, timeout=60)
    print(p.stdout, p.stderr)
    assert p.returncode == 0, p.stdout + p.stderr


# -- dashboard ---------------------------------------------------------------------------------

def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.load(open(os.path.join(DOCS, "grafana-dashboard.json")))
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))
    walk(d["panels"])
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v.get("query"), dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    return out


def test_dashboard_queries_only_documented_metrics_and_shows_ledger_findings_kv():
    d = json.load(open(os.path.join(DOCS, "grafana-dashboard.json")))
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 30
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "host", "target"} <= names
    exprs = dashboard_exprs()
    docs = documented_metrics() | {"up"}
    used = set()
    for title, e in exprs:
        for m in re.findall(r"\b(memprobe_[a-z0-9_]+|up)\b", e):
            used.add(m)
            assert m in docs, (title, m)
    # the ledger, the findings and the KV gap per container (its page-cache part) and per host
    for need in ("memprobe_ledger_bytes", "memprobe_view_bytes", "memprobe_finding_bytes",
                 "memprobe_kv_cache_gap_part_bytes", "memprobe_host_kv_cache_gap_bytes"):
        assert need in used, need
    # every panel's datasource is the variable, so the dashboard imports into any Grafana
    for p in d["panels"]:
        if p.get("type") != "row":
            assert p["datasource"]["uid"] == "${datasource}", p.get("title")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
