"""Target resolution on the constructed path trees of tests/fixtures/paths-*/ (pure v2 with the
systemd driver, Kubernetes QoS classes, cgroupfs driver, pure v1, hybrid). No engine is asked
(the roots are captured trees), so this is the /proc-scan and cgroup-tree evidence alone; the
engines are tested for real in test_docker*.py."""
import fcntl
import importlib.util
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios

import pytest

from spark_memprobe.feed.follow import Follower
from spark_memprobe.sources.targets import Resolver, TargetError, classify_path, container_cgroup, list_targets

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
_spec = importlib.util.spec_from_file_location("paths_make", os.path.join(FIX, "paths-make.py"))
PM = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(PM)
MiB = 1 << 20
NO_ENGINES = {"MEMPROBE_ENGINES": "none", "PATH": os.environ.get("PATH", "")}


def resolver(tree: str, root: str = FIX) -> Resolver:
    base = os.path.join(root, tree)
    return Resolver(proc=f"{base}/proc", cgroup_root=f"{base}/sys/fs/cgroup", env=NO_ENGINES)


def cg_root(tree: str) -> str:
    return os.path.join(FIX, tree, "sys", "fs", "cgroup")


# --------------------------------------------------------------------------- classify_path
@pytest.mark.parametrize("path,cid,engine,pod,qos", [
    (f"/system.slice/docker-{PM.D1}.scope", PM.D1, "docker", None, None),
    (f"/system.slice/docker-{PM.D3}.scope/init.scope", PM.D3, "docker", None, None),
    (f"/docker/{PM.D1}", PM.D1, "docker", None, None),
    (f"/machine.slice/libpod-{PM.P1}.scope", PM.P1, "podman", None, None),
    (f"/libpod_parent/libpod-{PM.P1}", PM.P1, "podman", None, None),
    (f"/kubepods.slice/kubepods-pod{PM.us(PM.UID_G)}.slice/cri-containerd-{PM.K_G}.scope",
     PM.K_G, "containerd", PM.UID_G, "guaranteed"),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{PM.us(PM.UID_B)}.slice/"
     f"cri-containerd-{PM.K_B}.scope", PM.K_B, "containerd", PM.UID_B, "burstable"),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{PM.us(PM.UID_BE)}.slice/"
     f"crio-{PM.K_BE}.scope", PM.K_BE, "cri-o", PM.UID_BE, "besteffort"),
    (f"/kubepods/pod{PM.UID_G}/{PM.K_G}", PM.K_G, "kubernetes", PM.UID_G, "guaranteed"),
    (f"/kubepods/burstable/pod{PM.UID_B}/{PM.K_B}", PM.K_B, "kubernetes", PM.UID_B, "burstable"),
    (f"/kubepods/besteffort/pod{PM.UID_BE}/{PM.K_BE}", PM.K_BE, "kubernetes", PM.UID_BE, "besteffort"),
    (f"/kubepods/burstable/pod{PM.UID_B}", None, None, PM.UID_B, "burstable"),
    ("/system.slice/nginx.service", None, None, None, None),
    ("/", None, None, None, None),
    ("/default/redis-1", None, None, None, None),      # ctr's free-form IDs need the engine
])
def test_classify_path(path, cid, engine, pod, qos):
    info = classify_path(path)
    assert (info.container_id, info.engine_hint, info.pod_uid, info.qos) == (cid, engine, pod, qos)
    assert not info.monitor
    if cid:
        assert info.container_path.endswith(cid) or cid in info.container_path.rsplit("/", 1)[-1]


@pytest.mark.parametrize("path", [f"/machine.slice/libpod-conmon-{PM.P1}.scope",
                                  f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
                                  f"{PM.us(PM.UID_BE)}.slice/crio-conmon-{PM.K_BE}.scope"])
def test_classify_monitor_is_not_the_container(path):
    info = classify_path(path)
    assert info.monitor and info.container_id is None


def test_container_cgroup_cuts_after_the_id():
    assert container_cgroup(f"/system.slice/docker-{PM.D3}.scope/init.scope", PM.D3) == \
        f"/system.slice/docker-{PM.D3}.scope"
    assert container_cgroup(f"/docker/{PM.D1}", PM.D1) == f"/docker/{PM.D1}"
    assert container_cgroup("/custom/parent", PM.D1) == "/custom/parent"   # no ID in the path: as is
    assert container_cgroup("/default/de", "de") == "/default/de"          # ctr's free-form IDs: whole names only
    assert container_cgroup(f"/machine.slice/libpod-{PM.P1}.scope/container", PM.P1) == \
        f"/machine.slice/libpod-{PM.P1}.scope"


