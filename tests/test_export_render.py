"""The exporter's cached exposition (cli/export_http.py): rendered once per sampling cycle with
render_both(), byte for byte what prometheus_client writes; a scrape only joins cached bytes
and the data age, so it never renders and two scrapes of one cycle serve the same bytes."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from test_export_metrics import h100_families
from spark_memprobe.cli import export_http
from spark_memprobe.cli.export import kept_when_stale
from spark_memprobe.cli.export_http import AGE_METRIC, LineCache, MetricsServer, render, render_both, render_one


def odd_families():
    """Label values and help texts with every character the formats escape, units, info."""
    g = GaugeMetricFamily("memprobe_odd_bytes", 'help with "quotes", a \\ backslash\nand a newline',
                          labels=["target", "cgroup"], unit="bytes")
    g.add_metric(['we"b', "/a\\b\nc"], 1.5e12)
    g.add_metric(["ünïcode ✓", ""], float("nan"))
    g.add_metric(["inf", "x"], float("inf"))
    c = CounterMetricFamily("memprobe_odd_faults", "faults", labels=["pid"])
    c.add_metric(["1"], 12345678901.0)
    i = InfoMetricFamily("memprobe_odd", "info", labels=["host"])
    i.add_metric(["h"], {"image": 'a"b', "engine": "docker"})
    bare = GaugeMetricFamily("memprobe_bare", "no labels", value=0.1)
    return [g, c, i, bare]


def test_render_both_gives_prometheus_clients_bytes_for_every_family(monkeypatch):
    _, _, _, fams = h100_families()
    fams = fams + odd_families() + list(ProcessCollector(registry=None).collect())
    want = [(render_one([m], False), render_one([m], True)) for m in fams]

    def no_fallback(*a):
        raise AssertionError("fell back to prometheus_client")
    monkeypatch.setattr(export_http, "render_one", no_fallback)     # every family takes the fast path
    cache = LineCache()
    for cycle in range(2):          # the second from the label cache
        for m, (text, om) in zip(fams, want):
            assert render_both(m, cache) == (text, om), (cycle, m.name)
        cache.next_cycle()


def serve(x):
    srv = MetricsServer("127.0.0.1", 0, lambda: x, log=lambda m: None)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def scrape(port: int, accept: str = "text/plain") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert int(next(ln for ln in head.split(b"\r\n") if ln.startswith(b"Content-Length:")).split()[1]) == len(body)
    return body


def without_age(body: bytes) -> bytes:
    return b"\n".join(ln for ln in body.split(b"\n") if not ln.startswith(AGE_METRIC.encode()))


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text; version=1.0.0"])
def test_a_scrape_never_renders_and_two_scrapes_of_a_cycle_serve_the_same_bytes(monkeypatch, accept):
    _, _, _, fams = h100_families()
    x = render(fams, kept_when_stale, time.time(), "fixture", 60.0)

    def no_render(*a):
        raise AssertionError("a scrape rendered")
    monkeypatch.setattr(export_http, "render_one", no_render)
    monkeypatch.setattr(export_http, "render_both", no_render)
    srv = serve(x)
    try:
        a = scrape(srv.server_address[1], accept)
        time.sleep(0.05)
        b = scrape(srv.server_address[1], accept)
    finally:
        srv.shutdown()
        srv.server_close()
    assert without_age(a) == without_age(b)          # the same cached bytes...
    assert a != b                                    # ...and only the data age moved
    ages = [float(ln.rsplit(b" ", 1)[1]) for body in (a, b) for ln in body.split(b"\n")
            if ln.startswith(AGE_METRIC.encode())]
    assert len(ages) == 2 and 0 <= ages[0] < ages[1] < 5
    if "openmetrics" in accept:
        assert b.endswith(b"# EOF\n")
    else:   # the cached body is the whole exposition prometheus_client would write for these families
        names = {f.name for f in text_string_to_metric_families(b.decode())}
        assert {m.name + ("_info" if m.type == "info" else "") for m in fams} <= names and AGE_METRIC in names


def test_past_stale_after_the_cached_stale_body_keeps_only_the_exporters_health():
    _, _, _, fams = h100_families()
    x = render(fams, kept_when_stale, time.time() - 120, "fixture", 60.0)
    srv = serve(x)
    try:
        body = scrape(srv.server_address[1]).decode()
    finally:
        srv.shutdown()
        srv.server_close()
    names = {f.name for f in text_string_to_metric_families(body)}
    assert "memprobe_ledger_bytes" not in names
    assert "memprobe_exporter_cycles" in names and AGE_METRIC in names
