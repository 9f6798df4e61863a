"""memprobe ls / attach / snapshot against a real Docker engine (and its containerd), started
privately for this test session (tests/engines/dockerd.py, docs/facts.md#f-engines).

A container runs tests/workloads/memhog.c touching exactly 200 MiB under `-m 512m`; the tool
must resolve it by name and by ID prefix to /docker/<id> and read 200 MiB within 5 %, like
`docker stats --no-stream` does. Then: OOM kill and stop during attach (the tool says so and
exits 0 with the samples so far), restart (new cgroup, followed), ambiguous prefix, unknown
name, socket missing, permission denied, containerd through ctr."""
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

from engines.cleanup import existing_cgroups, remove_cgroup_tree
from spark_memprobe.sources.cgroupfs import CgroupFS

pytestmark = pytest.mark.docker
MiB = 1 << 20
HOG_MIB = 200


def within(value, expected, rel=0.05) -> bool:
    return value is not None and abs(value - expected) <= rel * expected


@pytest.fixture(scope="module")
def hog(dockerd):
    """The 200 MiB container, running for the whole module."""
    return dockerd.run_memhog("memprobe-hog", HOG_MIB)


def memprobe(env, *args, user_caps=True, timeout=60):
    argv = [sys.executable, "-m", "spark_memprobe.cli", *args]
    if not user_caps:
        # root without any capability: no CAP_DAC_OVERRIDE, so file modes apply to us as to anyone
        argv = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


class Streaming:
    """A running `memprobe attach`: lines arrive on a queue as they are printed."""

    def __init__(self, env, *args):
        self.p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_for(self, pred, timeout=30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"attach ended early (rc {self.p.wait()}): {self.lines} {self.p.stderr.read()}")
            self.lines.append(line)
            if pred(line):
                return line
        raise AssertionError(f"no matching line in {timeout} s: {self.lines}")

    def finish(self, timeout=30.0) -> int:
        rc = self.p.wait(timeout=timeout)
        while True:
            line = self.q.get(timeout=5)
            if line is None:
                break
            self.lines.append(line)
        return rc

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def json_lines(lines):
    return [json.loads(x) for x in lines]


# --------------------------------------------------------------------------- the 200 MiB container
def test_attach_by_name_reads_200_mib_like_docker_stats(dockerd, hog):
    r = memprobe(dockerd.env(), "attach", hog.name, "--json", "--count", "3", "--interval", "200ms")
    assert r.returncode == 0, r.stderr
    objs = json_lines(r.stdout.splitlines())
    assert [o["type"] for o in objs] == ["target", "sample", "sample", "sample", "end"]
    t = objs[0]["target"]
    hog.reload()
    assert (t["kind"], t["engine"], t["name"], t["id"]) == ("container", "docker", hog.name, hog.id)
    assert t["cgroup_path"] == f"/docker/{hog.id}"
    assert os.path.isdir(t["cgroup_dir"])
    # both PIDs: the host PID docker reports, and 1 inside the container's PID namespace
    assert [(p["pid"], p["ns_pid"], p["comm"]) for p in t["processes"]] == [(hog.attrs["State"]["Pid"], 1, "memhog")]
    last = objs[-2]["sample"]["cgroup"]
    assert within(last["current_bytes"], HOG_MIB * MiB), last["current_bytes"]
    assert within(last["stat"]["anon"], HOG_MIB * MiB), last["stat"]["anon"]
    # docker stats shows usage minus inactive file pages; ours from the same files must agree
    stats = dockerd.stats_mem_usage(hog.name)
    ours = last["current_bytes"] - last["stat"]["inactive_file"]
    assert within(stats, HOG_MIB * MiB) and within(ours, stats), (ours, stats)
    assert objs[-1]["kind"] == "count" and objs[-1]["samples"] == 3


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (scripts/setup.sh --test)")
def test_attach_tui_in_tmux_against_the_container(dockerd, hog):
    """`sudo memprobe attach <container>` in a real terminal: the full screen, then q."""
    from tmuxterm import Tmux
    t = Tmux([sys.executable, "-m", "spark_memprobe.cli", "attach", "memprobe-hog"], 100, 30, env=dockerd.env())
    try:
        screen = t.wait_for("memprobe LIVE", "where the bytes are counted", "findings", "memory.current",
                            timeout=60)
        assert f"memprobe-hog (docker {hog.id[:12]})" in screen          # the target line
        anon = [line for line in screen.splitlines() if line.startswith("anon ")][0].split()
        assert anon[1:3] == ["200", "MiB"] or anon[1:3] == ["201", "MiB"], anon
        t.send("q")
        assert t.rc() == 0
        assert "quit: left" in t.capture()
    finally:
        t.close()


