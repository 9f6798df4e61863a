"""Attachable targets for `memprobe ls`: containers of every engine that answers, containers
and pods seen only in cgroup paths, systemd units with memory accounting."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..cgroupfs import list_procs, norm_path
from ..engines import EngineUnavailable
from ..parse import parse_single
from ..procfs import read_file
from .paths import classify_path, container_cgroup, memory_path_of_pid, walk_cgroups
from .resolver import Resolver


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



def read_current_bytes(directory: str, version: Optional[int]) -> Optional[int]:
    name = "memory.current" if version == 2 else "memory.usage_in_bytes"
    try:
        v = parse_single(read_file(f"{directory}/{name}"))
    except OSError:
        return None
    return v if isinstance(v, int) else None
