"""memprobe export's HTTP side (docs/export.md, "Serving: deadlines, cap, Host check").

One thread and one selector, no thread per connection: an idle or slow socket costs a descriptor
and a few hundred bytes, never CPU. Each connection must deliver its whole request within
REQUEST_DEADLINE_S of being accepted and take the response within RESPONSE_DEADLINE_S, whatever
its pace. At most MAX_CONNECTIONS are open; at the cap (or when accept runs out of descriptors)
the oldest connection without a complete request is dropped, so slow clients cannot keep a real
scrape out. Only GET and HEAD of exactly /metrics (and / for a pointer) are served, one request
per connection (Connection: close). The exposition is rendered once per sampling cycle (render());
a scrape joins cached bytes and adds the data-age gauge. A Host header naming anything but this
host is refused (DNS rebinding). Client errors are logged one line each, at most one line per
LOG_EVERY_S, never a traceback.
"""
from __future__ import annotations

import errno
import ipaddress
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable, Optional
from urllib.parse import parse_qs

REQUEST_DEADLINE_S = 5.0      # from accept to the end of the request head, however slowly it trickles
RESPONSE_DEADLINE_S = 10.0    # from accept to the last byte of the response taken by the client
MAX_CONNECTIONS = 256         # open client connections; at the cap the oldest unfinished one is dropped
MAX_REQUEST_BYTES = 8192      # request line and headers (431 beyond)
# connections the kernel queues before accept(): one that finds the queue full has its SYN dropped and
# retries it after the 1 s initial RTO (RFC 6298), so 200 scrapes at once need more than 128; the
# kernel caps this at net.core.somaxconn (4096 since Linux 5.4, include/linux/socket.h SOMAXCONN)
LISTEN_BACKLOG = 1024
ACCEPT_BATCH = 16             # accepts per loop turn: a connect flood cannot push a waiting request past the cap
FD_PAUSE_S = 0.1              # out of descriptors with nothing to drop: stop accepting this long
LOG_EVERY_S = 10.0            # at most one client-error line per this
POLL_S = 0.5                  # longest sleep of the loop: shutdown() and the log summary are seen within it
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OM_EOF = b"# EOF\n"
AGE_METRIC = "memprobe_exporter_data_age_seconds"
INDEX = b"memprobe exporter: metrics at /metrics (docs/export.md)\n"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- exposition
@dataclass(frozen=True)
class Family:
    """One metric family rendered in both formats, and the sample names `name[]` selects by."""
    metric: object                # prometheus_client Metric
    names: frozenset
    text: bytes
    om: bytes                     # without the final "# EOF"
    kept_when_stale: bool


@dataclass(frozen=True)
class Exposition:
    """What every scrape serves until the next cycle ends: the families, and the whole body of
    an unfiltered scrape per (OpenMetrics?, fresh?), up to the data-age gauge's value."""
    families: tuple
    unix: float                   # when the cycle whose data this is ended
    host: str                     # `host` label of the data-age gauge
    stale_after: float
    bodies: dict                  # (om, fresh) -> (bytes before the age value, bytes after it)


class _Families:
    """A collector over fixed families, as prometheus_client's renderers take."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        return iter(self.metrics)


def render_one(metrics: list, om: bool) -> bytes:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
    if om:
        return generate_openmetrics(_Families(metrics))[:-len(OM_EOF)]
    return generate_latest(_Families(metrics))


PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")    # names no format escapes (prometheus_client validation.py)
TEXT_TYPES = {"gauge": "gauge", "counter": "counter", "info": "gauge", "unknown": "untyped"}


def sample_line(s, cache: "LineCache") -> str:
    """'name{k="v",...} value\\n' (keys sorted, values escaped, the value as Go writes it) of one
    sample: the same in both formats; from the cache when the last cycle had this series at this value,
    its label part from the cache when at another value."""
    key = (s.name, tuple(s.labels.items()))
    hit = cache.new.get(key) or cache.old.get(key)
    if hit is not None and hit[0] == s.value:
        line, head = hit[1], hit[2]
    else:
        if hit is not None:                   # the same series at another value (host-wide ones move every cycle)
            head = hit[2]
        else:
            labels = ",".join(f'{k}="' + v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"') + '"'
                              for k, v in sorted(s.labels.items()))
            head = f"{s.name}{{{labels}}} " if labels else f"{s.name} "
        line = f"{head}{cache.go_float(s.value)}\n"
    cache.new[key] = (s.value, line, head)
    return line


class LineCache:
    """Sample lines of this cycle (new) and the one before (old): most series keep their labels
    and many their value from one cycle to the next; what a cycle did not use is dropped.
    same_old/same_new: by id, the Sample objects given again whole (views/metrics.py TargetBlocks),
    each kept with its line (so its id is not reused) once its family passed render_both's checks."""

    def __init__(self):
        from prometheus_client.utils import floatToGoString
        self.go_float = floatToGoString
        self.old: dict = {}
        self.new: dict = {}
        self.same_old: dict = {}
        self.same_new: dict = {}

    def next_cycle(self) -> None:
        self.old, self.new = self.new, {}
        self.same_old, self.same_new = self.same_new, {}