def test_attach_by_id_prefix_plain_lines(dockerd, hog):
    for prefix in (hog.id[:12], hog.id[:5]):
        r = memprobe(dockerd.env(), "attach", prefix, "--count", "2", "--interval", "100ms")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"target: container {hog.name} (docker, {hog.id[:12]}, running)")
        assert lines[1].startswith(f"cgroup: v{CgroupFS().layout.memory_version} /docker/{hog.id}  (")
        assert lines[-1].endswith("end: stopped after --count 2; 2 samples")
        samples = lines[-3:-1]
        for s in samples:          # time, current "201 MiB": the value and its unit
            value, unit = s.split()[1:3]
            assert unit == "MiB" and within(float(value) * MiB, HOG_MIB * MiB), s


def test_ls_and_snapshot_show_the_container(dockerd, hog):
    r = memprobe(dockerd.env(), "ls", "--json", "--no-units")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    row = next(x for x in j["targets"] if x["id"] == hog.id)
    assert (row["engine"], row["name"], row["state"], row["cgroup_path"], row["processes"]) == \
        ("docker", hog.name, "running", f"/docker/{hog.id}", 1)
    assert within(row["memory_current_bytes"], HOG_MIB * MiB)
    assert any(a.startswith(f"docker at {dockerd.url}: answered") for a in j["asked"])
    r = memprobe(dockerd.env(), "ls")
    v = CgroupFS().layout.memory_version
    assert r.returncode == 0 and hog.id[:12] in r.stdout and f"v{v}:/docker/{hog.id}" in r.stdout
    r = memprobe(dockerd.env(), "snapshot", hog.name, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["sample"]
    assert s["cgroup"]["path"] == f"/docker/{hog.id}" and within(s["cgroup"]["current_bytes"], HOG_MIB * MiB)


def test_pid_and_cgroup_path_forms(dockerd, hog):
    hog.reload()
    pid = hog.attrs["State"]["Pid"]
    r = memprobe(dockerd.env(), "attach", str(pid), "--json", "--count", "1")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout.splitlines()[0])["target"]
    assert (t["kind"], t["pids"], t["cgroup_path"]) == ("pid", [pid], f"/docker/{hog.id}")
    assert (t["engine"], t["id"], t["labels"]["container_name"]) == ("docker", hog.id, hog.name)
    r = memprobe(dockerd.env(), "attach", f"/docker/{hog.id}", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"target: cgroup /docker/{hog.id} (in docker container {hog.name})"


# --------------------------------------------------------------------------- the end of a container
def test_oom_kill_during_attach(dockerd):
    c = dockerd.run_memhog("memprobe-oom", 50, grow_to=600, mem_limit="512m", memswap_limit="512m")
    a = Streaming(dockerd.env(), "attach", c.name, "--json", "--interval", "100ms")
    try:
        a.wait_for(lambda x: json.loads(x)["type"] == "sample")
        c.kill(signal="SIGUSR1")           # memhog grows to 600 MiB: above the limit
        rc = a.finish()
    finally:
        a.kill()
    assert rc == 0, a.p.stderr.read()
    objs = json_lines(a.lines)
    end = objs[-1]
    assert end["type"] == "end" and end["kind"] == "ended", end
    assert end["facts"]["oom_killed"] is True and end["facts"]["exit_code"] == 137
    assert "OOM killed" in end["message"] and "exit code 137" in end["message"]
    samples = [o["sample"] for o in objs if o["type"] == "sample"]
    assert samples and end["samples"] == len(samples)        # the data so far was printed
    assert within(samples[0]["cgroup"]["current_bytes"], 50 * MiB, rel=0.1)
    assert max(s["cgroup"]["current_bytes"] for s in samples) <= 512 * MiB


def test_stop_during_attach_plain(dockerd):
    c = dockerd.run_memhog("memprobe-stop", 64)
    a = Streaming(dockerd.env(), "attach", c.name, "--interval", "100ms")
    try:
        a.wait_for(lambda x: x[:2].isdigit() and x[2] == ":" and x.split()[2] == "MiB")   # a sample line
        c.stop(timeout=10)                 # memhog exits 0 on SIGTERM
        rc = a.finish()
    finally:
        a.kill()
    assert rc == 0
    assert "end: container memprobe-stop" in a.lines[-1] and "exited, exit code 0" in a.lines[-1]
    assert any("waiting" in x for x in a.lines)       # it gave the container the grace to restart


def test_restart_is_followed_to_the_new_cgroup(dockerd):
    c = dockerd.run_memhog("memprobe-restart", 32)
    a = Streaming(dockerd.env(), "attach", c.name, "--json", "--interval", "100ms", "--exit-grace", "5s")
    try:
        first = json.loads(a.wait_for(lambda x: json.loads(x)["type"] == "target"))["target"]
        a.wait_for(lambda x: json.loads(x)["type"] == "sample")
        c.restart(timeout=10)
        ev = json.loads(a.wait_for(lambda x: json.loads(x)["type"] == "event" and
                                   json.loads(x)["kind"] == "cgroup-changed"))
        second = json.loads(a.wait_for(lambda x: json.loads(x)["type"] == "target"))["target"]
        a.wait_for(lambda x: json.loads(x)["type"] == "sample" and
                   within(json.loads(x)["sample"]["cgroup"]["current_bytes"], 32 * MiB, rel=0.1))
        c.stop(timeout=10)
        rc = a.finish()
    finally:
        a.kill()
    assert rc == 0
    assert ev["facts"]["old_cgroup"] == ev["facts"]["new_cgroup"] == f"/docker/{c.id}"
    assert ev["facts"]["old_ino"] != ev["facts"]["new_ino"] and "re-created" in ev["message"]
    assert first["processes"][0]["pid"] != second["processes"][0]["pid"]
    assert second["processes"][0]["ns_pid"] == 1
    assert json.loads(a.lines[-1])["type"] == "end"


# --------------------------------------------------------------------------- errors
def test_ambiguous_prefix_lists_candidates(dockerd, hog):
    made = []
    try:
        by_first: dict[str, list] = {}
        while True:                        # pigeonhole: at most 17 created containers
            c = dockerd.client.containers.create("memprobe-test:1", ["/memhog", "1"], network_mode="none")
            made.append(c)
            by_first.setdefault(c.id[0], []).append(c)
            if len(by_first[c.id[0]]) == 2:
                break
        pair = by_first[made[-1].id[0]]
        prefix = os.path.commonprefix([pair[0].id, pair[1].id])
        # digits alone name a PID when that process exists (docs/attach.md): then say docker:
        query = f"docker:{prefix}" if prefix.isdigit() else prefix
        r = memprobe(dockerd.env(), "attach", query)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"ID prefix {prefix!r} is ambiguous" in r.stderr
        assert pair[0].id[:16] in r.stderr and pair[1].id[:16] in r.stderr
        # a created container is found, and said not to run
        r = memprobe(dockerd.env(), "attach", f"docker:{pair[0].id[:len(prefix) + 4]}")
        assert r.returncode == 3 and "is not running: created" in r.stderr, r.stderr
    finally:
        for c in made:
            c.remove(force=True)


def test_unknown_name_lists_running_containers(dockerd, hog):
    r = memprobe(dockerd.env(), "attach", "no-such-container")
    assert r.returncode == 3 and r.stderr.count("\n") == 1
    assert "no container, pod, unit or process matches 'no-such-container'" in r.stderr
    assert f"running containers: {hog.name} (docker {hog.id[:12]})" in r.stderr
    assert f"docker at {dockerd.url}: answered" in r.stderr


def test_socket_missing_says_so_and_falls_back_to_proc_scan(dockerd, hog, tmp_path):
    env = dockerd.env(DOCKER_HOST=f"unix://{tmp_path}/absent.sock")
    r = memprobe(env, "attach", hog.name)
    assert r.returncode == 3 and r.stderr.count("\n") == 1
    assert f"docker at unix://{tmp_path}/absent.sock: socket {tmp_path}/absent.sock missing" in r.stderr
    assert "/proc scan of" in r.stderr
    # an ID prefix still resolves, from the cgroup paths alone
    r = memprobe(env, "attach", hog.id[:10], "--json", "--count", "1")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout.splitlines()[0])["target"]
    assert (t["cgroup_path"], t["engine"], t["name"]) == (f"/docker/{hog.id}", "docker", None)
    assert any("no container engine answered" in n for n in t["notes"])


