"""What a target controls must neither block memprobe nor get a file other than a regular one
opened by root: a FIFO or device node mounted over the libcuda.so.1 it maps, a /proc read that
never returns, an engine socket that answers a byte at a time.

The namespace attacks run as an unprivileged user (nobody) in its own user and mount
namespace, which is all it takes to mount a FIFO or a device over a file it can see. The
process really maps the libcuda stand-in (tests/fakecuda). Every test removes what it made,
also on failure."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from spark_memprobe.sources.background import Background
from spark_memprobe.sources.bpf.cuda import discover, open_explicit

FAKECUDA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fakecuda")
NOBODY = 65534
MiB = 1 << 20

# Run by nobody inside `unshare -Urm`: start the caller on the library, wait until it maps it,
# then mount ATTACK's file over the library path; "armed PID" when done.
ARM = r"""set -e
caller=$1 lib=$2 work=$3 attack=$4
exec 3<&0
"$caller" "$lib" <&3 3<&- &
c=$!
while ! grep -q libcuda "/proc/$c/maps" 2>/dev/null; do sleep 0.01; done
case $attack in
    fifo) mkfifo "$work/fifo"; mount --bind "$work/fifo" "$lib" ;;
    device) mount --bind /dev/full "$lib" ;;
esac
echo "armed $c"
wait
"""


def _needs(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    if os.geteuid() != 0:
        pytest.skip("the attacks are staged as root (setpriv to nobody), the way memprobe runs")


@pytest.fixture(scope="module")
def fakecuda():
    """The libcuda stand-in and its caller in a 0755 folder that nobody can read."""
    _needs("cc", "setpriv", "unshare")
    d = tempfile.mkdtemp(prefix="memprobe-adv-lib-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        subprocess.run(["sh", os.path.join(FAKECUDA, "build.sh"), d], check=True, capture_output=True)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Armed:
    """A caller that maps libcuda.so.1, run by nobody in its own user and mount namespace,
    with `attack` ("fifo" or "device") mounted over the library path after it was mapped."""

    def __init__(self, lib_dir: str, attack: str):
        self.lib = os.path.join(lib_dir, "libcuda.so.1")
        self.work = tempfile.mkdtemp(prefix="memprobe-adv-work-", dir="/tmp")
        os.chown(self.work, NOBODY, NOBODY)
        self.p = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare", "-Urm",
             "sh", "-c", ARM, "arm", os.path.join(lib_dir, "caller"), self.lib, self.work, attack],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        self.pid = None
        for line in self.p.stdout:
            if line.startswith("armed "):
                self.pid = int(line.split()[1])
                break
        if self.pid is None:
            err = self.p.stderr.read().strip()
            self.close()
            pytest.skip(f"an unprivileged user cannot stage the attack here: {err[-300:]}")

    def cmd(self, c: str) -> str:
        self.p.stdin.write(c + "\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline().strip()
            if line != "ready":
                return line

    def close(self):
        for pid in (self.pid, self.p.pid):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.p.wait()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
def armed(fakecuda):
    made = []

    def make(attack):
        a = Armed(fakecuda, attack)
        made.append(a)
        return a
    yield make
    for a in made:
        a.close()


def _unblock(a: Armed) -> None:
    """If a broken defence left a thread blocked opening the FIFO, let it go (a writer
    appears), so the test fails instead of hanging."""
    try:
        os.close(os.open(f"/proc/{a.pid}/root{a.lib}", os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


class OpenWatch:
    """inotify IN_OPEN on one file: counts every open of it by anyone (inotify(7))."""
    IN_OPEN = 0x20

    def __init__(self, path: str):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, path.encode(), self.IN_OPEN) >= 0

    def opens(self) -> int:
        n = 0
        try:
            while True:
                n += len(os.read(self.fd, 4096)) // 16      # struct inotify_event, no name for a file watch
        except BlockingIOError:
            return n

    def close(self):
        os.close(self.fd)


def _timed(fn, limit_s: float, on_timeout=None) -> tuple[Background, float]:
    """Run fn in a thread: the call and how long it took; fails (instead of hanging) when a
    broken defence lets it block, after on_timeout() has released it."""
    call = Background(fn, "test-call")
    t0 = time.monotonic()
    if not call.wait(limit_s):
        if on_timeout is not None:
            on_timeout()
        pytest.fail(f"still blocked after {limit_s} s")
    return call, time.monotonic() - t0


def _discover_within(pid: int, seconds: float, a: Armed):
    call, took = _timed(lambda: discover([pid]), seconds, lambda: _unblock(a))
    return call.result(), took


def test_fifo_mounted_over_the_mapped_libcuda_neither_blocks_nor_is_opened(armed):
    """Attack: nobody, in its own user+mount namespace, maps libcuda.so.1 and then bind-mounts a
    FIFO over its path; root opening that path blocks until someone writes to the FIFO.
    Defence: the path is opened with O_PATH and must be a regular file with the mapped inode;
    the mapped file itself is then reached through map_files, and the FIFO is named in a note."""
    a = armed("fifo")
    assert stat.S_ISFIFO(os.stat(f"/proc/{a.pid}/root{a.lib}").st_mode)       # the trap is armed
    (libs, notes), took = _discover_within(a.pid, 5, a)
    try:
        assert took < 1.0
        assert [(lib.inode, lib.how) for lib in libs] == [(os.stat(a.lib).st_ino, "map_files")]
        assert any("is a FIFO, not a regular file" in n for n in notes), notes
    finally:
        for lib in libs:
            lib.close()


def test_device_mounted_over_the_mapped_libcuda_is_never_opened(armed):
    """Attack: as above, with /dev/full (a device nobody can see) mounted over the library path,
    so that root would open a device node and reach its driver. Defence: O_PATH never opens it
    (no inotify IN_OPEN on /dev/full), the device is refused as not a regular file, and the
    mapped library is hooked through map_files."""
    a = armed("device")
    watch = OpenWatch("/dev/full")
    try:
        (libs, notes), _ = _discover_within(a.pid, 5, a)
        opened = watch.opens()
    finally:
        watch.close()
    try:
        assert opened == 0, "root opened the device node mounted over libcuda.so.1"
        assert [lib.how for lib in libs] == ["map_files"]
        assert any("is a character device, not a regular file" in n for n in notes), notes
    finally:
        for lib in libs:
            lib.close()


def test_cuda_lib_argument_must_be_a_regular_file(tmp_path):
    """Attack: --cuda-lib naming a FIFO (or a device) would block the probe start (or open a
    driver). Defence: open_explicit refuses anything but a regular file with a clear message,
    without opening it."""
    fifo = tmp_path / "libcuda.so.1"
    os.mkfifo(fifo)
    call, _ = _timed(lambda: open_explicit(str(fifo)), 3, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
        call.result()
    with pytest.raises(OSError, match=r"not a regular file \(a character device\)"):
        open_explicit("/dev/full")


# ------------------------------------------------------------------ the probe session
def _bpf_or_skip():
    from spark_memprobe.sources.bpf import base_status
    from spark_memprobe.sources.bpf.supported import tracefs
    ok, why = base_status()
    if not ok:
        pytest.skip(f"eBPF probes unavailable: {why}")
    if tracefs() is None:
        pytest.skip("tracefs not mounted")


@pytest.mark.bpf
def test_probe_session_on_a_fifo_trapped_target_starts_hooks_and_counts(armed):
    """Attack: the FIFO trap above against a real ProbeSession targeting the process (what
    `record --bpf`, `attach` and `export --bpf` run); before the fix it never finished
    starting. Defence: it starts in seconds, hooks the mapped library through map_files (an
    O_PATH descriptor is enough for the uprobes) and counts the process's allocations."""
    _bpf_or_skip()
    from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession
    a = armed("fifo")
    opts = ProbeOptions(faults=False, pagecache=False, memcg=False, uvm=False, pid=a.pid)
    s = ProbeSession(opts)
    try:
        started, _ = _timed(s.start, 30, lambda: _unblock(a))
        started.result()
        hooked = [x for x in s.statuses if x.mechanism == "uprobe+uretprobe"]
        assert len(hooked) == 1 and hooked[0].chosen and "opened via map_files" in hooked[0].target
        assert any("is a FIFO, not a regular file" in n for n in s.notes), s.notes
        assert a.cmd("alloc").startswith("allocated")
        s.poll(100)
        r = s.collect()
    finally:
        s.close()
    device = {c.kind: c.outstanding_bytes for c in r.cuda if c.pid == a.pid}["device"]
    assert device == (64 << 20) + (1 << 20) + 4096 + 1024 * 300


