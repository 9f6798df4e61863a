"""Targets: turn what a user types (container name or ID prefix, pod UID, systemd unit,
cgroup path, PID) into one memory cgroup plus its processes (resolver.py); what a cgroup path
says by itself (paths.py); what can be attached to (listing.py). Following a target over
time is feed/follow.py.

Order of evidence (first that answers wins; docs/attach.md):
  1. explicit forms and syntax: `/path` or `cgroup:PATH`, a PID (digits, at most 7, the
     process exists) or `pid:N`, a systemd unit (`foo.service`, `docker-<id>.scope`, ...)
     or `unit:NAME`, a pod UID or `pod:UID`;
  2. container engines (sources/engines.py): Docker, Podman, containerd, by exact ID, exact
     name, then unique ID prefix; Kubernetes pods by `namespace/name` through CRI labels;
  3. fallback: every /proc/<pid>/cgroup is scanned and the cgroup path components that
     the engines and the kubelet are known to write (docker-<id>.scope, /docker/<id>,
     cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>, kubepods pod<uid> ...)
     are matched against the ID prefix.
The cgroup always comes from the kernel (a process's /proc/<pid>/cgroup, read from the
host side) or from the cgroup filesystem; nothing inside a container's root filesystem
is opened, so no symlink there can redirect us.
"""
from __future__ import annotations

from .listing import list_targets
from .paths import TargetError, check_cgroup_path, classify_path, container_cgroup, is_real_dir
from .resolver import Resolver, Target, target_to_dict

__all__ = ["Resolver", "Target", "TargetError", "check_cgroup_path", "classify_path", "container_cgroup",
           "is_real_dir", "list_targets", "target_to_dict"]