def test_permission_denied_on_socket(dockerd, hog):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) missing: cannot drop capabilities")
    st = os.stat(dockerd.sock)
    os.chown(dockerd.sock, 65534, 65534)     # nobody's socket, mode 0600: root without caps may not connect
    os.chmod(dockerd.sock, 0o600)
    try:
        r = memprobe(dockerd.env(), "attach", hog.name, user_caps=False)
        assert r.returncode == 4, (r.returncode, r.stderr)
        assert f"permission denied on socket {dockerd.sock}" in r.stderr and r.stderr.count("\n") == 1
        assert "/proc scan of" in r.stderr          # and what else was tried
        r = memprobe(dockerd.env(), "attach", hog.id[:12], "--json", "--count", "1", user_caps=False)
        assert r.returncode == 0, r.stderr         # the fallback works without the socket
        assert json.loads(r.stdout.splitlines()[0])["target"]["cgroup_path"] == f"/docker/{hog.id}"
    finally:
        os.chown(dockerd.sock, st.st_uid, st.st_gid)
        os.chmod(dockerd.sock, st.st_mode & 0o7777)


def test_doctor_reports_the_engine(dockerd):
    r = memprobe(dockerd.env(), "doctor", "--json")
    assert r.returncode == 0, r.stderr
    check = next(c for c in json.loads(r.stdout) if c["name"] == "container engines")
    assert check["ok"] and f"docker at {dockerd.url}: answered" in check["detail"]
    r = memprobe(dockerd.env(DOCKER_HOST="unix:///nonexistent/docker.sock"), "doctor", "--json")
    check = next(c for c in json.loads(r.stdout) if c["name"] == "container engines")
    assert not check["ok"] and "socket /nonexistent/docker.sock missing" in check["detail"]


