"""Targets: turn what a user types (container name or ID prefix, pod UID, systemd unit,
cgroup path, PID) into one memory cgroup plus its processes, and follow it over time.

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

import errno
import os
import re
import stat
import subprocess
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional

from .cgroupfs import CgroupFS, list_procs, norm_path, parse_proc_cgroup
from .child_process import isolated, which
from .engines import (Attempt, ContainerInfo, Engine, EngineUnavailable, connect_engines,
                      wanted_engines)
from .parse import parse_single
from .procfs import parse_status_identity, read_file

PROCS_REPORTED_MAX = 256     # processes listed in a Target (all are sampled by the sampler up to its own cap)
WALK_MAX_DIRS = 50000        # cgroup directories visited when searching the tree by name
WALK_MAX_DEPTH = 10
PID_MAX_DIGITS = 7           # PID_MAX_LIMIT is 4194304 (include/linux/threads.h)

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
UNIT_SUFFIX = re.compile(r"\.(service|scope|slice|socket|mount|swap)$")
PREFIXES = {"docker": "docker", "podman": "podman", "containerd": "containerd", "ctr": "containerd",
            "container": "container", "k8s": "pod", "pod": "pod", "unit": "unit", "cgroup": "cgroup",
            "pid": "pid"}


class TargetError(Exception):
    """A target that cannot be resolved. kind: not_found, ambiguous, not_running,
    permission, missing (no memory cgroup hierarchy), usage. One line."""

    def __init__(self, message: str, kind: str = "not_found"):
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------- paths
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


# --------------------------------------------------------------------------- target
@dataclass
class TargetProcess:
    pid: int                          # host PID
    ns_pid: Optional[int] = None      # PID inside the innermost PID namespace (NSpid, Linux 4.1+)
    ns_pids: Optional[list[int]] = None
    comm: Optional[str] = None


@dataclass
class Target:
    query: str
    kind: str                         # container, pod, unit, cgroup, pid
    cgroup_path: Optional[str]        # inside its hierarchy
    cgroup_version: Optional[int]
    cgroup_dir: Optional[str]         # where its files are
    engine: Optional[str] = None      # docker, podman, containerd, kubernetes, systemd, cri-o ...
    name: Optional[str] = None
    id: Optional[str] = None
    namespace: Optional[str] = None   # containerd namespace
    state: Optional[str] = None
    pids: Optional[list[int]] = None  # a fixed process set (PID targets); None: the cgroup's processes
    processes: list[TargetProcess] = field(default_factory=list)
    processes_truncated: int = 0
    cgroup_ino: Optional[int] = None  # to notice a re-created cgroup
    labels: dict = field(default_factory=dict)     # pod_uid, qos, image ...
    evidence: list[str] = field(default_factory=list)   # how it was resolved
    tried: list[str] = field(default_factory=list)      # engines asked, and what they said
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        who = {"container": f"container {self.name or self.id}", "pod": f"pod {self.name or self.id}",
               "unit": f"unit {self.name}", "cgroup": "cgroup", "pid": f"process {self.pids[0] if self.pids else '?'}"
               }.get(self.kind, self.kind)
        eng = f" ({self.engine}{' ' + self.id[:12] if self.id and self.kind == 'container' else ''})" \
            if self.engine and self.kind in ("container", "pod") else ""
        cg = f" in memory cgroup v{self.cgroup_version} {self.cgroup_path}" if self.cgroup_path else ""
        return f"{who}{eng}{cg}"


def target_to_dict(t: Target) -> dict:
    return asdict(t)


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


def read_processes(pids: list[int], proc: str) -> list[TargetProcess]:
    out = []
    for pid in pids:
        try:
            comm, ns = parse_status_identity(read_file(f"{proc}/{pid}/status"))
        except OSError:
            continue       # exited since it was listed
        out.append(TargetProcess(pid=pid, ns_pid=ns[-1] if ns else None, ns_pids=ns, comm=comm))
    return out


def read_current_bytes(directory: str, version: Optional[int]) -> Optional[int]:
    name = "memory.current" if version == 2 else "memory.usage_in_bytes"
    try:
        v = parse_single(read_file(f"{directory}/{name}"))
    except OSError:
        return None
    return v if isinstance(v, int) else None


def _pid_starttime(pid: int, proc: str) -> Optional[int]:
    """Field 22 of /proc/<pid>/stat: tells a PID from its reuse (proc(5)). comm may contain
    spaces and parentheses, so split after the last ')'."""
    try:
        data = read_file(f"{proc}/{pid}/stat")
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- resolver
class Resolver:
    """Resolves TARGET strings. Engines are connected lazily, once; `proc` and `cgroup_root`
    are parameters so captured trees can be used (engines and systemd are then not asked:
    their PIDs and paths belong to the live host)."""

    def __init__(self, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", env=None,
                 engines: Optional[list[Engine]] = None):
        self.proc = proc
        self.cgroup_root = cgroup_root
        self.env = dict(os.environ if env is None else env)
        self.cgfs = CgroupFS(cgroup_root)
        self.live = os.path.realpath(proc) == "/proc" and os.path.realpath(cgroup_root) == "/sys/fs/cgroup"
        self._engines = engines
        self.attempts: list[Attempt] = []
        self._scan: Optional[ProcScan] = None
        self._listing: Optional[list[ContainerInfo]] = None
        self._listing_errors: list[str] = []

    # -- engines ------------------------------------------------------------------
    def engines(self) -> list[Engine]:
        if self._engines is None:
            if not self.live and "MEMPROBE_ENGINES" not in self.env:
                self._engines = []
                self.attempts = [Attempt("engines", "-", False, "not asked: --proc/--cgroup-root point at a "
                                                                "captured tree, not this host")]
            elif not wanted_engines(self.env):
                self._engines = []
                self.attempts = [Attempt("engines", "-", False, f"not asked: MEMPROBE_ENGINES="
                                                                f"{self.env.get('MEMPROBE_ENGINES')}")]
            else:
                self._engines, self.attempts = connect_engines(self.env)
        return self._engines

    def tried_lines(self) -> list[str]:
        self.engines()
        return [a.line() for a in self.attempts] + self._listing_errors

    def containers(self) -> list[ContainerInfo]:
        """Every container (also stopped ones) of every engine that answers, deduplicated by ID
        (the first engine in the order of evidence keeps it)."""
        if self._listing is None:
            seen: dict[str, ContainerInfo] = {}
            for e in self.engines():
                try:
                    for c in e.containers(all=True):
                        seen.setdefault(c.id, c)
                except EngineUnavailable as x:
                    self._listing_errors.append(f"{e.name} at {e.endpoint}: {x.reason}")
            self._listing = list(seen.values())
        return self._listing

    def engine_for(self, c: ContainerInfo) -> Optional[Engine]:
        for e in self.engines():
            if e.name == c.engine and e.endpoint == c.endpoint:
                return e
        return None

    def scan(self, fresh: bool = False) -> ProcScan:
        if self._scan is None or fresh:
            self._scan = scan_proc(self.proc, self.cgfs)
        return self._scan

    # -- entry point ------------------------------------------------------------------
    def resolve(self, query: str) -> Target:
        q = query.strip()
        if not q:
            raise TargetError("empty target", "usage")
        kind, rest = None, q
        m = re.match(r"^([a-z0-9]+):(?!//)(.*)$", q)
        if m and m.group(1) in PREFIXES:
            kind, rest = PREFIXES[m.group(1)], m.group(2).strip()
            if not rest:
                raise TargetError(f"nothing after '{m.group(1)}:' in {q!r}", "usage")
        if kind == "cgroup" or (kind is None and rest.startswith("/")):
            return self._finish(self.resolve_cgroup(rest, q))
        if kind == "pid" or (kind is None and rest.isdigit() and len(rest) <= PID_MAX_DIGITS
                             and os.path.isdir(f"{self.proc}/{rest}")):
            if not rest.isdigit():
                raise TargetError(f"not a PID: {rest!r}", "usage")
            return self._finish(self.resolve_pid(int(rest), q))
        if kind == "unit" or (kind is None and UNIT_SUFFIX.search(rest)):
            return self._finish(self.resolve_unit(rest, q))
        if kind == "pod" or (kind is None and re.fullmatch(UUID, rest.lower().replace("_", "-"))):
            return self._finish(self.resolve_pod(rest, q))
        engine = kind if kind in ("docker", "podman", "containerd") else None
        return self._finish(self.resolve_container(rest, q, engine))

    def _finish(self, t: Target) -> Target:
        if t.cgroup_dir:
            try:
                t.cgroup_ino = os.stat(t.cgroup_dir, follow_symlinks=False).st_ino
            except OSError:
                t.cgroup_ino = None
        pids = t.pids
        if pids is None and t.cgroup_dir:
            try:
                pids = list_procs(t.cgroup_dir)
            except OSError as e:
                t.notes.append(f"{t.cgroup_dir}/cgroup.procs: {os.strerror(e.errno or 0)}")
                pids = []
        pids = pids or []
        t.processes_truncated = max(0, len(pids) - PROCS_REPORTED_MAX)
        t.processes = read_processes(pids[:PROCS_REPORTED_MAX], self.proc)
        if self._engines is not None or self.attempts:
            t.tried = self.tried_lines()
        if t.cgroup_version is not None and t.cgroup_version != self.cgfs.layout.memory_version:
            t.notes.append(f"cgroup v{t.cgroup_version} here has no memory controller "
                           f"(layout {self.cgfs.layout.mode}); memory files will be missing")
        return t

    def _require_memory(self) -> None:
        if self.cgfs.layout.mode == "none":
            raise TargetError(f"no cgroup hierarchy under {self.cgroup_root}", "missing")

    # -- cgroup path --------------------------------------------------------------------
    def resolve_cgroup(self, path: str, query: str) -> Target:
        check_cgroup_path(path)
        self._require_memory()
        lay = self.cgfs.layout
        full = os.path.abspath(path)
        version, rel = None, None
        # A filesystem path under one of the hierarchies picks that hierarchy; anything else
        # is a path inside the memory controller's hierarchy (what /proc/<pid>/cgroup prints).
        for v, root in ((1, lay.v1_memory_root), (2, lay.v2_root)):
            root = os.path.abspath(root) if root else None
            if root and (full == root or full.startswith(root + "/")):
                version, rel = v, norm_path(full[len(root):])
                break
        if version is None:
            version, rel = lay.memory_version or (2 if lay.v2_root else 1), norm_path(path)
        d = self.cgfs.directory(rel, version)
        if not is_real_dir(d, self.cgfs.memory_root(version)):
            raise TargetError(f"no such cgroup: {rel} (looked in {d})", "not_found")
        t = Target(query=query, kind="cgroup", cgroup_path=rel, cgroup_version=version, cgroup_dir=d,
                   evidence=[f"cgroup path {rel} in the v{version} hierarchy at {self.cgfs.memory_root(version)}"])
        self._annotate_from_path(t)
        if t.id and t.engine not in (None, "kubernetes"):
            self._name_from_engines(t)
        return t

    def _annotate_from_path(self, t: Target) -> None:
        info = classify_path(t.cgroup_path or "/")
        if info.container_id and info.container_path == t.cgroup_path:
            t.engine, t.id = info.engine_hint, info.container_id
            t.evidence.append(f"path names container {info.container_id[:12]}"
                              + (f" ({info.engine_hint})" if info.engine_hint else ""))
        elif info.pod_uid and info.pod_path == t.cgroup_path:
            t.engine, t.id = "kubernetes", info.pod_uid
            t.labels.update({"pod_uid": info.pod_uid, "qos": info.qos})
            t.evidence.append(f"path is the cgroup of Kubernetes pod {info.pod_uid} (QoS {info.qos})")
        elif info.container_id:
            t.evidence.append(f"inside container {info.container_id[:12]}'s cgroup {info.container_path}")
        if info.pod_uid and "pod_uid" not in t.labels:
            t.labels.update({"pod_uid": info.pod_uid, "qos": info.qos})

    # -- PID ----------------------------------------------------------------------------
    def resolve_pid(self, pid: int, query: str) -> Target:
        path = f"{self.proc}/{pid}/cgroup"
        try:
            pc = parse_proc_cgroup(read_file(path))
        except FileNotFoundError:
            raise TargetError(f"no process {pid}", "not_found")
        except PermissionError:
            raise TargetError(f"permission denied reading {path}", "permission")
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise TargetError(f"{path} is a symlink; refusing to follow it", "not_found")
            raise TargetError(f"cannot read {path}: {os.strerror(e.errno or 0)}", "not_found")
        version, path = self.cgfs.memory_cgroup_of(pc)
        t = Target(query=query, kind="pid", cgroup_path=None, cgroup_version=None, cgroup_dir=None, pids=[pid],
                   evidence=[f"process {pid} ({self.proc}/{pid}/cgroup)"])
        st = _pid_starttime(pid, self.proc)
        if st is not None:
            t.labels["starttime"] = st
        if path is None:
            t.notes.append(f"process {pid} has no memory cgroup (layout {self.cgfs.layout.mode}); "
                           "only its own numbers are read")
            return t
        t.cgroup_path, t.cgroup_version = norm_path(path), version
        t.cgroup_dir = self.cgfs.directory(path, version)
        self._annotate_from_path(t)
        if t.id and t.engine not in (None, "kubernetes"):
            self._name_from_engines(t)
        return t

    # -- systemd unit -------------------------------------------------------------------
    def resolve_unit(self, unit: str, query: str) -> Target:
        self._require_memory()
        version = self.cgfs.layout.memory_version or 2
        base = self.cgfs.memory_root(version)
        evidence, path = [], None
        if self.live and os.path.isdir("/run/systemd/system"):
            path = self._systemctl_cgroup(unit, evidence)
        if path is None:
            found = [p for p in walk_cgroups(base) if p.rsplit("/", 1)[-1] == unit]
            if len(found) > 1:
                raise TargetError(f"unit name {unit!r} matches {len(found)} cgroups: {', '.join(found[:10])}; "
                                  "give the cgroup path instead", "ambiguous")
            if not found:
                raise TargetError(f"no unit {unit!r} with a cgroup in the v{version} memory hierarchy at {base}"
                                  f"{' (' + evidence[0] + ')' if evidence else ''}; units appear there only "
                                  "while active and with memory accounting", "not_found")
            path = found[0]
            evidence.append(f"cgroup tree at {base}: {path}")
        d = self.cgfs.directory(path, version)
        if not os.path.isdir(d):
            raise TargetError(f"unit {unit} has cgroup {path} but {d} does not exist (no memory accounting "
                              "for it in this hierarchy?)", "not_found")
        t = Target(query=query, kind="unit", cgroup_path=norm_path(path), cgroup_version=version,
                   cgroup_dir=d, engine="systemd", name=unit, evidence=evidence)
        self._annotate_from_path(t)
        if t.id and t.engine and t.engine != "systemd":
            self._name_from_engines(t)
        return t

    def _systemctl_cgroup(self, unit: str, evidence: list[str]) -> Optional[str]:
        exe = which("systemctl", self.env)
        if not exe:
            return None
        try:
            p = subprocess.run([exe, "show", "--property=ControlGroup", "--value", "--", unit],
                               capture_output=True, timeout=10, check=False, **isolated({}))
        except (OSError, subprocess.TimeoutExpired) as e:
            evidence.append(f"systemctl show failed ({e})")
            return None
        cg = p.stdout.decode("utf-8", "replace").strip()
        if p.returncode != 0 or not cg.startswith("/"):
            evidence.append(f"systemd knows no active unit {unit}")
            return None
        evidence.append(f"systemd: {unit} ControlGroup={cg}")
        return cg

    def _name_from_engines(self, t: Target) -> None:
        """A unit or PID inside a container's cgroup: ask the engines for that container's name."""
        for c in self.containers():
            if c.id == t.id:
                t.engine = c.engine
                if c.name:
                    t.labels["container_name"] = c.name
                t.evidence.append(f"{c.engine} at {c.endpoint}: that is container {c.label()}")
                return

    # -- pods ---------------------------------------------------------------------------
    def resolve_pod(self, ref: str, query: str, name: Optional[str] = None) -> Target:
        self._require_memory()
        uid = ref.lower().replace("_", "-")
        pods = [e for (k, _), e in sorted(self.scan().entities.items()) if k == "pod"]
        exact = [e for e in pods if e.id == uid]
        match = exact or [e for e in pods if e.id.startswith(uid)]
        if not match:
            # a pod whose processes all exited still has its cgroup: look in the tree
            version = self.cgfs.layout.memory_version or 2
            for p in walk_cgroups(self.cgfs.memory_root(version)):
                info = classify_path(p)
                if info.pod_uid and info.pod_path == p and info.pod_uid.startswith(uid):
                    match.append(ScannedEntity("pod", info.pod_uid, p, version, "kubernetes", info.pod_uid, info.qos))
        if len(match) > 1:
            raise TargetError(f"pod UID prefix {ref!r} is ambiguous: "
                              + ", ".join(f"{e.id} ({e.path})" for e in match[:10]), "ambiguous")
        if not match:
            raise TargetError(f"no Kubernetes pod with UID {ref!r} in the cgroup tree (kubepods)", "not_found")
        e = match[0]
        d = self.cgfs.directory(e.path, e.version)
        t = Target(query=query, kind="pod", cgroup_path=e.path, cgroup_version=e.version, cgroup_dir=d,
                   engine="kubernetes", id=e.id, name=name,
                   labels={"pod_uid": e.id, "qos": e.qos},
                   evidence=[f"kubepods cgroup path {e.path} (pod UID {e.id}, QoS {e.qos})"])
        return t

    # -- containers ---------------------------------------------------------------------
    def resolve_container(self, ref: str, query: str, engine: Optional[str]) -> Target:
        containers = [c for c in self.containers() if engine in (None, c.engine)]
        exact = _dedupe([c for c in containers if c.id == ref or c.name == ref])
        if len(exact) > 1:
            raise TargetError(f"{ref!r} names several containers: "
                              + ", ".join(c.label() for c in exact), "ambiguous")
        match = exact or _dedupe([c for c in containers if c.id.startswith(ref)])
        if len(match) > 1:
            raise TargetError(f"ID prefix {ref!r} is ambiguous: "
                              + ", ".join(f"{c.id[:16]} {c.name or '-'} ({c.engine}, {c.state})"
                                          for c in match[:20])
                              + (f" and {len(match) - 20} more" if len(match) > 20 else ""), "ambiguous")
        if match:
            return self._from_engine(match[0], query)
        # Kubernetes pods by namespace/name, through the CRI labels containerd keeps
        if engine in (None, "containerd"):
            pods = {}
            for c in containers:
                lb = c.labels
                if lb.get("io.kubernetes.pod.uid") and ref in (lb.get("io.kubernetes.pod.name"),
                                                                f"{lb.get('io.kubernetes.pod.namespace')}/"
                                                                f"{lb.get('io.kubernetes.pod.name')}"):
                    pods[lb["io.kubernetes.pod.uid"]] = f"{lb.get('io.kubernetes.pod.namespace')}/" \
                                                        f"{lb.get('io.kubernetes.pod.name')}"
            if len(pods) > 1:
                raise TargetError(f"{ref!r} names several pods: " + ", ".join(f"{n} ({u})" for u, n in pods.items()),
                                  "ambiguous")
            if pods:
                uid, name = next(iter(pods.items()))
                t = self.resolve_pod(uid, query, name=name)
                t.evidence.insert(0, f"containerd CRI labels: pod {name} has UID {uid}")
                return t
        if engine is None or not self._engines:
            scanned = self._scan_match(ref)
            if scanned is not None:
                return scanned
        raise self._not_found(ref, engine)

    def _scan_match(self, ref: str) -> Optional[Target]:
        if not re.fullmatch(r"[0-9a-f]{1,64}", ref):
            return None
        scan = self.scan()
        match = [e for (k, _), e in sorted(scan.entities.items()) if k == "container" and e.id.startswith(ref)]
        if len(match) > 1:
            raise TargetError(f"ID prefix {ref!r} is ambiguous among cgroup paths: "
                              + ", ".join(f"{e.id[:16]} ({e.path})" for e in match[:20]), "ambiguous")
        if not match:
            return None
        e = match[0]
        if e.version is None:
            raise TargetError(f"container {e.id[:12]} found in cgroup path {e.path}, but this host has no memory "
                              f"cgroup hierarchy under {self.cgroup_root}", "missing")
        t = Target(query=ref, kind="container", cgroup_path=e.path, cgroup_version=e.version,
                   cgroup_dir=self.cgfs.directory(e.path, e.version), engine=e.engine_hint, id=e.id,
                   state="running",
                   labels={k: v for k, v in (("pod_uid", e.pod_uid), ("qos", e.qos)) if v},
                   evidence=[f"/proc scan ({scan.processes} processes): container ID {e.id[:12]} in cgroup "
                             f"path {e.path}" + (f", named by {e.engine_hint}'s convention" if e.engine_hint else "")])
        if self._engines:
            t.notes.append("found in cgroup paths only: no engine that answered knows this container")
        else:
            t.notes.append("no container engine answered: name, state and exit status are unknown")
        return t

    def _from_engine(self, c: ContainerInfo, query: str) -> Target:
        eng = self.engine_for(c)
        if c.pid is None or not c.running:
            if eng is not None:
                try:
                    c = eng.inspect(c)
                except (KeyError, EngineUnavailable):
                    pass
        if not c.running or not c.pid:
            raise TargetError(f"container {c.label()} is not running: {describe_exit(c)}", "not_running")
        try:
            version, path = memory_path_of_pid(c.pid, self.cgfs, self.proc)
        except OSError as e:
            raise TargetError(f"container {c.label()}: its process {c.pid} is gone ({os.strerror(e.errno or 0)}); "
                              "it probably just exited", "not_running")
        if path is None:
            raise TargetError(f"container {c.label()}: process {c.pid} has no memory cgroup "
                              f"(layout {self.cgfs.layout.mode})", "missing")
        path = container_cgroup(norm_path(path), c.id)
        t = Target(query=query, kind="container", cgroup_path=path, cgroup_version=version,
                   cgroup_dir=self.cgfs.directory(path, version), engine=c.engine, name=c.name, id=c.id,
                   namespace=c.namespace, state=c.state,
                   labels={k: v for k, v in (("image", c.image), ("endpoint", c.endpoint)) if v},
                   evidence=[f"{c.engine} at {c.endpoint}: {c.label()}, init process {c.pid}",
                             f"kernel: {self.proc}/{c.pid}/cgroup says memory cgroup v{version} {path}"])
        info = classify_path(path)
        if info.pod_uid:
            t.labels.update({"pod_uid": info.pod_uid, "qos": info.qos})
        return t

    def _not_found(self, ref: str, engine: Optional[str]) -> TargetError:
        running = [c for c in self.containers() if c.state == "running"]
        tried = self.tried_lines()
        scan = self.scan() if (engine is None or not self._engines) else None
        if scan is not None:
            others = [e for (k, _), e in sorted(scan.entities.items()) if k == "container"
                      and not any(c.id == e.id for c in running)]
            tried.append(f"/proc scan of {scan.processes} processes: no container ID starting with {ref!r}"
                         + (f" ({len(others)} other container cgroups seen)" if others else ""))
        names = [c.label() for c in running]
        seen = (f"running containers: {', '.join(names[:20])}" + (f" and {len(names) - 20} more" if len(names) > 20
                                                                  else "")) if names else "no running containers seen"
        what = f"{engine} container" if engine else "container, pod, unit or process"
        # an engine that refused us may be the one that knows the target: say so with its own code
        kind = "permission" if any(a.permission for a in self.attempts) else "not_found"
        return TargetError(f"no {what} matches {ref!r}; {seen}; tried: {'; '.join(tried)}", kind)

    # -- following ----------------------------------------------------------------------
    def recheck(self, t: Target) -> tuple[str, Optional[Target], str, dict]:
        """Where is the target now? (status, new_target, message, facts) with status
        "running" (new_target is its current cgroup), "waiting" (restarting: ask again later)
        or "ended" (it will not come back on its own: exited, removed)."""
        if t.kind == "pid":
            pid = t.pids[0]
            st = _pid_starttime(pid, self.proc)
            if st is None or st != t.labels.get("starttime", st):
                return "ended", None, f"process {pid} exited", {}
            return "running", t, "", {}
        unanswered = ""
        if t.kind == "container" and t.labels.get("endpoint"):      # resolved through an engine: ask it
            eng = next((e for e in self.engines() if e.name == t.engine and e.endpoint == t.labels["endpoint"]),
                       None)
            c = None
            if eng is not None:
                try:
                    c = eng.inspect(ContainerInfo(engine=t.engine, id=t.id, namespace=t.namespace))
                except KeyError:
                    return "ended", None, f"container {t.name or t.id[:12]} was removed", {"removed": True}
                except EngineUnavailable as e:
                    # the engine went away (restarted daemon?): judge by the cgroup alone, below
                    unanswered = f" ({t.engine} did not answer: {e.reason})"
            if c is not None:
                facts = {"state": c.state, "exit_code": c.exit_code, "oom_killed": c.oom_killed,
                         "finished_at": c.finished_at}
                if c.running:
                    try:
                        nt = self._from_engine(c, t.query)
                    except TargetError as e:
                        return "waiting", None, str(e), facts
                    return "running", self._finish(nt), "", facts
                if c.state == "restarting":
                    return "waiting", None, f"container {c.label()} is restarting", facts
                return "ended", None, f"container {c.label()} {describe_exit(c)}", facts
        # no engine to ask: the cgroup itself (scan again for containers found by path)
        if t.kind == "container" and t.id:
            e = self.scan(fresh=True).entities.get(("container", t.id))
            if e is not None and os.path.isdir(self.cgfs.directory(e.path, e.version)):
                nt = Target(**{**asdict(t), "processes": []})
                nt.cgroup_path, nt.cgroup_version = e.path, e.version
                nt.cgroup_dir = self.cgfs.directory(e.path, e.version)
                return "running", self._finish(nt), "", {}
        if t.cgroup_dir and os.path.isdir(t.cgroup_dir):
            nt = Target(**{**asdict(t), "processes": []})
            return "running", self._finish(nt), "", {}
        return "ended", None, f"cgroup {t.cgroup_path} was removed{unanswered}", {}


def _dedupe(cs: list[ContainerInfo]) -> list[ContainerInfo]:
    seen, out = set(), []
    for c in cs:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out


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


def describe_exit(c: ContainerInfo) -> str:
    if c.state == "running":
        return "is running"
    bits = [f"{c.state or 'state unknown'}"]
    if c.exit_code is not None and c.state in ("exited", "dead"):
        bits.append(f"exit code {c.exit_code}")
    if c.oom_killed:
        bits.append("OOM killed (engine's flag)")
    if c.finished_at and not str(c.finished_at).startswith("0001-"):
        bits.append(f"at {c.finished_at}")
    return ", ".join(bits)


# --------------------------------------------------------------------------- listing
@dataclass
class ListedTarget:
    kind: str                       # container, pod, unit
    engine: Optional[str]
    name: Optional[str]
    id: Optional[str]
    state: Optional[str]
    cgroup_path: Optional[str]
    cgroup_version: Optional[int]
    memory_current_bytes: Optional[int] = None
    processes: Optional[int] = None
    namespace: Optional[str] = None
    note: Optional[str] = None
    source: str = "engine"          # "engine" (an engine listed it) or "cgroup-path" (only seen in /proc scan)


def list_targets(r: Resolver, all: bool = False, units: bool = True) -> list[ListedTarget]:
    """Attachable targets: containers of every engine that answers, containers and pods seen
    only in cgroup paths, systemd units with memory accounting. Cheap: one engine listing
    each, one /proc scan, one bounded walk of the memory hierarchy."""
    out: list[ListedTarget] = []
    scan = r.scan()
    by_id = {e.id: e for (k, _), e in scan.entities.items() if k == "container"}
    claimed = set()
    for c in r.containers():
        if not all and c.state not in ("running", "paused", "restarting"):
            continue
        claimed.add(c.id)
        e = by_id.get(c.id)
        path = version = None
        if e is not None:
            path, version = e.path, e.version
        elif c.running or c.pid:
            eng = r.engine_for(c)
            try:
                cc = eng.inspect(c) if (eng and not c.pid) else c
                if cc.pid:
                    version, p = memory_path_of_pid(cc.pid, r.cgfs, r.proc)
                    path = container_cgroup(norm_path(p), c.id) if p else None
            except (KeyError, EngineUnavailable, OSError):
                pass
        out.append(_listed("container", c.engine, c.name, c.id, c.state, path, version, r, c.namespace))
    for (k, _), e in sorted(scan.entities.items()):
        if k == "container" and e.id not in claimed:
            lt = _listed("container", e.engine_hint, None, e.id, "running", e.path, e.version, r,
                         note=f"pod {e.pod_uid}" if e.pod_uid else None)
            lt.source = "cgroup-path"
            out.append(lt)
        elif k == "pod":
            lt = _listed("pod", "kubernetes", None, e.id, "running", e.path, e.version, r,
                         note=f"QoS {e.qos}" if e.qos else None)
            lt.source = "cgroup-path"
            out.append(lt)
    if units and r.cgfs.layout.memory_version is not None:
        v = r.cgfs.layout.memory_version
        for p in walk_cgroups(r.cgfs.memory_root(v)):
            name = p.rsplit("/", 1)[-1]
            if not re.search(r"\.(service|scope)$", name):
                continue
            info = classify_path(p)
            if info.container_id or info.monitor or info.pod_uid:
                continue
            lt = _listed("unit", "systemd", name, None, "active", p, v, r)
            lt.source = "cgroup-path"
            out.append(lt)
    return out


def _listed(kind, engine, name, id_, state, path, version, r: Resolver, namespace=None, note=None) -> ListedTarget:
    lt = ListedTarget(kind, engine, name, id_, state, path, version, namespace=namespace, note=note)
    if path is not None and version is not None:
        d = r.cgfs.directory(path, version)
        lt.memory_current_bytes = read_current_bytes(d, version)
        try:
            lt.processes = len(list_procs(d))
        except OSError:
            lt.processes = None
    return lt


# --------------------------------------------------------------------------- following
@dataclass
class FollowEvent:
    kind: str                 # "cgroup-changed", "waiting", "ended", "count"
    message: str
    wall_ns: int = 0
    facts: dict = field(default_factory=dict)


class Follower:
    """Samples one target per tick and keeps hold of it: a cgroup that is re-created
    (container restart) is reopened with a note, one that goes away ends the follow with a
    final event. The loop (follow_loop) is separate so a TUI can drive tick() itself."""

    def __init__(self, resolver: Resolver, target: Target, exit_grace_s: float = 2.0,
                 sampler_factory: Optional[Callable] = None):
        from .sampler import open_sampler
        self.r = resolver
        self.target = target
        self.exit_grace_s = exit_grace_s
        self._factory = sampler_factory or open_sampler
        self.sampler = None
        self.samples = 0
        self.last_sample = None
        self._lost_since: Optional[float] = None
        self._waiting_said = ""
        self._open()

    def _open(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        t = self.target
        self.sampler = self._factory(proc=self.r.proc, cgroup_root=self.r.cgroup_root, cgroup=t.cgroup_path,
                                     version=t.cgroup_version, pids=t.pids)

    def _still_there(self) -> bool:
        t = self.target
        if t.kind == "pid":
            st = _pid_starttime(t.pids[0], self.r.proc)
            return st is not None and st == t.labels.get("starttime", st)
        if not t.cgroup_dir:
            return False
        try:
            return os.stat(t.cgroup_dir, follow_symlinks=False).st_ino == t.cgroup_ino
        except OSError:
            return False

    def tick(self) -> tuple[Optional[object], list[FollowEvent]]:
        """One step: (sample or None, events). An event of kind "ended" is the last one."""
        events: list[FollowEvent] = []
        if self._still_there():
            self.sampler.refresh_pids()
            s = self.sampler.sample()
            if not (self.target.cgroup_path and s.cgroup is None and self.sampler.cgroup_gone):
                self._lost_since = None
                self.samples += 1
                self.last_sample = s
                return s, events
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = now
        status, nt, msg, facts = self.r.recheck(self.target)
        if status == "running" and nt is not None and self.target.kind != "pid":
            old = self.target
            if nt.cgroup_path != old.cgroup_path or nt.cgroup_ino != old.cgroup_ino:
                who = old.describe().split(" in memory cgroup")[0]
                if nt.cgroup_path == old.cgroup_path:
                    msg = (f"{who} restarted: its cgroup {nt.cgroup_path} was re-created (inode {old.cgroup_ino} "
                           f"-> {nt.cgroup_ino}); following the new one")
                else:
                    msg = f"{who} moved to cgroup {nt.cgroup_path} (was {old.cgroup_path}); following the new one"
                events.append(FollowEvent("cgroup-changed", msg, time.time_ns(),
                                          {"old_cgroup": old.cgroup_path, "new_cgroup": nt.cgroup_path,
                                           "old_ino": old.cgroup_ino, "new_ino": nt.cgroup_ino,
                                           "processes": [asdict(p) for p in nt.processes], **facts}))
                self.target = nt
                self._open()
            self._lost_since = None
            # sample the (possibly new) cgroup now; if it vanished again, the next tick asks again
            if self._still_there():
                self.sampler.refresh_pids()
                s = self.sampler.sample()
                if s.cgroup is not None or not self.target.cgroup_path:
                    self.samples += 1
                    self.last_sample = s
                    return s, events
            return None, events
        grace = 0.0 if self.target.kind == "pid" else self.exit_grace_s
        if status == "ended" and now - self._lost_since < grace:
            status, msg = "waiting", f"{msg}; waiting {self.exit_grace_s:g} s for a restart"
        if status == "ended":
            facts = dict(facts)
            if self.last_sample is not None and self.last_sample.cgroup is not None:
                ev = self.last_sample.cgroup.events or {}
                if ev.get("oom_kill") is not None:
                    facts["last_oom_kill_events"] = ev["oom_kill"]
            if facts.get("last_oom_kill_events"):
                msg += f"; memory.events oom_kill was {facts['last_oom_kill_events']} at the last sample"
            events.append(FollowEvent("ended", msg, time.time_ns(), facts))
            return None, events
        if msg and msg != self._waiting_said:
            self._waiting_said = msg
            events.append(FollowEvent("waiting", msg, time.time_ns(), facts))
        return None, events

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


def follow_loop(follower: Follower, interval_s: float, on_sample: Callable, on_event: Callable,
                count: Optional[int] = None, sleep: Callable[[float], None] = time.sleep) -> FollowEvent:
    """Tick every interval until the target ends or `count` samples were taken; returns the
    final event. Ticks keep a fixed schedule (a slow tick shortens the next wait, never
    accumulates). KeyboardInterrupt (Ctrl-C, SIGTERM in the CLI) propagates to the caller."""
    nxt = time.monotonic()
    while True:
        s, events = follower.tick()
        for e in events:
            if e.kind == "ended":
                on_event(e)
                return e
            on_event(e)
        if s is not None:
            on_sample(s)
            if count is not None and follower.samples >= count:
                return FollowEvent("count", f"stopped after --count {count}", time.time_ns())
        nxt += interval_s
        delay = nxt - time.monotonic()
        if delay < 0:
            nxt = time.monotonic()
            delay = 0
        # while the target is away, look again sooner than the interval (restarts are quick)
        if s is None:
            delay = min(delay, 0.2)
            nxt = time.monotonic() + delay
        sleep(delay)


__all__ = ["Target", "TargetProcess", "TargetError", "Resolver", "Follower", "FollowEvent", "follow_loop",
           "list_targets", "ListedTarget", "classify_path", "scan_proc", "target_to_dict"]
