"""memprobe ab on this host, with a real private Docker engine (tests/engines/dockerd.py).

The engine is tests/workloads/standin_engine.c, a STAND-IN documented as such: it sizes a "KV
cache" the way vLLM v1 does, with MemFree in place of cudaMemGetInfo free (what the driver reports
on an integrated-memory GPU), after mapping and touching a model file, and prints vLLM's log line.
Arm A runs it natively (in a throwaway cgroup), arm B in a container with the model's directory
bind-mounted. A model that was not cached when a run started costs that run its size in KV cache.

- --cache as-is after the model was evicted: only the first run (A) reads it from disk, so A's KV
  cache is lower on average; the arms started from different cache states, and memprobe refuses
  to conclude, says why, and its attribution names the model file.
- --cache cold: every run starts with the model evicted; the difference is gone and a verdict is given.
"""
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from livecg import MiB, fresh_file, fstype

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN_C = os.path.join(HERE, "workloads", "standin_engine.c")
IMAGE = "memprobe-ab-standin:1"
MODEL_MIB = 256
KV_LINE = re.compile(r"Available KV cache memory: [0-9.]+ GiB")


def memprobe(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "spark_memprobe.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def standin(dockerd, tmp_path_factory):
    """(stand-in executable, model file, image): the image is busybox plus the static stand-in."""
    d = str(tmp_path_factory.mktemp("ab"))
    if fstype(d) in ("tmpfs", "ramfs"):
        pytest.skip(f"{d} is on {fstype(d)}: the model's pages would be shmem, not evictable page cache")
    exe = os.path.join(d, "standin")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-static", "-o", exe, STANDIN_C], check=True,
                   capture_output=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for sub in ("bin", "tmp", "proc", "sys", "dev", "etc", "models"):
            ti = tarfile.TarInfo(sub)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        t.add("/bin/busybox", "bin/busybox")
        t.add(exe, "standin")
    tar = os.path.join(d, "rootfs.tar")
    with open(tar, "wb") as f:
        f.write(buf.getvalue())
    p = subprocess.run([dockerd.cli, "-H", dockerd.url, "import", tar, IMAGE], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    models = os.path.join(d, "models")
    os.mkdir(models)
    return exe, fresh_file(models, MODEL_MIB * MiB), IMAGE


def run_ab(dockerd, standin, out, cache):
    exe, model, image = standin
    a = f"{exe} {model} 0.9 2000"
    b = (f"{dockerd.cli} run --rm --network none -v {os.path.dirname(model)}:/models:ro {image} /standin "
         f"/models/{os.path.basename(model)} 0.9 2000")
    r = memprobe(dockerd.env(), "ab", "--a", a, "--b", b, "--rounds", "2", "--cache", cache, "--files", model,
                 "-o", out)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(os.path.join(out, "ab.json")) as f:
        return r, json.load(f)


def test_as_is_cache_differs_refused_and_file_named(dockerd, standin, tmp_path):
    from spark_memprobe.sources.pagecache import cached_bytes, evict
    _, model, _ = standin
    evict(model)
    assert cached_bytes(model)[0] < MiB
    r, j = run_ab(dockerd, standin, str(tmp_path / "out"), "as-is")
    runs = j["runs"]
    assert [x["arm"] for x in runs] == ["A", "B", "B", "A"]
    assert all(KV_LINE.search(x["value_line"] or "") for x in runs), runs
    # native runs are followed in a throwaway cgroup (gone now), container runs as their container
    assert "memprobe-ab-" in runs[0]["target"] and "docker" in runs[1]["target"], runs
    assert not [n for n in os.listdir("/sys/fs/cgroup/memory") if n.startswith("memprobe-ab-")]
    before = [x["cache_before"][0]["cached_bytes"] for x in runs]
    # the later runs start warm: CI once saw 254 of the 256 MiB before run 2 (a busy host's reclaim
    # took 2 MiB between runs), so "warm" is most of the model, not every page of it
    assert before[0] < MiB and all(b >= MODEL_MIB * MiB * 15 // 16 for b in before[1:]), before
    # the cold first run paid for the model: A is lower by about half the model on average
    a1, a4 = runs[0]["value_bytes"], runs[3]["value_bytes"]
    assert a4 - a1 > MODEL_MIB * MiB * 3 // 4, (a1, a4)
    assert j["difference"]["b_minus_a_bytes"] > MODEL_MIB * MiB // 4, j["difference"]
    # no conclusion, and it says why
    assert not j["concluded"]
    assert any("different page-cache states" in x for x in j["refused"]), j["refused"]
    assert "No conclusion" in r.stdout and "--cache cold" in r.stdout
    # attribution: the cold A run against a B run; the model file is named
    assert j["compared_runs"][0] == 1
    assert any(os.path.basename(model) in c for c in j["causes"]), j["causes"]
    html = open(tmp_path / "out" / "ab.html").read()
    assert "<svg" in html and "value per run" in html
    assert oct(os.stat(tmp_path / "out" / "ab.html").st_mode & 0o777) == "0o600"


def test_cold_cache_equalises_the_arms(dockerd, standin, tmp_path):
    r, j = run_ab(dockerd, standin, str(tmp_path / "out"), "cold")
    runs = j["runs"]
    assert all(x["cache_before"][0]["cached_bytes"] < MiB for x in runs), runs
    assert all(x["value_bytes"] is not None for x in runs), runs
    assert j["concluded"], j["refused"]
    # what is left is the rest of the host moving MemFree under the stand-in (CI saw 67 MiB on a
    # busy VM): well under the model's bytes that the as-is runs lose to a cold start
    assert abs(j["difference"]["b_minus_a_bytes"]) < MODEL_MIB * MiB // 2, j["difference"]
    assert not j["difference"]["excludes_zero"]
    assert "No difference detected" in r.stdout


# -- without Docker: statistics, the metric option and refused input ---------------------------------
def test_intervals_follow_student_and_welch():
    from spark_memprobe.analysis.ab import arm_stats, difference, t975
    from spark_memprobe.feed.ab import Run
    runs = [Run(i, arm, [], "", "", value_bytes=v) for i, (arm, v) in
            enumerate([("A", 1), ("A", 2), ("A", 3), ("B", 5), ("B", 7), ("B", 9)], 1)]
    a, b = arm_stats("A", runs), arm_stats("B", runs)
    assert (a.n, a.mean, a.sd) == (3, 2.0, 1.0)
    assert a.half_width == pytest.approx(4.303 / 3 ** 0.5, rel=1e-4)
    d = difference(a, b)
    # Welch: se^2 = 1/3 + 4/3, df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.94 -> t(2) = 4.303
    assert d.mean == 5.0 and d.df == pytest.approx(2.941, rel=1e-3)
    assert d.half_width == pytest.approx(4.303 * (5 / 3) ** 0.5, rel=1e-4) and not d.excludes_zero
    assert t975(1000) == pytest.approx(1.9623, abs=1e-3) and t975(31) == pytest.approx(2.0395, abs=1e-3)


def test_metric_from_native_commands(tmp_path):
    """--metric takes the user's number (last match) from each native run's output."""
    def cmd(mib):
        return f"/bin/sh -c 'echo kv 1 MiB; sleep 0.3; echo kv {mib} MiB'"
    out = str(tmp_path / "out")
    r = memprobe(dict(os.environ), "ab", "--a", cmd(100), "--b", cmd(300), "--rounds", "2",
                 "--metric", r"kv ([0-9.]+) (MiB)", "-o", out, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    j = json.load(open(os.path.join(out, "ab.json")))
    assert [x["value_bytes"] // MiB for x in j["runs"]] == [100, 300, 300, 100]
    # no spread in either arm: a zero-width interval, which excludes 0
    assert j["difference"]["b_minus_a_bytes"] == 200 * MiB and j["difference"]["ci95_half_width_bytes"] == 0
    assert j["concluded"] and j["difference"]["excludes_zero"]
    assert sorted(os.listdir(out)) == sorted(["ab.html", "ab.json", "ab.md"] + [
        f"{i:02d}-{a}.{ext}" for i, a in enumerate("ABBA", 1) for ext in ("db", "log")])


@pytest.mark.parametrize("args, message", [
    (["--cache", "cold"], "--cache cold needs --files"),
    (["--metric", "kv [0-9]+"], "--metric: needs a group"),
    (["--metric", "kv ("], "--metric: not a regular expression"),
    (["--files", "/dev/null"], "--files: /dev/null: not a regular file"),
])
def test_refused_input_is_one_line_with_exit_2(tmp_path, args, message):
    r = memprobe(dict(os.environ), "ab", "--a", "/bin/true", "--b", "/bin/true", "--rounds", "1", *args,
                 "-o", str(tmp_path / "o"), timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("memprobe: ") and message in lines[0]
    assert not os.path.exists(tmp_path / "o")


def test_an_output_folder_another_user_can_write_is_refused(tmp_path):
    """Attack: a local user makes the -o folder first (empty, world-writable or theirs) and plants
    a FIFO where a run's --cidfile goes: reading it would block. Defence: an existing folder must
    be the caller's and writable by nobody else; nothing runs."""
    for mode, uid in ((0o777, 0), (0o700, 65534)):
        d = tmp_path / f"o-{mode:o}-{uid}"
        d.mkdir()
        os.chmod(d, mode)
        os.chown(d, uid, -1)
        r = memprobe(dict(os.environ), "ab", "--a", "/bin/true", "--b", "/bin/true", "--rounds", "1",
                     "-o", str(d), timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 7 and len(lines) == 1 and "yours" in lines[0], r.stderr
        assert os.listdir(d) == []


def test_detached_docker_run_is_refused(tmp_path):
    r = memprobe(dict(os.environ), "ab", "--a", "/bin/true", "--b", "docker run -d img", "--rounds", "1",
                 "-o", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 2 and "detached" in r.stderr
