"""The resolver: what a user types (container name or ID prefix, pod UID or namespace/name,
systemd unit, cgroup path, PID) becomes one Target (a memory cgroup and its processes); and
where a followed target is now (recheck)."""
from __future__ import annotations

import errno
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..cgroupfs import CgroupFS, list_procs, norm_path, parse_proc_cgroup
from ..child_process import isolated, which
from ..engines import Attempt, ContainerInfo, Engine, EngineUnavailable, connect_engines, wanted_engines
from ..procfs import parse_status_identity, read_file
from .paths import (UUID, ProcScan, ScannedEntity, TargetError, check_cgroup_path, classify_path,
                    container_cgroup, is_real_dir, memory_path_of_pid, scan_proc, walk_cgroups)

PROCS_REPORTED_MAX = 256     # processes listed in a Target (all are sampled by the sampler up to its own cap)
PID_MAX_DIGITS = 7           # PID_MAX_LIMIT is 4194304 (include/linux/threads.h)
UNIT_SUFFIX = re.compile(r"\.(service|scope|slice|socket|mount|swap)$")
PREFIXES = {"docker": "docker", "podman": "podman", "containerd": "containerd", "ctr": "containerd",
            "container": "container", "k8s": "pod", "pod": "pod", "unit": "unit", "cgroup": "cgroup",
            "pid": "pid"}


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


def read_processes(pids: list[int], proc: str) -> list[TargetProcess]:
    out = []
    for pid in pids:
        try:
            comm, ns = parse_status_identity(read_file(f"{proc}/{pid}/status"))
        except OSError:
            continue       # exited since it was listed
        out.append(TargetProcess(pid=pid, ns_pid=ns[-1] if ns else None, ns_pids=ns, comm=comm))
    return out



def pid_starttime(pid: int, proc: str) -> Optional[int]:
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
        st = pid_starttime(pid, self.proc)
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
            st = pid_starttime(pid, self.proc)
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