def render_both(m, cache: LineCache) -> tuple[bytes, bytes]:
    """(text, OpenMetrics) of one family: what prometheus_client's two generate_latest() write
    (prometheus_client 0.2x exposition.py, openmetrics/exposition.py; tests/test_export_render.py
    compares the bytes), many times faster: the sample lines, the same in both formats, are
    built once, or taken from the last cycle's when a series kept its value."""
    if m.type not in TEXT_TYPES or not PLAIN_NAME.match(m.name):
        return render_one([m], False), render_one([m], True)
    lines, names, keys = [], set(), set()
    same = cache.same_old
    for s in m.samples:
        hit = same.get(id(s))
        if hit is not None and hit[0] is s:       # the same Sample as last cycle: checked and rendered then
            lines.append(hit[1])
            continue
        if s.timestamp is not None or s.exemplar is not None or s.native_histogram is not None or s.value is None:
            return render_one([m], False), render_one([m], True)
        names.add(s.name)
        keys.update(s.labels)
        lines.append(sample_line(s, cache))
    # plain names only; the text format moves _created, _gsum and _gcount samples to a family of their own
    if not all(PLAIN_NAME.match(n) and not n.endswith(("_created", "_gsum", "_gcount")) for n in names) or \
            not all(PLAIN_NAME.match(k) for k in keys):
        return render_one([m], False), render_one([m], True)
    cache.same_new.update(zip(map(id, m.samples), zip(m.samples, lines)))
    body = "".join(lines)
    tname = m.name + ("_total" if m.type == "counter" else "_info" if m.type == "info" else "")
    doc = m.documentation.replace("\\", r"\\").replace("\n", r"\n")
    text = f"# HELP {tname} {doc}\n# TYPE {tname} {TEXT_TYPES[m.type]}\n{body}"
    unit = f"# UNIT {m.name} {m.unit}\n" if m.unit else ""
    om_doc = doc.replace('"', r'\"')
    om = f"# HELP {m.name} {om_doc}\n# TYPE {m.name} {m.type}\n{unit}{body}"
    return text.encode(), om.encode()


AGE_MARK = 1234.5             # stands for the age in the cached age family; split out at render()


def age_family(host: str, age: float):
    from prometheus_client.core import GaugeMetricFamily
    a = GaugeMetricFamily(AGE_METRIC, "seconds since the sampling cycle whose data this scrape serves ended "
                          "(target and host series are withheld past --stale-after)", labels=["host"], unit="seconds")
    a.add_metric([host], age)
    return a


def render(metrics, kept_when_stale: Callable[[str], bool], unix: float, host: str,
           stale_after: float, cache: Optional[LineCache] = None) -> Exposition:
    """Render each family once, and the four whole bodies (text or OpenMetrics, fresh or
    stale), at the end of a sampling cycle: a scrape only joins bytes and the age's value."""
    cache = cache or LineCache()
    cache.next_cycle()
    fams = tuple(Family(m, frozenset(s.name for s in m.samples), *render_both(m, cache), kept_when_stale(m.name))
                 for m in metrics)
    bodies = {}
    for om in (False, True):
        age = render_one([age_family(host, AGE_MARK)], om)
        cut = age.rindex(b" %r\n" % AGE_MARK) + 1
        for fresh in (False, True):
            head = b"".join(f.om if om else f.text for f in fams if fresh or f.kept_when_stale)
            bodies[om, fresh] = (head + age[:cut], age[cut + len(repr(AGE_MARK)):] + (OM_EOF if om else b""))
    return Exposition(fams, unix, host, stale_after, bodies)


def exposition_body(x: Exposition, om: bool, names: Optional[set], now_unix: float) -> bytes:
    return b"".join(exposition_parts(x, om, names, now_unix))