# --------------------------------------------------------------------------- pure v2, systemd
def test_v2_systemd_docker_prefix_resolves_scope_with_both_pids():
    t = resolver("paths-v2-systemd").resolve(PM.D1[:6])
    assert (t.kind, t.engine, t.id) == ("container", "docker", PM.D1)
    assert t.cgroup_path == f"/system.slice/docker-{PM.D1}.scope" and t.cgroup_version == 2
    assert t.cgroup_dir == f"{cg_root('paths-v2-systemd')}/system.slice/docker-{PM.D1}.scope"
    assert [(p.pid, p.ns_pid, p.comm) for p in t.processes] == [(4242, 1, "python3"), (4300, 7, "gunicorn")]
    assert any("/proc scan" in e for e in t.evidence)
    assert any("no container engine answered" in n for n in t.notes)


def test_v2_systemd_ambiguous_prefix_lists_candidates():
    with pytest.raises(TargetError) as e:
        resolver("paths-v2-systemd").resolve("3f2")
    assert e.value.kind == "ambiguous"
    assert PM.D1[:16] in str(e.value) and PM.D2[:16] in str(e.value) and "\n" not in str(e.value)


def test_v2_systemd_container_with_systemd_inside():
    t = resolver("paths-v2-systemd").resolve(PM.D3[:12])
    assert t.cgroup_path == f"/system.slice/docker-{PM.D3}.scope"           # not .../init.scope
    assert [p.pid for p in t.processes] == [5100]                           # found in the child


def test_v2_systemd_podman_excludes_conmon():
    t = resolver("paths-v2-systemd").resolve(f"container:{PM.P1[:10]}")
    assert (t.engine, t.cgroup_path) == ("podman", f"/machine.slice/libpod-{PM.P1}.scope")
    assert [p.pid for p in t.processes] == [6001]


