"""What a cgroup path says by itself: checks on a path as typed, the names that systemd, the
kubelet and the container engines write (which container or pod a path belongs to), the /proc
scan that finds containers and pods by those names, and a bounded walk of a cgroup tree."""
from __future__ import annotations

import os
import re
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

from ..cgroupfs import CgroupFS, norm_path, parse_proc_cgroup
from ..procfs import read_file

WALK_MAX_DIRS = 50000        # cgroup directories visited when searching the tree by name
WALK_MAX_DEPTH = 10

HEX64 = r"[0-9a-f]{64}"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_US = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}"

# Container cgroup names. runc's systemd driver turns "<slice>:<prefix>:<id>" into the unit
# "<prefix>-<id>.scope" (runc libcontainer/cgroups/systemd, getUnitName); the prefixes are the
# engines' own: moby daemon/oci_linux.go "docker", containerd pkg/cri "cri-containerd",
# cri-o internal/config/cgmgr "crio", podman libpod "libpod". cgroupfs drivers use the bare
# ID (moby: /docker/<id>; kubelet cgroupfs: /kubepods/<qos>/pod<uid>/<id>) or, for podman,
# /libpod_parent/libpod-<id>.
CONTAINER_RULES: list[tuple[re.Pattern, Optional[str]]] = [
    (re.compile(rf"^docker-({HEX64})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-({HEX64})\.scope$"), "cri-o"),
    (re.compile(rf"^libpod-({HEX64})(?:\.scope)?$"), "podman"),
    (re.compile(rf"^({HEX64})$"), None),
]
# The engines' monitor processes (conmon) get their own cgroups named after the container;
# they are not the container (podman libpod "libpod-conmon-", cri-o "crio-conmon-").
MONITOR_RULE = re.compile(rf"^(?:libpod-conmon|crio-conmon)-{HEX64}(?:\.scope)?$")
# Pod cgroups: kubelet names them "pod" + UID (pkg/kubelet/cm/pod_container_manager_linux.go);
# with the systemd driver each path level becomes a nested slice and '-' inside a name is
# escaped to '_' (pkg/kubelet/cm/cgroup_manager_linux.go, escapeSystemdCgroupName), so
# /kubepods/burstable/pod<uid> is kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice.
POD_RULES = [
    re.compile(rf"^pod({UUID})$"),
    re.compile(rf"^kubepods(?:-(?:burstable|besteffort))?-pod({UUID_US})\.slice$"),
]
# Guaranteed pods sit directly under kubepods; the other QoS classes under their own level
# (pkg/kubelet/cm/qos_container_manager_linux.go).
QOS_NAMES = {"burstable": "burstable", "besteffort": "besteffort",
             "kubepods-burstable.slice": "burstable", "kubepods-besteffort.slice": "besteffort"}
KUBEPODS = {"kubepods", "kubepods.slice"}


class TargetError(Exception):
    """A target that cannot be resolved. kind: not_found, ambiguous, not_running,
    permission, missing (no memory cgroup hierarchy), usage. One line."""

    def __init__(self, message: str, kind: str = "not_found"):
        super().__init__(message)
        self.kind = kind


def check_cgroup_path(path: str) -> str:
    """A cgroup path as the user typed it, refused where normalising it would silently name
    another cgroup (norm_path turns "", "/x/../../.." and "/../.." into the root)."""
    if not path.strip():
        raise TargetError("empty cgroup path (the root cgroup is /)", "usage")
    if "\0" in path:
        raise TargetError(f"cgroup path {path!r} contains a NUL byte", "usage")
    if ".." in path.split("/"):
        raise TargetError(f"cgroup path {path!r} has a '..' component: give the path without it", "usage")
    return path


@dataclass
class PathInfo:
    """What a cgroup path says about itself (no engine asked)."""
    container_id: Optional[str] = None
    container_path: Optional[str] = None
    engine_hint: Optional[str] = None
    pod_uid: Optional[str] = None
    pod_path: Optional[str] = None
    qos: Optional[str] = None
    monitor: bool = False            # a conmon cgroup


def _pod_uid(name: str) -> Optional[str]:
    for rule in POD_RULES:
        m = rule.match(name)
        if m:
            return m.group(1).replace("_", "-")
    return None


def classify_path(path: str) -> PathInfo:
    """Find the pod and the (outermost) container a cgroup path belongs to, from the names
    that systemd, the kubelet and the engines write (rules above)."""
    info = PathInfo()
    parts = [p for p in norm_path(path).split("/") if p]
    in_kubepods = False
    for i, name in enumerate(parts):
        prefix = "/" + "/".join(parts[:i + 1])
        if name in KUBEPODS:
            in_kubepods = True
            continue
        if in_kubepods and info.pod_uid is None and name in QOS_NAMES:
            info.qos = QOS_NAMES[name]
            continue
        if info.pod_uid is None and info.container_id is None:
            uid = _pod_uid(name)
            if uid:
                info.pod_uid, info.pod_path = uid, prefix
                if info.qos is None:
                    info.qos = "guaranteed" if in_kubepods else None
                continue
        if MONITOR_RULE.match(name):
            info.monitor = True
            return info
        if info.container_id is None:
            for rule, engine in CONTAINER_RULES:
                m = rule.match(name)
                if m:
                    info.container_id = m.group(1)
                    info.container_path = prefix
                    if engine is None:
                        parent = parts[i - 1] if i else ""
                        engine = ("docker" if parent == "docker" else "kubernetes" if info.pod_uid else None)
                    info.engine_hint = engine
                    break
            if info.container_id:
                break
    return info