def exposition_parts(x: Exposition, om: bool, names: Optional[set], now_unix: float) -> tuple:
    """The scrape's body, in parts sent as they are (no copy): cached families (all of them, or those whose samples `names` selects,
    as prometheus_client's restricted registry does), the data's age, and "# EOF" in OpenMetrics.
    Past stale_after only the families kept when stale are served. An unfiltered scrape (what
    Prometheus sends) renders nothing: cached bytes around the age's value."""
    from prometheus_client.core import Metric
    from prometheus_client.utils import floatToGoString
    age = max(0.0, now_unix - x.unix)
    fresh = age <= x.stale_after
    if names is None:
        head, tail = x.bodies[om, fresh]
        return head, floatToGoString(age).encode(), tail
    out = []
    for f in x.families:
        if not (fresh or f.kept_when_stale):
            continue
        hit = f.names & names
        if hit == f.names and hit:
            out.append(f.om if om else f.text)
        elif hit:                                 # some of the family's sample names (a counter's _total)
            m = Metric(f.metric.name, f.metric.documentation, f.metric.type, f.metric.unit)
            m.samples = [s for s in f.metric.samples if s.name in hit]
            out.append(render_one([m], om))
    if AGE_METRIC in names:
        out.append(render_one([age_family(x.host, age)], om))
    if om:
        out.append(OM_EOF)
    return tuple(out)


def wants_openmetrics(accept: str) -> bool:
    """prometheus_client's choice (exposition.choose_encoder): the first accepted type that is
    OpenMetrics (no version, or 1.0.0 or later) or text/plain version 1.0.0 or later wins; else
    text 0.0.4. Our names are all legacy names, so escaping never changes the bytes."""
    for item in accept.split(","):
        toks = [t.strip() for t in item.split(";")]
        version = next((t.split("=", 1)[1].strip() for t in toks[1:] if t.startswith("version=")), "")
        try:
            v1 = tuple(int(p) for p in version.split(".")) >= (1, 0, 0) if version else None
        except ValueError:
            v1 = False
        if toks[0] == "application/openmetrics-text" and v1 is not False:
            return True
        if toks[0] == "text/plain" and v1:
            return False
    return False


# --------------------------------------------------------------------------- requests
class Refused(Exception):
    """A request answered with an error status; `why` is the log line's text."""

    def __init__(self, status: int, why: str, allow: bool = False):
        super().__init__(why)
        self.status, self.why, self.allow = status, why, allow


def show(value: str) -> str:
    """Client-supplied text in a log line: quoted, escaped, short (no log injection)."""
    return ascii(value[:80])