@pytest.mark.parametrize("ref,uid,qos,path,pids", [
    (PM.UID_G, PM.UID_G, "guaranteed", f"/kubepods.slice/kubepods-pod{PM.us(PM.UID_G)}.slice", [7000, 7001]),
    (PM.us(PM.UID_B), PM.UID_B, "burstable",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{PM.us(PM.UID_B)}.slice", [7100]),
    (f"pod:{PM.UID_BE[:8]}", PM.UID_BE, "besteffort",
     f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{PM.us(PM.UID_BE)}.slice", [7200, 7201]),
    (PM.UID_GONE, PM.UID_GONE, "burstable",      # no processes left: found by walking the tree
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{PM.us(PM.UID_GONE)}.slice", []),
])
def test_v2_systemd_pods_by_uid(ref, uid, qos, path, pids):
    t = resolver("paths-v2-systemd").resolve(ref)
    assert (t.kind, t.engine, t.id, t.cgroup_path) == ("pod", "kubernetes", uid, path)
    assert t.labels["qos"] == qos and t.labels["pod_uid"] == uid
    assert [p.pid for p in t.processes] == pids


@pytest.mark.parametrize("cid,engine,uid", [(PM.K_G, "containerd", PM.UID_G), (PM.K_B, "containerd", PM.UID_B),
                                            (PM.K_BE, "cri-o", PM.UID_BE)])
def test_v2_systemd_kubernetes_container_ids(cid, engine, uid):
    t = resolver("paths-v2-systemd").resolve(cid[:12])
    assert (t.kind, t.engine, t.id) == ("container", engine, cid)
    assert t.cgroup_path.endswith(f"-{cid}.scope") and t.labels["pod_uid"] == uid
    assert len(t.processes) == 1 and t.processes[0].ns_pid == 1     # conmon (cri-o) not included


def test_v2_systemd_units():
    r = resolver("paths-v2-systemd")
    t = r.resolve("nginx.service")
    assert (t.kind, t.engine, t.name, t.cgroup_path) == ("unit", "systemd", "nginx.service",
                                                        "/system.slice/nginx.service")
    assert [(p.pid, p.ns_pid) for p in t.processes] == [(900, 900), (901, 901)]
    t = r.resolve("syncthing.service")
    assert t.cgroup_path == "/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service"
    t = r.resolve(f"docker-{PM.D1}.scope")
    assert (t.kind, t.cgroup_path, t.engine, t.id) == ("unit", f"/system.slice/docker-{PM.D1}.scope", "docker",
                                                       PM.D1)
    with pytest.raises(TargetError) as e:
        r.resolve("absent.service")
    assert e.value.kind == "not_found" and "absent.service" in str(e.value)


def test_v2_systemd_cgroup_paths_and_pids():
    r = resolver("paths-v2-systemd")
    a = r.resolve("/system.slice/nginx.service")
    b = r.resolve(f"{cg_root('paths-v2-systemd')}/system.slice/nginx.service")
    c = r.resolve("cgroup:system.slice/nginx.service")
    assert a.cgroup_path == b.cgroup_path == c.cgroup_path == "/system.slice/nginx.service"
    assert a.kind == "cgroup" and a.cgroup_version == 2
    with pytest.raises(TargetError) as e:
        r.resolve("/system.slice/nope.service")
    assert e.value.kind == "not_found" and "no such cgroup" in str(e.value)
    with pytest.raises(TargetError) as e:     # cannot climb out of the hierarchy: '..' is refused
        r.resolve("/../../../etc")
    assert e.value.kind == "usage" and "'..' component" in str(e.value)
    t = r.resolve("4300")
    assert (t.kind, t.pids, t.cgroup_path, t.engine, t.id) == ("pid", [4300], f"/system.slice/docker-{PM.D1}.scope",
                                                               "docker", PM.D1)
    assert [(p.pid, p.ns_pid) for p in t.processes] == [(4300, 7)]
    with pytest.raises(TargetError) as e:
        r.resolve("pid:99999")
    assert e.value.kind == "not_found"


def test_unknown_name_says_what_was_tried():
    with pytest.raises(TargetError) as e:
        resolver("paths-v2-systemd").resolve("no-such-thing")
    msg = str(e.value)
    assert e.value.kind == "not_found" and "\n" not in msg
    assert "tried:" in msg and "/proc scan of 18 processes" in msg and "not asked" in msg


# --------------------------------------------------------------------------- cgroupfs, v1, hybrid
@pytest.mark.parametrize("tree,version,ref,path", [
    ("paths-v2-cgroupfs", 2, PM.D1[:8], f"/docker/{PM.D1}"),
    ("paths-v2-cgroupfs", 2, PM.K_B[:8], f"/kubepods/burstable/pod{PM.UID_B}/{PM.K_B}"),
    ("paths-v2-cgroupfs", 2, PM.P1[:8], f"/libpod_parent/libpod-{PM.P1}"),
    ("paths-v2-cgroupfs", 2, PM.UID_BE, f"/kubepods/besteffort/pod{PM.UID_BE}"),
    ("paths-v2-cgroupfs", 2, "/default/redis-1", "/default/redis-1"),
    ("paths-v1-cgroupfs", 1, PM.D1[:8], f"/docker/{PM.D1}"),
    ("paths-v1-cgroupfs", 1, PM.K_G[:8], f"/kubepods/pod{PM.UID_G}/{PM.K_G}"),
    ("paths-v1-cgroupfs", 1, PM.UID_G, f"/kubepods/pod{PM.UID_G}"),
    ("paths-hybrid-systemd", 1, PM.D1[:8], f"/system.slice/docker-{PM.D1}.scope"),
    ("paths-hybrid-systemd", 1, PM.K_B[:8], "/kubepods.slice/kubepods-burstable.slice/"
                                           f"kubepods-burstable-pod{PM.us(PM.UID_B)}.slice/docker-{PM.K_B}.scope"),
    ("paths-hybrid-systemd", 1, "docker.service", "/system.slice/docker.service"),
])
def test_other_layouts(tree, version, ref, path):
    t = resolver(tree).resolve(ref)
    assert (t.cgroup_path, t.cgroup_version) == (path, version)
    mem = cg_root(tree) if version == 2 else f"{cg_root(tree)}/memory"
    assert t.cgroup_dir == mem + path and os.path.isdir(t.cgroup_dir)
    assert t.processes or t.kind == "pod"


def test_hybrid_pid_uses_the_v1_memory_line():
    t = resolver("paths-hybrid-systemd").resolve("4242")
    assert (t.cgroup_version, t.cgroup_path) == (1, f"/system.slice/docker-{PM.D1}.scope")


def test_hybrid_unified_path_is_v2_without_memory_files():
    t = resolver("paths-hybrid-systemd").resolve(f"{cg_root('paths-hybrid-systemd')}/unified/system.slice/docker.service")
    assert t.cgroup_version == 2 and any("no memory controller" in n for n in t.notes)


# --------------------------------------------------------------------------- listing
def test_ls_v2_systemd():
    rows = list_targets(resolver("paths-v2-systemd"))
    got = {(r.kind, r.id or r.name) for r in rows}
    containers = {PM.D1, PM.D2, PM.D3, PM.P1, PM.K_G, PM.K_G_PAUSE, PM.K_B, PM.K_BE}
    assert {i for k, i in got if k == "container"} == containers
    assert {i for k, i in got if k == "pod"} == {PM.UID_G, PM.UID_B, PM.UID_BE}
    assert {i for k, i in got if k == "unit"} == {"init.scope", "containerd.service", "docker.service",
                                                  "nginx.service", "idle.service", "session-3.scope",
                                                  "user@1000.service", "syncthing.service"}
    d1 = next(r for r in rows if r.id == PM.D1)
    assert d1.memory_current_bytes == 200 * MiB and d1.processes == 2 and d1.source == "cgroup-path"
    pod = next(r for r in rows if r.id == PM.UID_G)
    assert pod.memory_current_bytes == 901 * MiB and pod.note == "QoS guaranteed"


# --------------------------------------------------------------------------- safety
def test_symlinks_are_not_followed(tmp_path):
    shutil.copytree(os.path.join(FIX, "paths-v2-systemd"), tmp_path / "t", symlinks=True)
    base = tmp_path / "t"
    # a planted /proc/<pid>/cgroup link and a planted cgroup directory link
    os.unlink(base / "proc/4242/cgroup")
    os.symlink(base / "proc/900/cgroup", base / "proc/4242/cgroup")
    os.symlink(base / "sys/fs/cgroup/system.slice/nginx.service", base / "sys/fs/cgroup/evil.service")
    r = resolver("t", root=str(tmp_path))
    with pytest.raises(TargetError) as e:
        r.resolve("pid:4242")
    assert "symlink" in str(e.value)
    with pytest.raises(TargetError):
        r.resolve("evil.service")
    # the scan skipped the planted file: D1 is only seen through pid 4300
    t = r.resolve(PM.D1[:8])
    assert [p.pid for p in t.processes] == [4242, 4300]      # cgroup.procs is the cgroup's own list
    assert r.scan().entities[("container", PM.D1)].pids == [4300]


# --------------------------------------------------------------------------- following
def test_follow_recreated_cgroup_then_removed(tmp_path):
    shutil.copytree(os.path.join(FIX, "paths-v2-cgroupfs"), tmp_path / "t")
    r = resolver("t", root=str(tmp_path))
    t = r.resolve(PM.D1[:8])
    d = t.cgroup_dir
    f = Follower(r, t, exit_grace_s=0)
    s, ev = f.tick()
    assert s.cgroup.current_bytes == 200 * MiB and ev == []
    # the container restarts: same path, new directory (new inode), new numbers
    shutil.copytree(d, d + ".new")
    shutil.rmtree(d)
    os.rename(d + ".new", d)
    with open(f"{d}/memory.current", "w") as fh:
        fh.write(f"{123 * MiB}\n")
    s, ev = f.tick()
    assert [e.kind for e in ev] == ["cgroup-changed"] and "re-created" in ev[0].message
    assert ev[0].facts["old_ino"] != ev[0].facts["new_ino"]
    assert s.cgroup.current_bytes == 123 * MiB
    shutil.rmtree(d)
    s, ev = f.tick()
    assert s is None and [e.kind for e in ev] == ["ended"] and "removed" in ev[0].message
    f.close()


def test_follow_pid_exit_has_no_grace(tmp_path):
    shutil.copytree(os.path.join(FIX, "paths-v2-systemd"), tmp_path / "t")
    r = resolver("t", root=str(tmp_path))
    t = r.resolve("pid:4242")
    f = Follower(r, t, exit_grace_s=5)
    for _ in range(2):
        s, ev = f.tick()
        assert s is not None and ev == []
    assert f.samples == 2
    shutil.rmtree(tmp_path / "t/proc/4242")
    s, ev = f.tick()
    assert s is None and [(e.kind, e.message) for e in ev] == [("ended", "process 4242 exited")]   # no grace for a PID
    f.close()


# --------------------------------------------------------------------------- CLI on the trees
def memprobe(tree, *args):
    base = os.path.join(FIX, tree)
    return subprocess.run([sys.executable, "-m", "spark_memprobe.cli", "--proc", f"{base}/proc",
                           "--cgroup-root", f"{base}/sys/fs/cgroup", *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **NO_ENGINES))


def test_cli_attach_json_and_errors():
    r = memprobe("paths-v2-systemd", "attach", PM.D1[:12], "--json", "--count", "2", "--interval", "10ms")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["type"] for o in objs] == ["target", "sample", "sample", "end"]
    assert objs[0]["target"]["cgroup_path"] == f"/system.slice/docker-{PM.D1}.scope"
    assert objs[1]["sample"]["cgroup"]["current_bytes"] == 200 * MiB
    assert objs[-1]["kind"] == "count" and objs[-1]["samples"] == 2
    for args, code, text in [(["attach", "3f2"], 2, "ambiguous"), (["attach", "nope"], 3, "no container"),
                             (["attach", "pid:x"], 2, "not a PID"), (["snapshot", "nope"], 3, "no container"),
                             (["snapshot", "nginx.service", "--pid", "1"], 2, "not both")]:
        r = memprobe("paths-v2-systemd", *args)
        assert r.returncode == code, (args, r.stderr)
        assert text in r.stderr and r.stderr.strip().count("\n") == 0


def test_cli_attach_plain_and_snapshot_target():
    r = memprobe("paths-v1-cgroupfs", "attach", PM.D1[:12], "--count", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("target: container ") and lines[1].startswith(f"cgroup: v1 /docker/{PM.D1}")
    assert f"  {4242:>7} / {1:>7}  python3" in lines and f"  {4300:>7} / {7:>7}  gunicorn" in lines
    assert lines[-2].split()[1:3] == ["200", "MiB"]
    assert "end: stopped after --count 1; 1 sample" in lines[-1]
    r = memprobe("paths-v2-systemd", "snapshot", "nginx.service", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["sample"]["cgroup"]["path"] == "/system.slice/nginx.service"
    assert j["sample"]["cgroup"]["current_bytes"] == 20 * MiB


def test_cli_ls_plain():
    r = memprobe("paths-v2-systemd", "ls")
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.split("\n\n")[0].splitlines()
    assert head.split() == ["KIND", "ENGINE", "NAME", "ID", "STATE", "MEMORY", "PROCS", "CGROUP"]
    assert any(row.startswith("container  docker?") and PM.D1[:12] in row and "200 MiB" in row for row in rows)
    assert any(row.startswith("unit") and "nginx.service" in row for row in rows)


def test_cli_attach_sigterm_ends_with_data_so_far():
    base = os.path.join(FIX, "paths-v2-systemd")
    p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "--proc", f"{base}/proc", "--cgroup-root",
                          f"{base}/sys/fs/cgroup", "attach", "nginx.service", "--json", "--interval", "50ms"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **NO_ENGINES))
    try:
        lines = [p.stdout.readline(), p.stdout.readline()]      # target, first sample
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    objs = [json.loads(x) for x in lines + out.splitlines()]
    assert objs[0]["type"] == "target" and objs[1]["type"] == "sample"
    assert objs[-1]["type"] == "end" and objs[-1]["kind"] == "interrupted"
    assert objs[-1]["samples"] == sum(o["type"] == "sample" for o in objs) >= 1


def test_cli_attach_count_on_a_terminal_prints_lines():
    """--count on a terminal: plain lines (the live screen is for open-ended runs; tests/test_tui.py)."""
    base = os.path.join(FIX, "paths-v2-cgroupfs")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "spark_memprobe.cli", "--proc", f"{base}/proc", "--cgroup-root",
                          f"{base}/sys/fs/cgroup", "attach", PM.D1[:8], "--count", "3", "--interval", "50ms"],
                         stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ, TERM="xterm", **NO_ENGINES))
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:          # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(timeout=30) == 0
    text = out.decode("utf-8", "replace")
    assert f"cgroup: v2 /docker/{PM.D1}" in text
    assert "200 MiB" in text and "end: stopped after --count 3; 3 samples" in text


def test_views_render_to_fixed_width():
    from spark_memprobe.sources.targets import target_to_dict
    from spark_memprobe.views.attach import header_line, sample_line, target_lines
    r = resolver("paths-v1-cgroupfs")
    t = r.resolve(PM.D1[:8])
    f = Follower(r, t)
    s, _ = f.tick()
    f.close()
    td = target_to_dict(t)
    assert target_lines(td)[:2] == [f"target: container {PM.D1} (docker, running)",
                                    f"cgroup: v1 /docker/{PM.D1}  ({t.cgroup_dir})"]
    hdr, line = header_line().split(), sample_line(s).split()
    assert hdr == ["time", "current", "workingset", "anon", "file", "shmem", "kernel", "limit", "procs",
                   "rss_sum", "oom_kill"]
    # fixture: current 200 MiB, 90 % anon rounded to pages, the rest inactive file; no limit; no kmem file
    assert line[1:] == ["200", "MiB", "180", "MiB", "180", "MiB", "20", "MiB", "—", "—", "max", "2", "7.81",
                        "MiB", "—"]
