"""Podman for the tests, with the only settings under which Podman 4.3 runs on this hybrid-cgroup
machine (docs/facts.md#f-engines): runc (crun refuses hybrid cgroups), the cgroupfs manager, nofile <=
20000 and nproc <= 32768 default ulimits, the file events logger. Storage, run and tmp dirs live
under a private temp dir given through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF, so the host's
podman state is not touched."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Optional

from .cleanup import existing_cgroups, pids_mentioning, remove_cgroup_tree, stop_pid, unmount_under
from .dockerd import BUSYBOX, build_memhog, rootfs_tar

IMAGE = "localhost/memprobe-test:1"
VARLIB = "/var/lib/containers"


def why_not_available() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (rootful podman with the cgroupfs manager)"
    for exe in ("podman", "runc", "conmon", "gcc"):
        if not shutil.which(exe):
            return f"{exe} not installed (scripts/setup.sh --test installs podman)"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} missing (busybox-static)"
    return None


class PrivatePodman:
    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="mpp-", dir="/tmp")
        os.chmod(self.base, 0o700)
        self.conf = os.path.join(self.base, "containers.conf")
        self.storage = os.path.join(self.base, "storage.conf")
        self.sock = os.path.join(self.base, "podman.sock")
        self.service: Optional[subprocess.Popen] = None
        self.pre_existing = existing_cgroups("/libpod_parent")
        # `podman import` writes its blob-info cache to /var/lib/containers/cache whatever the
        # storage settings say (containers/image, root's default BlobInfoCacheDir)
        self.varlib_existed = os.path.exists(VARLIB)
        b = self.base
        with open(self.conf, "w") as f:
            f.write(f'[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                    f'netns = "none"\n'
                    f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{b}/events.log"\ntmp_dir = "{b}/tmp"\n'
                    f'volume_path = "{b}/volumes"\n')
        with open(self.storage, "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{b}/root"\nrunroot = "{b}/run"\n')

    def env(self, **extra) -> dict:
        e = dict(os.environ)
        for k in ("DOCKER_HOST", "CONTAINER_HOST", "CONTAINERD_ADDRESS"):
            e.pop(k, None)
        e.update(CONTAINERS_CONF=self.conf, CONTAINERS_STORAGE_CONF=self.storage, MEMPROBE_ENGINES="podman")
        e.update({k: v for k, v in extra.items() if v is not None})
        return e

    def podman(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env(), timeout=timeout,
                              check=check)

    def start(self) -> "PrivatePodman":
        p = self.podman("info", "--format", "{{.Host.CgroupManager}} {{.Host.OCIRuntime.Name}}", check=False)
        if p.returncode != 0:
            raise RuntimeError(f"podman info failed: {p.stderr.strip().splitlines()[-1:]}")
        memhog = build_memhog(self.base)
        tar = os.path.join(self.base, "rootfs.tar")
        with open(tar, "wb") as f:
            f.write(rootfs_tar(memhog))
        self.podman("import", tar, IMAGE)
        return self

    def run_memhog(self, name: str, mib: int, mem_limit: str = "512m") -> str:
        cid = self.podman("run", "-d", "--name", name, "--network", "none", "-m", mem_limit, IMAGE, "/memhog",
                          str(mib)).stdout.strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if f"ready {mib}" in self.podman("logs", name).stdout:
                return cid
            time.sleep(0.1)
        raise RuntimeError(f"podman container {name} never got ready")

    def start_service(self) -> str:
        """`podman system service` on a private socket (the Docker-compatible API)."""
        self.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{self.sock}"],
                                        env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("podman system service did not start")
            time.sleep(0.1)
        return f"unix://{self.sock}"

    def stop(self) -> list[str]:
        problems = []
        if self.service is not None:
            stop_pid(self.service.pid, timeout=10)
        p = self.podman("rm", "--all", "--force", "--time", "0", check=False)
        if p.returncode != 0:
            problems.append(f"podman rm: {p.stderr.strip()}")
        self.podman("rmi", "--all", "--force", check=False)
        for pid in pids_mentioning(self.base + "/"):       # conmon, a stuck service
            stop_pid(pid, timeout=10)
        unmount_under(self.base)
        problems += remove_cgroup_tree("/libpod_parent", keep_in=self.pre_existing)
        shutil.rmtree(self.base, ignore_errors=True)
        if not self.varlib_existed:
            shutil.rmtree(VARLIB, ignore_errors=True)
        if os.path.exists(self.base):
            problems.append(f"{self.base} not removed")
        return problems