def memory_path_of_pid(pid: int, cgfs: CgroupFS, proc: str = "/proc") -> tuple[Optional[int], Optional[str]]:
    """(version, path) of the memory cgroup of one process. Raises OSError if it is gone.
    cgroup names cannot contain a newline (kernel/cgroup/cgroup.c cgroup_mkdir), so a
    container cannot forge extra lines in /proc/<pid>/cgroup."""
    return cgfs.memory_cgroup_of(parse_proc_cgroup(read_file(f"{proc}/{pid}/cgroup")))


def scan_path_of(pc: dict[str, str], cgfs: CgroupFS) -> tuple[Optional[int], Optional[str]]:
    """The path to classify for one process: its memory cgroup, else (no memory controller
    anywhere) its cgroup2 path, else the named systemd hierarchy (v1 without memory)."""
    v, p = cgfs.memory_cgroup_of(pc)
    if p is not None:
        return v, p
    if "" in pc:
        return 2, pc[""]
    return None, pc.get("name=systemd")


@dataclass
class ScannedEntity:
    """A container or pod seen in the cgroup paths of running processes."""
    kind: str                      # "container" or "pod"
    id: str
    path: str
    version: Optional[int]
    engine_hint: Optional[str] = None
    pod_uid: Optional[str] = None
    qos: Optional[str] = None
    pids: list[int] = field(default_factory=list)


@dataclass
class ProcScan:
    processes: int = 0
    unreadable: int = 0
    entities: dict[tuple[str, str], ScannedEntity] = field(default_factory=dict)


def scan_proc(proc: str, cgfs: CgroupFS) -> ProcScan:
    """Read every /proc/<pid>/cgroup once and collect the containers and pods named in the paths."""
    scan = ProcScan()
    try:
        names = os.listdir(proc)
    except OSError:
        return scan
    by_path: dict[tuple[Optional[int], str], list[int]] = {}
    for n in names:
        if not n.isdigit():
            continue
        try:
            pc = parse_proc_cgroup(read_file(f"{proc}/{n}/cgroup"))
        except OSError:
            scan.unreadable += 1      # gone since listdir, or not ours to read
            continue
        scan.processes += 1
        v, p = scan_path_of(pc, cgfs)
        if p is not None:
            by_path.setdefault((v, norm_path(p)), []).append(int(n))
    for (v, p), pids in sorted(by_path.items(), key=lambda kv: kv[0][1]):
        info = classify_path(p)
        if info.monitor:
            continue
        if info.pod_uid:
            e = scan.entities.setdefault(("pod", info.pod_uid), ScannedEntity(
                "pod", info.pod_uid, info.pod_path, v, "kubernetes", info.pod_uid, info.qos))
            e.pids.extend(pids)
        if info.container_id:
            e = scan.entities.setdefault(("container", info.container_id), ScannedEntity(
                "container", info.container_id, info.container_path, v, info.engine_hint, info.pod_uid, info.qos))
            e.pids.extend(pids)
    for e in scan.entities.values():
        e.pids.sort()
    return scan


def walk_cgroups(base: str, max_depth: int = WALK_MAX_DEPTH, max_dirs: int = WALK_MAX_DIRS) -> Iterator[str]:
    """Every cgroup directory below base (paths relative to base, "/"-rooted), breadth first,
    without following symlinks; bounded so a huge tree cannot stall us."""
    queue = deque([("/", 0)])
    seen = 0
    while queue:
        rel, depth = queue.popleft()
        d = base if rel == "/" else base + rel
        try:
            with os.scandir(d) as it:
                children = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        for c in children:
            seen += 1
            if seen > max_dirs:
                return
            p = (rel.rstrip("/") + "/" + c)
            yield p
            if depth + 1 < max_depth:
                queue.append((p, depth + 1))



def is_real_dir(d: str, base: str) -> bool:
    """d is a directory inside base (or base itself) reached from base without any symlink on
    the way (cgroupfs has no symlinks; one found under a cgroup root was planted)."""
    try:
        if not stat.S_ISDIR(os.lstat(d).st_mode):
            return False
    except OSError:
        return False
    root, real = os.path.realpath(base), os.path.realpath(d)
    inside = real == root or real.startswith(root.rstrip("/") + "/")
    return inside and real == os.path.normpath(os.path.join(root, os.path.relpath(d, base)))


def container_cgroup(path: str, cid: str) -> str:
    """The container's own cgroup from its init process's cgroup path: cut after the first
    component that carries the container ID (the init process may sit in a child, e.g. a
    systemd inside the container puts itself in /docker/<id>/init.scope)."""
    parts = [p for p in path.split("/") if p]
    own = re.compile(rf"(?:[a-z][a-z-]*-)?{re.escape(cid)}(?:\.scope)?")    # <id>, <prefix>-<id>[.scope]
    for i, name in enumerate(parts):
        if own.fullmatch(name) and not MONITOR_RULE.match(name):
            return "/" + "/".join(parts[:i + 1])
    return path