# --------------------------------------------------------------------------- containerd through ctr
@pytest.fixture
def ctr_container(dockerd, tmp_path):
    """A `ctr run` container in its own namespace of the daemon's containerd."""
    ctr = shutil.which("ctr")
    if not ctr:
        pytest.skip("ctr not installed (comes with Debian's containerd)")
    ns, cid = "memprobe-test", "memprobe-ctr"
    keep = existing_cgroups(f"/{ns}")

    def c(*args, check=True):
        return subprocess.run([ctr, "--address", dockerd.containerd_sock, "--namespace", ns, *args],
                              capture_output=True, text=True, timeout=120, check=check)
    img = tmp_path / "img.tar"
    subprocess.run([dockerd.cli, "-H", dockerd.url, "save", "-o", str(img), "memprobe-test:1"], check=True,
                   capture_output=True, timeout=120)
    c("images", "import", str(img))
    c("run", "-d", "--memory-limit", str(512 * MiB), "docker.io/library/memprobe-test:1", cid, "/memhog", "100")
    try:
        deadline = time.monotonic() + 30
        while "RUNNING" not in c("tasks", "ls").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)        # memhog touches its pages right after start
        yield ns, cid
    finally:
        c("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        for _ in range(50):
            if c("tasks", "rm", cid, check=False).returncode == 0 or "not found" in c("tasks", "ls").stdout:
                break
            time.sleep(0.1)
        c("containers", "rm", cid, check=False)
        c("images", "rm", "docker.io/library/memprobe-test:1", check=False)
        for dg in c("content", "ls", "-q", check=False).stdout.split():
            c("content", "rm", dg, check=False)
        subprocess.run([ctr, "--address", dockerd.containerd_sock, "namespaces", "rm", ns], capture_output=True,
                       timeout=60, check=False)
        assert not remove_cgroup_tree(f"/{ns}", keep_in=keep)


def test_containerd_via_ctr(dockerd, ctr_container):
    ns, cid = ctr_container
    env = dockerd.env(MEMPROBE_ENGINES="containerd", CONTAINERD_ADDRESS=dockerd.containerd_sock)
    r = memprobe(env, "attach", cid, "--json", "--count", "2", "--interval", "100ms")
    assert r.returncode == 0, r.stderr
    objs = json_lines(r.stdout.splitlines())
    t = objs[0]["target"]
    assert (t["engine"], t["name"], t["namespace"], t["cgroup_path"]) == ("containerd", cid, ns, f"/{ns}/{cid}")
    assert t["processes"][0]["ns_pid"] == 1
    assert within(objs[2]["sample"]["cgroup"]["current_bytes"], 100 * MiB)
    r = memprobe(env, "ls", "--json", "--no-units")
    row = next(x for x in json.loads(r.stdout)["targets"] if x["id"] == cid)
    assert (row["engine"], row["namespace"], row["cgroup_path"]) == ("containerd", ns, f"/{ns}/{cid}")


def test_docker_containers_seen_through_containerd_when_docker_does_not_answer(dockerd, hog, tmp_path):
    """Docker's own containers live in containerd's moby namespace: with the Docker socket gone,
    containerd still knows the full ID and the PID."""
    env = dockerd.env(MEMPROBE_ENGINES="docker,containerd", DOCKER_HOST=f"unix://{tmp_path}/absent.sock",
                      CONTAINERD_ADDRESS=dockerd.containerd_sock)
    r = memprobe(env, "attach", hog.id, "--json", "--count", "1")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout.splitlines()[0])["target"]
    assert (t["engine"], t["namespace"], t["cgroup_path"]) == ("containerd", "moby", f"/docker/{hog.id}")
    assert any("socket" in x and "missing" in x for x in t["tried"])