@pytest.mark.bpf
def test_a_stalled_libcuda_search_does_not_stall_sampling(fakecuda, tmp_path):
    """Attack: a /proc/<pid>/maps read that never returns (a target holding its mmap_lock, e.g.
    faulting on its own FUSE file), stood in for by a FIFO as maps in a captured proc tree.
    Defence: the libcuda search runs in its own thread with a deadline: start returns after
    it, poll and collect go on at once and still count CUDA calls, the stall is counted and
    noted once, and no second search piles up; the result is taken when it comes."""
    _bpf_or_skip()
    from spark_memprobe.sources.bpf import ProbeOptions, ProbeSession
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "comm").write_text("stalled\n")
    os.mkfifo(proc / "4242" / "maps")
    opts = ProbeOptions(faults=False, pagecache=False, memcg=False, uvm=False, discovery_deadline_s=1.0,
                        rescan_s=0.1, cuda_libs=[os.path.join(fakecuda, "libcuda.so.1")])
    s = ProbeSession(opts, proc=str(proc))
    caller = None
    try:
        started, _ = _timed(s.start, 15)
        started.result()
        stalled = s._discovery
        assert stalled is not None and not stalled.done()
        assert s.discovery_overdue == 1
        assert sum("has not returned in 1 s" in n for n in s.notes) == 1
        caller = subprocess.Popen([os.path.join(fakecuda, "caller"), os.path.join(fakecuda, "libcuda.so.1")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert caller.stdout.readline().strip() == "ready"
        caller.stdin.write("alloc\n")
        caller.stdin.flush()
        assert caller.stdout.readline().startswith("allocated")
        slowest = 0.0
        for _ in range(5):
            t = time.monotonic()
            s.poll(50)
            r = s.collect()
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.1)
        assert slowest < 1.0
        assert s._discovery is stalled and s.discovery_overdue == 1           # no pile-up, said once
        assert {c.kind: c.outstanding_bytes for c in r.cuda if c.pid == caller.pid}["managed"] == 32 << 20
        with open(proc / "4242" / "maps", "w") as f:                         # the stall ends
            f.write("7f0000000000-7f0000001000 r-xp 00000000 fe:01 99 /usr/lib/libcuda.so.1\n")
        assert stalled.wait(5)
        os.unlink(proc / "4242" / "maps")                                    # the next search finds nothing
        s.poll(0)
        assert any("/usr/lib/libcuda.so.1 but it could not be opened safely" in n for n in s.notes), s.notes
    finally:
        if caller is not None:
            caller.kill()
            caller.wait()
        if s._discovery is not None and not s._discovery.done():
            try:
                os.close(os.open(proc / "4242" / "maps", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        s.close()


# ------------------------------------------------------------------ engine sockets
class SlowEngine:
    """A Docker API on a unix socket that answers /version at once and then, for anything
    else, `mode`: "silent" (accepts, never answers) or "trickle" (one byte every 0.3 s, a
    header that never ends)."""

    def __init__(self, directory, mode: str):
        self.path = os.path.join(directory, f"slow-{uuid.uuid4().hex[:6]}.sock")
        self.mode = mode
        self.stop = threading.Event()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            buf = b""
            while not self.stop.is_set():
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    target = head.split(b" ")[1]
                    if target.endswith(b"/version"):
                        body = b'{"ApiVersion": "1.41", "Version": "slow", "Components": []}'
                        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                  + str(len(body)).encode() + b"\r\n\r\n" + body)
                    elif self.mode == "trickle":
                        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100000:
                            if self.stop.wait(0.3):
                                return
                            c.sendall(bytes([byte]))
                    else:
                        self.stop.wait()
                        return

    def close(self):
        self.stop.set()
        self.srv.close()
        os.unlink(self.path)


@pytest.fixture
def slow_engine(tmp_path):
    pytest.importorskip("docker")
    made = []

    def make(mode):
        e = SlowEngine(str(tmp_path), mode)
        made.append(e)
        return e
    yield make
    for e in made:
        e.close()


@pytest.mark.parametrize("mode", ["silent", "trickle"])
def test_an_engine_socket_that_never_finishes_answering_costs_one_deadline(slow_engine, mode):
    """Attack: an engine socket (a rootless user's podman.sock is that user's to serve) that
    accepts and never answers, or answers one byte every 0.3 s: the SDK's timeout is per read,
    so a trickle held memprobe for ever. Defence: each request has a total deadline, and while
    one is still running past it, the next fails at once instead of waiting again."""
    from spark_memprobe.sources.engines import ContainerInfo, DockerAPIEngine, EngineUnavailable
    eng = DockerAPIEngine(slow_engine(mode).url, deadline_s=1.0)
    c = ContainerInfo(engine="docker", id="ab" * 32)
    call, first = _timed(lambda: eng.inspect(c), 4)
    with pytest.raises(EngineUnavailable, match="no complete answer .* in 1 s"):
        call.result()
    call, again = _timed(eng.containers, 4)
    with pytest.raises(EngineUnavailable, match="has not finished answering"):
        call.result()
    assert first < 2.0 and again < 0.2, (first, again)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a memory cgroup needs root")
def test_attach_follow_goes_on_while_the_engine_trickles(slow_engine):
    """Attack: while `attach` follows a container whose cgroup just vanished (a restart), the
    engine it asks answers a byte at a time. Defence: the follower's tick waits one deadline
    for the engine, then judges by the cgroup alone, and later ticks do not wait again; the
    follow ends after its exit grace instead of freezing."""
    from spark_memprobe.sources.cgroupfs import CgroupFS
    from spark_memprobe.sources.engines import DockerAPIEngine
    from spark_memprobe.feed.follow import Follower
    from spark_memprobe.sources.targets import Resolver, Target
    eng = DockerAPIEngine(slow_engine("trickle").url, deadline_s=1.0)
    cgfs = CgroupFS()
    if cgfs.layout.memory_version is None:
        pytest.skip("no memory cgroup hierarchy")
    path = f"/memprobe-adv-{uuid.uuid4().hex[:8]}"
    d = cgfs.directory(path)
    os.mkdir(d)
    try:
        t = Target(query="slow", kind="container", cgroup_path=path, cgroup_version=cgfs.layout.memory_version,
                   cgroup_dir=d, engine=eng.name, id="cd" * 32, labels={"endpoint": eng.endpoint},
                   cgroup_ino=os.stat(d).st_ino)
        f = Follower(Resolver(engines=[eng]), t, exit_grace_s=1.5)
        try:
            s, _ = f.tick()
            assert s is not None
            os.rmdir(d)
            ticks, end = [], None
            t0 = time.monotonic()
            while end is None and time.monotonic() - t0 < 20:
                call, took = _timed(f.tick, 5)
                _, events = call.result()
                ticks.append(took)
                end = next((e for e in events if e.kind == "ended"), None)
                time.sleep(0.1)
        finally:
            f.close()
    finally:
        if os.path.isdir(d):
            os.rmdir(d)
    assert end is not None and "cgroup" in end.message and "did not answer" in end.message
    assert ticks[0] < 2.0 and max(ticks[1:]) < 0.5, ticks
