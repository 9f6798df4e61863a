"""A private Docker engine for the tests (docs/facts.md#f-engines): Debian's dockerd with its own
data root, exec root and socket under a temp dir, overlay2, no iptables, no bridge, the
cgroupfs driver (so containers land in /docker/<id>); a test image imported from a
busybox-static rootfs plus tests/workloads/memhog.c built with gcc -static. No registry.

`PrivateDockerd.stop()` removes every container, stops the daemon by PID (and any process
still naming our temp dir: its containerd and shims), unmounts what is left under the temp
dir and removes the cgroups it created; the pytest fixture calls it on failure too."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from typing import Optional

from .cleanup import existing_cgroups, pids_mentioning, remove_cgroup_tree, stop_pid, unmount_under

HERE = os.path.dirname(os.path.abspath(__file__))
MEMHOG_C = os.path.join(os.path.dirname(HERE), "workloads", "memhog.c")
IMAGE = "memprobe-test:1"
BUSYBOX = "/bin/busybox"


def docker_cli() -> Optional[str]:
    """Debian's docker client (the package the tests install), else whatever is on PATH."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


def build_memhog(outdir: str) -> str:
    out = os.path.join(outdir, "memhog")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-static", "-o", out, MEMHOG_C], check=True,
                   capture_output=True)
    return out


def rootfs_tar(memhog: str) -> bytes:
    """busybox-static (+ a few applet links) and /memhog, as a tar for `docker import`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        t.add(BUSYBOX, "bin/busybox")
        for applet in ("sh", "sleep", "cat"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
        t.add(memhog, "memhog")
    return buf.getvalue()


def why_not_available() -> Optional[str]:
    """None when a private dockerd can be started here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "needs root to start a private dockerd"
    for exe in ("dockerd", "containerd", "runc"):
        if not shutil.which(exe):
            return f"{exe} not installed (scripts/setup.sh --test installs Debian's docker.io)"
    if not docker_cli():
        return "docker client not installed"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} missing (busybox-static)"
    if not shutil.which("gcc"):
        return "gcc missing (needed to build the static allocator)"
    return None


class PrivateDockerd:
    def __init__(self):
        # short path: unix socket paths are limited to 108 bytes
        self.base = tempfile.mkdtemp(prefix="mpd-", dir="/tmp")
        os.chmod(self.base, 0o700)
        self.sock = os.path.join(self.base, "docker.sock")
        self.url = f"unix://{self.sock}"
        self.exec_root = os.path.join(self.base, "x")
        self.containerd_sock = os.path.join(self.exec_root, "containerd", "containerd.sock")
        self.log_path = os.path.join(self.base, "dockerd.log")
        self.proc: Optional[subprocess.Popen] = None
        self.client = None
        self.cli = docker_cli()
        self.pre_existing = existing_cgroups("/docker")
        self.extra_cgroups: list[str] = []       # e.g. containerd namespaces created by a test
        self.image_id: Optional[str] = None
        self.rootfs: Optional[bytes] = None

    # -- life cycle -----------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "PrivateDockerd":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", os.path.join(self.base, "d"), "--exec-root", self.exec_root,
             "-H", self.url, "--pidfile", os.path.join(self.base, "dockerd.pid"),
             "--storage-driver", "overlay2", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--exec-opt", "native.cgroupdriver=cgroupfs"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        import docker
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(self.sock):
                try:
                    self.client = docker.DockerClient(base_url=self.url, version="auto", timeout=60)
                    self.client.ping()
                    return self
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not answer in {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return " | ".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def env(self, **extra) -> dict:
        """Environment for a memprobe run against this daemon only."""
        e = dict(os.environ)
        for k in ("DOCKER_HOST", "CONTAINER_HOST", "CONTAINERD_ADDRESS", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            e.pop(k, None)
        e["DOCKER_HOST"] = self.url
        e["MEMPROBE_ENGINES"] = "docker"
        e.update({k: v for k, v in extra.items() if v is not None})
        return e

    def stop(self) -> list[str]:
        """Tear everything down; returns what could not be removed (empty when clean)."""
        problems = []
        ids = []
        if self.client is not None:
            try:
                for c in self.client.containers.list(all=True):
                    ids.append(c.id)
                    try:
                        c.remove(force=True)
                    except Exception as e:  # noqa: BLE001
                        problems.append(f"remove {c.id[:12]}: {e}")
            except Exception as e:  # noqa: BLE001
                problems.append(f"list containers: {e}")
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
        if self.proc is not None:
            stop_pid(self.proc.pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append(f"dockerd {self.proc.pid} did not exit")
        # its containerd and any shim left: processes whose command line names our temp dir
        for pid in pids_mentioning(self.base + "/"):
            stop_pid(pid, timeout=10)
        unmount_under(self.base)
        for cid in ids:
            problems += remove_cgroup_tree(f"/docker/{cid}")
        problems += remove_cgroup_tree("/docker", keep_in=self.pre_existing)
        for rel, keep in self.extra_cgroups:
            problems += remove_cgroup_tree(rel, keep_in=keep)
        shutil.rmtree(self.base, ignore_errors=True)
        if os.path.exists(self.base):
            problems.append(f"{self.base} not removed")
        return problems

    # -- image and containers ---------------------------------------------------------
    def build_image(self) -> str:
        memhog = build_memhog(self.base)
        self.rootfs = rootfs_tar(memhog)
        tar = os.path.join(self.base, "rootfs.tar")
        with open(tar, "wb") as f:
            f.write(self.rootfs)
        # `docker import`, as a user without a registry would build it
        p = subprocess.run([self.cli, "-H", self.url, "import", tar, IMAGE], capture_output=True, text=True,
                           timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"docker import failed: {p.stderr.strip()}")
        self.image_id = p.stdout.strip()
        return self.image_id

    def run_memhog(self, name: str, mib: int, grow_to: Optional[int] = None, mem_limit: str = "512m",
                   wait_ready: bool = True, **kw):
        cmd = ["/memhog", str(mib)] + ([str(grow_to)] if grow_to else [])
        c = self.client.containers.run(IMAGE, cmd, name=name, detach=True, network_mode="none",
                                       mem_limit=mem_limit, **kw)
        if wait_ready:
            wait_for_log(c, f"ready {mib}")
        return c

    def stats_mem_usage(self, name: str) -> int:
        """`docker stats --no-stream` MEM USAGE in bytes (what users compare against)."""
        p = subprocess.run([self.cli, "-H", self.url, "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"docker stats failed: {p.stderr.strip()}")
        return parse_docker_size(p.stdout.split("/")[0].strip())


def wait_for_log(container, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in container.logs().decode("utf-8", "replace"):
            return
        container.reload()
        if container.status not in ("running", "created"):
            raise RuntimeError(f"container {container.name} is {container.status}: {container.logs()!r}")
        time.sleep(0.05)
    raise RuntimeError(f"container {container.name} never printed {text!r}")


def parse_docker_size(s: str) -> int:
    """'200.7MiB' / '1.5GiB' / '512KiB' / '100B' (docker's go-units BytesSize) -> bytes."""
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return int(float(s[:-len(u)]) * units[u])
    raise ValueError(f"not a docker size: {s!r}")
