"""memprobe against real Podman (4.3, rootful, with the settings docs/facts.md#f-engines says it
needs here): through the `podman` command when no API socket answers, and through Podman's
Docker-compatible API socket (also when DOCKER_HOST points at it)."""
import json
import subprocess
import sys
import time

import pytest

from engines.podman import PrivatePodman, why_not_available

pytestmark = pytest.mark.docker
MiB = 1 << 20


@pytest.fixture(scope="module")
def podman():
    why = why_not_available()
    if why:
        pytest.skip(why)
    p = PrivatePodman()
    try:
        try:
            p.start()
        except RuntimeError as e:
            pytest.skip(f"podman does not start here with the settings of docs/facts.md#f-engines: {e}")
        yield p
    finally:
        problems = p.stop()
        assert not problems, f"teardown left things behind: {problems}"


@pytest.fixture(scope="module")
def pm_hog(podman):
    return "memprobe-pm-hog", podman.run_memhog("memprobe-pm-hog", 100)


def memprobe(env, *args):
    return subprocess.run([sys.executable, "-m", "spark_memprobe.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def check_target(stdout, name, cid):
    objs = [json.loads(x) for x in stdout.splitlines()]
    t = objs[0]["target"]
    assert (t["engine"], t["name"], t["id"]) == ("podman", name, cid)
    assert t["cgroup_path"] == f"/libpod_parent/libpod-{cid}"          # conmon's cgroup is not the container
    assert [p["ns_pid"] for p in t["processes"]] == [1]
    cur = objs[1]["sample"]["cgroup"]["current_bytes"]
    assert abs(cur - 100 * MiB) <= 0.05 * 100 * MiB, cur
    return t


def test_podman_command_line(podman, pm_hog):
    name, cid = pm_hog
    env = podman.env()          # /run/podman/podman.sock is not there: the command line is used
    r = memprobe(env, "attach", name, "--json", "--count", "1")
    assert r.returncode == 0, r.stderr
    t = check_target(r.stdout, name, cid)
    assert any("(command line)" in e for e in t["evidence"])
    r = memprobe(env, "attach", cid[:8], "--json", "--count", "1")
    assert r.returncode == 0, r.stderr
    check_target(r.stdout, name, cid)


def test_podman_api_socket_and_docker_host_pointing_at_it(podman, pm_hog):
    name, cid = pm_hog
    url = podman.start_service()
    for env in (podman.env(CONTAINER_HOST=url),
                podman.env(DOCKER_HOST=url, MEMPROBE_ENGINES="docker")):
        r = memprobe(env, "attach", name, "--json", "--count", "1")
        assert r.returncode == 0, r.stderr
        t = check_target(r.stdout, name, cid)
        assert any(e.startswith(f"podman at {url}:") for e in t["evidence"])


def test_podman_stop_during_attach(podman):
    cid = podman.run_memhog("memprobe-pm-stop", 16)
    p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "attach", "memprobe-pm-stop", "--interval",
                          "100ms"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=podman.env())
    try:
        time.sleep(3)            # resolution through the podman command takes a moment
        podman.podman("stop", "--time", "10", "memprobe-pm-stop")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"target: container memprobe-pm-stop (podman, {cid[:12]}, running)")
    assert any(x[:2].isdigit() and x.split()[2] == "MiB" for x in lines)       # samples were printed
    assert "end: container memprobe-pm-stop" in lines[-1] and "exited" in lines[-1] and "exit code 0" in lines[-1]