def header_end(buf: bytearray) -> int:
    """Index just past the blank line ending the request head, or -1 (CRLF or bare LF lines)."""
    ends = [i + n for i, n in ((buf.find(b"\r\n\r\n"), 4), (buf.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> tuple[str, str, str, dict]:
    """(method, target, version, {lower-case name: [values]}) of an HTTP/1.x request head."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "request head is not ASCII")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise Refused(400, f"malformed request line {show(lines[0])}")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise Refused(400, f"malformed request line {show(lines[0])}")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise Refused(505, f"HTTP version {show(version)}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or "\r" in line or line[0] in " \t":
            raise Refused(400, f"malformed header line {show(line)}")
        headers.setdefault(name.lower(), []).append(value.strip())
    return method, target, version, headers


def accepted_hosts(listen_host: str, allow: list[str]) -> Optional[frozenset]:
    """Host names a Host header may carry; None: any. On loopback: localhost and the listen
    address, plus --allow-host names; beyond loopback any Host unless --allow-host is given."""
    if not allow and not is_loopback(listen_host):
        return None
    return frozenset({"localhost", listen_host.lower()} | {a.lower().rstrip(".") for a in allow})


def host_ok(value: str, names: Optional[frozenset]) -> bool:
    """Host header check against DNS rebinding: the name (port ignored: tunnels change it) must be
    one of `names`; an IP literal always passes (rebinding needs a name the attacker controls)."""
    if names is None:
        return True
    v = value.lower()
    if v.startswith("["):
        name, sep, rest = v[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest or None
        if not sep:
            return False
    else:
        name, _, port = v.partition(":")
    if port and not port.isdigit():
        return False
    name = name[:-1] if name.endswith(".") else name
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def requested_names(query: str) -> Optional[set]:
    """The `name[]` values of a query string (prometheus_client's filter), or None for all."""
    try:
        q = parse_qs(query, max_num_fields=64)
    except ValueError:
        raise Refused(400, "more than 64 query parameters")
    return set(q["name[]"]) if "name[]" in q else None


# --------------------------------------------------------------------------- logging
class ClientErrors:
    """One line per client error, at most one line per LOG_EVERY_S; the next line (or a summary
    once it is quiet) says how many were left out."""

    def __init__(self, log: Callable[[str], None], every: float = LOG_EVERY_S):
        self.log, self.every = log, every
        self.last = float("-inf")
        self.left_out = 0
        self.latest = ""

    def __call__(self, peer: str, why: str) -> None:
        now = time.monotonic()
        self.latest = f"{peer}: {why}"
        if now - self.last < self.every:
            self.left_out += 1
            return
        more = f" ({self.left_out} more client errors since the previous line)" if self.left_out else ""
        self.log(f"http: {self.latest}{more}")
        self.last, self.left_out = now, 0

    def flush(self) -> None:
        if self.left_out and time.monotonic() - self.last >= self.every:
            self.log(f"http: {self.left_out} more client errors in the last {self.every:g} s "
                     f"(latest: {self.latest})")
            self.last, self.left_out = time.monotonic(), 0


# --------------------------------------------------------------------------- server
class Conn:
    __slots__ = ("sock", "peer", "t0", "buf", "out")

    def __init__(self, sock: socket.socket, peer: str, t0: float):
        self.sock, self.peer, self.t0 = sock, peer, t0
        self.buf = bytearray()
        self.out: Optional[list] = None   # the response's parts not yet sent (memoryviews), once there is one


def peer_name(addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class MetricsServer:
    """serve_forever() in a thread; shutdown() from another; server_close() after."""

    def __init__(self, host: str, port: int, current: Callable[[], Optional[Exposition]],
                 allow_hosts=(), log: Callable[[str], None] = print):
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(addr)
            self.sock.listen(LISTEN_BACKLOG)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.server_address = self.sock.getsockname()[:2]
        self.current = current
        self.hosts = accepted_hosts(host, list(allow_hosts))
        self.client_error = ClientErrors(log)
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, Conn] = {}    # in accept order: the first is the oldest
        self.resume_accept: Optional[float] = None    # set while accepting is paused
        self._stop = threading.Event()
        self._done = threading.Event()

    # -- loop ----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self.sel.register(self.sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                wait = self._expire(now)
                if self.resume_accept is not None:
                    if now >= self.resume_accept:
                        self.resume_accept = None
                        self.sel.register(self.sock, selectors.EVENT_READ)
                    else:
                        wait = min(wait, self.resume_accept - now)
                for key, _ in self.sel.select(wait):
                    if key.data is None:
                        self._accept()
                    elif key.data.sock in self.conns:     # not dropped earlier in this turn
                        (self._read if key.data.out is None else self._write)(key.data)
                self.client_error.flush()
        finally:
            self._done.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._done.wait()

    def server_close(self) -> None:
        for c in list(self.conns.values()):
            self._close(c)
        self.sel.close()
        self.sock.close()

    # -- connections ---------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue                      # ECONNABORTED and the like: that client is gone
                # out of descriptors (the unit's LimitNOFILE): the oldest connection makes room
                if not self._drop_oldest(f"dropped: accept failed ({e.strerror})"):
                    self.sel.unregister(self.sock)
                    self.resume_accept = time.monotonic() + FD_PAUSE_S
                    self.client_error("-", f"accept failed ({e.strerror}); not accepting for {FD_PAUSE_S:g} s")
                    return
                continue
            if len(self.conns) >= MAX_CONNECTIONS:
                self._drop_oldest(f"dropped at the connection cap ({MAX_CONNECTIONS} open)")
            sock.setblocking(False)
            c = Conn(sock, peer_name(addr), time.monotonic())
            self.conns[sock] = c
            self.sel.register(sock, selectors.EVENT_READ, c)

    def _drop_oldest(self, why: str) -> bool:
        """Drop the oldest connection without a complete request (else the oldest at all)."""
        c = next((c for c in self.conns.values() if c.out is None), None) or next(iter(self.conns.values()), None)
        if c is None:
            return False
        self._drop(c, why)
        return True

    def _expire(self, now: float) -> float:
        """Drop connections past their deadline; return how long the loop may sleep."""
        wait, late = POLL_S, []
        for c in self.conns.values():             # oldest first: stop at the first still in time
            left = c.t0 + REQUEST_DEADLINE_S - now
            if left > 0:
                wait = min(wait, left)
                break
            if c.out is None:
                late.append((c, f"no complete request within {REQUEST_DEADLINE_S:g} s"))
            elif now - c.t0 >= RESPONSE_DEADLINE_S:
                late.append((c, f"response not taken within {RESPONSE_DEADLINE_S:g} s"))
            else:
                wait = min(wait, c.t0 + RESPONSE_DEADLINE_S - now)
        for c, why in late:
            if c.out is None:
                try:                              # best effort: a client that is listening learns why
                    c.sock.sendmsg(self._response(408, (b"request not complete in time\n",)))
                except OSError:
                    pass
            self._drop(c, why)
        return max(wait, 0.0)

    def _read(self, c: Conn) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(c, f"read failed ({e.strerror})")
            return
        if not data:
            self._drop(c, "closed before completing its request" if c.buf else None)
            return
        c.buf += data
        end = header_end(c.buf)
        if end < 0 and len(c.buf) <= MAX_REQUEST_BYTES:
            return
        try:
            if end < 0 or end > MAX_REQUEST_BYTES:
                raise Refused(431, f"request head over {MAX_REQUEST_BYTES} bytes")
            status, ctype, body, head_only = self._answer(*parse_head(bytes(c.buf[:end])))
            extra = ()
        except Refused as r:
            self.client_error(c.peer, f"{r.why} ({r.status})")
            status, ctype, body = r.status, "text/plain; charset=utf-8", (f"{r.why}\n".encode(),)
            head_only = c.buf.startswith(b"HEAD ")
            extra = (("Allow", "GET, HEAD"),) if r.allow else ()
        c.out = [memoryview(b) for b in self._response(status, body, ctype, extra, head_only) if b]
        self.sel.modify(c.sock, selectors.EVENT_WRITE, c)
        self._write(c)

    def _write(self, c: Conn) -> None:
        try:
            n = c.sock.sendmsg(c.out)          # the cached parts as they are: no copy per scrape
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(c, f"write failed ({e.strerror})")
            return
        while c.out and n >= len(c.out[0]):
            n -= len(c.out.pop(0))
        if c.out:
            c.out[0] = c.out[0][n:]
        else:
            self._close(c)

    def _drop(self, c: Conn, why: Optional[str]) -> None:
        if why:
            self.client_error(c.peer, why)
        self._close(c)

    def _close(self, c: Conn) -> None:
        self.conns.pop(c.sock, None)
        self.sel.unregister(c.sock)
        c.sock.close()

    # -- answers -------------------------------------------------------------------------
    def _answer(self, method: str, target: str, version: str, headers: dict) -> tuple[int, str, tuple, bool]:
        hosts = headers.get("host", [])
        if len(hosts) > 1 or (not hosts and version == "HTTP/1.1"):
            raise Refused(400, "an HTTP/1.1 request needs exactly one Host header")
        if hosts and not host_ok(hosts[0], self.hosts):
            raise Refused(403, f"Host {show(hosts[0])} is not this exporter's (DNS rebinding check; "
                               "--allow-host adds names)")
        path, _, query = target.partition("?")
        if path not in ("/metrics", "/"):
            raise Refused(404, f"not found: {show(path)}; metrics are at /metrics")
        if method not in ("GET", "HEAD"):
            raise Refused(405, f"method {show(method)} not allowed: GET or HEAD", allow=True)
        if path == "/":
            return 200, "text/plain; charset=utf-8", (INDEX,), method == "HEAD"
        names = requested_names(query)
        x = self.current()
        if x is None:
            raise Refused(503, "no sampling cycle has completed yet")
        om = wants_openmetrics(", ".join(headers.get("accept", [])))
        return 200, OM_TYPE if om else TEXT_TYPE, exposition_parts(x, om, names, time.time()), method == "HEAD"

    @staticmethod
    def _response(status: int, body: tuple, ctype: str = "text/plain; charset=utf-8", extra=(),
                  head_only: bool = False) -> tuple:
        """(status line and headers, *body parts)."""
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {ctype}",
                 f"Content-Length: {sum(map(len, body))}", "Connection: close", *(f"{k}: {v}" for k, v in extra),
                 "", ""]
        return ("\r\n".join(lines).encode(), *(() if head_only else body))
