"""Container engines: ask Docker, Podman and containerd which containers exist and which
host PID runs each one.

Every engine answers the same question with `ContainerInfo` records; an engine that cannot
be reached raises `EngineUnavailable` with a one-line reason (socket missing, permission
denied, binary not installed, ...), which targets.py turns into "what was tried".

  - Docker: the Engine API on its socket (DOCKER_HOST, else unix:///var/run/docker.sock),
    through the `docker` SDK (the maintained client; no hand-written HTTP).
  - Podman: its Docker-compatible API socket (CONTAINER_HOST, /run/podman/podman.sock and,
    for root, every rootless user's /run/user/<uid>/podman/podman.sock), else the
    `podman` command with an argument list (never a shell).
  - containerd: the `ctr` command against CONTAINERD_ADDRESS or /run/containerd/containerd.sock,
    every namespace (Kubernetes' CRI uses k8s.io; Docker's own containerd uses moby).

The engines tell names, IDs, state and the init PID; the cgroup always comes from the
kernel (/proc/<pid>/cgroup, read from the host side), never from engine configuration.
MEMPROBE_ENGINES=docker,podman,containerd (or "none") picks which engines are asked.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar
from urllib.parse import urlparse

from .background import Background
from .child_process import isolated, which

ENGINE_ORDER = ("docker", "podman", "containerd")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_PODMAN_SOCKET = "/run/podman/podman.sock"
DEFAULT_CONTAINERD = "/run/containerd/containerd.sock"
PODMAN_DEFAULT_STORAGE = "/var/lib/containers/storage"
API_TIMEOUT_S = 5         # per socket operation (the docker SDK's timeout)
CLI_TIMEOUT_S = 15        # per command
ANSWER_DEADLINE_S = 10    # per request, in all: however an engine trickles, the caller waits no longer
K8S_INFO_MAX = 64     # containerd k8s.io: label look-ups (one ctr call each) per listing, running tasks only


@dataclass
class ContainerInfo:
    engine: str                       # "docker", "podman", "containerd"
    id: str
    name: Optional[str] = None
    state: Optional[str] = None       # running, exited, restarting, paused, created, ...
    pid: Optional[int] = None         # host PID of the container's init process; None if not running
    endpoint: Optional[str] = None    # where the engine was asked
    namespace: Optional[str] = None   # containerd namespace
    image: Optional[str] = None
    exit_code: Optional[int] = None
    oom_killed: Optional[bool] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    labels: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused") and bool(self.pid)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def label(self) -> str:
        """'name (engine 0123456789ab)' for messages."""
        who = f"{self.engine} {self.short_id}" + (f" in {self.namespace}" if self.namespace else "")
        return f"{self.name} ({who})" if self.name and self.name != self.id else f"{self.engine} {self.id}"


class EngineUnavailable(Exception):
    """The engine could not be asked. `permission` is True when access was refused."""

    def __init__(self, engine: str, reason: str, permission: bool = False):
        super().__init__(f"{engine}: {reason}")
        self.engine = engine
        self.reason = reason
        self.permission = permission


def wanted_engines(env=None) -> tuple[str, ...]:
    env = os.environ if env is None else env
    v = env.get("MEMPROBE_ENGINES")
    if v is None:
        return ENGINE_ORDER
    names = [x.strip() for x in v.split(",") if x.strip() and x.strip() != "none"]
    return tuple(n for n in ENGINE_ORDER if n in names)


def _check_unix_socket(engine: str, path: str) -> None:
    """Say precisely why a unix socket cannot be used, before a client library turns it into
    a generic connection error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EngineUnavailable(engine, f"socket {path} missing")
    except PermissionError:
        raise EngineUnavailable(engine, f"permission denied looking up {path}", permission=True)
    if not stat.S_ISSOCK(st.st_mode):
        raise EngineUnavailable(engine, f"{path} is not a socket")
    if not os.access(path, os.R_OK | os.W_OK):
        raise EngineUnavailable(engine, f"permission denied on socket {path} (owner uid {st.st_uid} gid "
                                        f"{st.st_gid}, mode {stat.S_IMODE(st.st_mode):o})", permission=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(API_TIMEOUT_S)
    try:
        s.connect(path)
    except PermissionError:
        raise EngineUnavailable(engine, f"permission denied on socket {path}", permission=True)
    except (ConnectionRefusedError, FileNotFoundError):
        raise EngineUnavailable(engine, f"nothing listens on {path} (stale socket)")
    except OSError as e:
        raise EngineUnavailable(engine, f"cannot connect to {path}: {e.strerror or e}")
    finally:
        s.close()


def _socket_path(url: str) -> Optional[str]:
    u = urlparse(url)
    if u.scheme == "unix" or (u.scheme == "" and url.startswith("/")):
        return u.path or url
    return None


T = TypeVar("T")
_late: dict[str, Background] = {}    # endpoint -> a request still running past its deadline


class Engine:
    name = "engine"
    endpoint = ""
    deadline_s: float = ANSWER_DEADLINE_S

    def containers(self, all: bool = False) -> list[ContainerInfo]:
        return self._bounded("listing containers", lambda: self._containers(all))

    def inspect(self, c: ContainerInfo) -> ContainerInfo:
        """Fresh state of one container (by its full ID). Raises KeyError when it is gone."""
        return self._bounded(f"inspect {c.short_id}", lambda: self._inspect(c))

    def logs(self, c: ContainerInfo, tail: int) -> str:
        """The container's own log, its last `tail` lines, each after the engine's RFC 3339
        timestamp (sources/engine_log.py reads it); bounded by deadline_s like every request."""
        return self._bounded(f"logs of {c.short_id}", lambda: self._logs(c, tail))

    def _logs(self, c: ContainerInfo, tail: int) -> str:
        raise EngineUnavailable(self.name, "container logs are not read through this engine")

    def _containers(self, all: bool) -> list[ContainerInfo]:
        raise NotImplementedError

    def _inspect(self, c: ContainerInfo) -> ContainerInfo:
        raise NotImplementedError

    def _bounded(self, what: str, fn: Callable[[], T]) -> T:
        """fn() in a thread, waited for at most deadline_s. The SDK's timeout is per socket read,
        so an engine socket that answers a byte a second (a rootless user's podman.sock is that
        user's to serve) would hold the caller, and a sampling loop with it, for ever. While a
        request to this endpoint runs past its deadline, new ones fail at once: one stuck
        thread per endpoint at most."""
        late = _late.get(self.endpoint)
        if late is not None and not late.done():
            raise EngineUnavailable(self.name, f"{self.endpoint} has not finished answering a request made "
                                               f"{late.age_s():.0f} s ago")
        call = Background(fn, f"memprobe-{self.name}")
        if not call.wait(self.deadline_s):
            _late[self.endpoint] = call
            raise EngineUnavailable(self.name, f"{what}: no complete answer from {self.endpoint} in "
                                               f"{self.deadline_s:g} s")
        return call.result()

    def close(self) -> None:
        pass


def _docker_state(d: dict, engine: str, endpoint: str) -> ContainerInfo:
    """ContainerInfo from a Docker-API inspect document (Docker and Podman's compat API)."""
    st = d.get("State") or {}
    cfg = d.get("Config") or {}
    pid = st.get("Pid") or None
    return ContainerInfo(engine=engine, id=d["Id"], name=(d.get("Name") or "").lstrip("/") or None,
                         state=st.get("Status"), pid=pid, endpoint=endpoint, image=cfg.get("Image"),
                         exit_code=st.get("ExitCode"), oom_killed=st.get("OOMKilled"),
                         started_at=st.get("StartedAt"), finished_at=st.get("FinishedAt"),
                         labels=dict(cfg.get("Labels") or {}))


class DockerAPIEngine(Engine):
    """The Docker Engine API (also Podman's compatible API) through the docker SDK."""

    def __init__(self, base_url: str, name: str = "docker", tls=None, deadline_s: float = ANSWER_DEADLINE_S):
        self.name = name
        self.endpoint = base_url
        self.deadline_s = deadline_s
        path = _socket_path(base_url)
        if path is not None:
            _check_unix_socket(name, path)
        try:
            import docker
            from docker.errors import DockerException
        except ImportError as e:
            raise EngineUnavailable(name, f"python package 'docker' not installed ({e})")

        def connect():
            try:
                # version=None: the SDK asks the daemon for its API version (works for old daemons)
                api = docker.APIClient(base_url=base_url, version=None, timeout=API_TIMEOUT_S, tls=tls)
                return api, api.version()
            except DockerException as e:
                raise EngineUnavailable(name, f"{base_url} did not answer: {_one_line(e)}",
                                        permission="ermission denied" in str(e))
            except Exception as e:  # noqa: BLE001 - requests/urllib3 errors are many types
                raise EngineUnavailable(name, f"{base_url} did not answer: {_one_line(e)}")
        self.api, ver = self._bounded("asking its version", connect)
        # A DOCKER_HOST can point at Podman's compatible socket: say which engine answered.
        comps = [c.get("Name", "") for c in ver.get("Components") or []]
        if any("Podman" in c for c in comps):
            self.name = "podman"
        self.version = ver.get("Version")

    def _containers(self, all: bool) -> list[ContainerInfo]:
        from docker.errors import DockerException
        try:
            rows = self.api.containers(all=all)
        except DockerException as e:
            raise EngineUnavailable(self.name, f"listing containers failed: {_one_line(e)}")
        except Exception as e:  # noqa: BLE001 - requests' connection errors are not DockerException
            raise EngineUnavailable(self.name, f"{self.endpoint} stopped answering: {_one_line(e)}")
        out = []
        for r in rows:
            names = [n.lstrip("/") for n in r.get("Names") or []]
            out.append(ContainerInfo(engine=self.name, id=r["Id"], name=names[0] if names else None,
                                     state=r.get("State"), endpoint=self.endpoint, image=r.get("Image"),
                                     labels=dict(r.get("Labels") or {})))
        return out

    def _inspect(self, c: ContainerInfo) -> ContainerInfo:
        from docker.errors import DockerException, NotFound
        try:
            return _docker_state(self.api.inspect_container(c.id), self.name, self.endpoint)
        except NotFound:
            raise KeyError(c.id)
        except DockerException as e:
            raise EngineUnavailable(self.name, f"inspect {c.short_id} failed: {_one_line(e)}")
        except Exception as e:  # noqa: BLE001 - requests' connection errors are not DockerException
            raise EngineUnavailable(self.name, f"{self.endpoint} stopped answering: {_one_line(e)}")

    def _logs(self, c: ContainerInfo, tail: int) -> str:
        from docker.errors import DockerException
        try:
            raw = self.api.logs(c.id, stdout=True, stderr=True, timestamps=True, tail=tail)
        except DockerException as e:
            raise EngineUnavailable(self.name, f"logs of {c.short_id} failed: {_one_line(e)}")
        except Exception as e:  # noqa: BLE001 - requests' connection errors are not DockerException
            raise EngineUnavailable(self.name, f"{self.endpoint} stopped answering: {_one_line(e)}")
        return raw.decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.api.close()
        except Exception:  # noqa: BLE001
            pass


def _run(argv: list[str], engine: str, env=None) -> str:
    """Run an engine's command line (argument list, no shell) and return stdout. The command
    keeps the caller's environment: podman's configuration lives there (CONTAINERS_CONF,
    CONTAINERS_STORAGE_CONF, XDG_RUNTIME_DIR)."""
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CLI_TIMEOUT_S, check=False,
                           **isolated(os.environ if env is None else env))
    except FileNotFoundError:
        raise EngineUnavailable(engine, f"{argv[0]} not found")
    except PermissionError:
        raise EngineUnavailable(engine, f"permission denied running {argv[0]}", permission=True)
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(engine, f"{' '.join(argv[:3])} did not answer in {CLI_TIMEOUT_S} s")
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        msg = err[-1] if err else f"exit status {p.returncode}"
        raise EngineUnavailable(engine, f"{' '.join(argv[:4])}: {msg}",
                                permission="ermission denied" in msg)
    return p.stdout.decode("utf-8", "replace")


class PodmanCLIEngine(Engine):
    """`podman ps` / `podman inspect` when no API socket answers."""

    name = "podman"

    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.env = dict(env)
        self.bin = which("podman", env)
        if not self.bin:
            raise EngineUnavailable("podman", "no API socket answered and the podman command is not installed")
        # `podman ps` as root on a host that never ran podman creates /var/lib/containers/storage,
        # /run/containers/storage and /run/libpod (measured here, Podman 4.3); a diagnostic
        # tool should not, so the command is only asked where storage exists.
        if not env.get("CONTAINERS_STORAGE_CONF") and not os.path.isdir(PODMAN_DEFAULT_STORAGE) \
                and os.geteuid() == 0:
            raise EngineUnavailable("podman", f"no API socket answered and no podman storage at "
                                              f"{PODMAN_DEFAULT_STORAGE} (never used as root)")
        self.endpoint = f"{self.bin} (command line)"
        self._bounded("podman version", lambda: _run([self.bin, "version", "--format", "{{.Client.Version}}"],
                                                     "podman", self.env))

    def _containers(self, all: bool) -> list[ContainerInfo]:
        argv = [self.bin, "ps", "--format", "json", "--no-trunc"] + (["--all"] if all else [])
        try:
            rows = json.loads(_run(argv, "podman", self.env) or "[]")
        except ValueError as e:
            raise EngineUnavailable("podman", f"podman ps printed something that is not JSON ({e})")
        out = []
        for r in rows or []:
            names = r.get("Names") or []
            state = r.get("State")
            out.append(ContainerInfo(engine="podman", id=r["Id"], name=names[0] if names else None,
                                     state=state, pid=r.get("Pid") or None, endpoint=self.endpoint,
                                     image=r.get("Image"), labels=dict(r.get("Labels") or {}),
                                     exit_code=r.get("ExitCode") if r.get("Exited") else None))
        return out

    def _logs(self, c: ContainerInfo, tail: int) -> str:
        # the container's stdout only: _run keeps podman's stderr for its own errors
        return _run([self.bin, "logs", "--timestamps", "--tail", str(tail), "--", c.id], "podman", self.env)

    def _inspect(self, c: ContainerInfo) -> ContainerInfo:
        argv = [self.bin, "inspect", "--type", "container", "--format", "json", "--", c.id]
        try:
            out = _run(argv, "podman", self.env)
        except EngineUnavailable as e:
            if "no such" in e.reason.lower():
                raise KeyError(c.id)
            raise
        try:
            docs = json.loads(out)
        except ValueError as e:
            raise EngineUnavailable("podman", f"podman inspect printed something that is not JSON ({e})")
        if not docs:
            raise KeyError(c.id)
        d = docs[0]
        info = _docker_state({"Id": d["Id"], "Name": d.get("Name"), "State": d.get("State"),
                              "Config": d.get("Config")}, "podman", self.endpoint)
        # podman inspect's State.Status is "running"/"exited"; OOMKilled exists but Podman 4.3
        # leaves it false after a memcg OOM kill (measured, docs/facts.md#f-engines)
        return info


class ContainerdEngine(Engine):
    """containerd through `ctr`, every namespace. ctr has no ID-prefix matching and no
    JSON listing, so containers and tasks are listed and matched here."""

    name = "containerd"

    def __init__(self, address: Optional[str] = None, env=None, skip_namespaces=()):
        env = os.environ if env is None else env
        self.env = dict(env)
        self.address = address or env.get("CONTAINERD_ADDRESS") or DEFAULT_CONTAINERD
        self.endpoint = self.address
        self.skip_namespaces = set(skip_namespaces)
        _check_unix_socket("containerd", self.address)
        self.bin = which("ctr", env)
        if not self.bin:
            raise EngineUnavailable("containerd", f"socket {self.address} is there but the ctr command is "
                                                  "not installed")
        listed = self._bounded("ctr namespaces ls", lambda: _run(self._argv("namespaces", "ls", "-q"), "containerd",
                                                                 self.env))
        self.namespaces = [n for n in listed.split() if n not in self.skip_namespaces]

    def _argv(self, *args: str, namespace: Optional[str] = None) -> list[str]:
        a = [self.bin, "--address", self.address]
        if namespace:
            a += ["--namespace", namespace]
        return a + list(args)

    def _tasks(self, ns: str) -> dict[str, tuple[Optional[int], str]]:
        """ctr tasks ls: 'TASK PID STATUS' columns (containerd IDs have no spaces)."""
        out = {}
        for line in _run(self._argv("tasks", "ls", namespace=ns), "containerd", self.env).splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                try:
                    pid = int(parts[1]) or None
                except ValueError:
                    pid = None
                out[parts[0]] = (pid, parts[2].lower())
        return out

    def _info(self, ns: str, cid: str) -> dict:
        try:
            return json.loads(_run(self._argv("containers", "info", "--", cid, namespace=ns), "containerd",
                                   self.env))
        except (EngineUnavailable, ValueError):
            return {}

    def _container(self, ns: str, cid: str, task, info: Optional[dict]) -> ContainerInfo:
        pid, status = task if task else (None, "created")
        # ctr says RUNNING/STOPPED/PAUSED/CREATED; use Docker's words
        state = {"stopped": "exited"}.get(status, status)
        labels = dict((info or {}).get("Labels") or {})
        name = cid
        if labels.get("io.kubernetes.pod.name"):
            # CRI labels (containerd pkg/cri: io.kubernetes.{pod.namespace,pod.name,container.name})
            name = "/".join(x for x in (labels.get("io.kubernetes.pod.namespace"),
                                        labels.get("io.kubernetes.pod.name"),
                                        labels.get("io.kubernetes.container.name")) if x)
        return ContainerInfo(engine="containerd", id=cid, name=name, state=state,
                             pid=pid if state in ("running", "paused") else None, endpoint=self.endpoint,
                             namespace=ns, image=(info or {}).get("Image"), labels=labels)

    def _containers(self, all: bool) -> list[ContainerInfo]:
        out, looked_up = [], 0
        for ns in self.namespaces:
            tasks = self._tasks(ns)
            ids = _run(self._argv("containers", "ls", "-q", namespace=ns), "containerd", self.env).split()
            for cid in ids:
                task = tasks.get(cid)
                if not all and not (task and task[1] in ("running", "paused")):
                    continue
                info = None
                if ns == "k8s.io" and looked_up < K8S_INFO_MAX and task and task[1] in ("running", "paused"):
                    info, looked_up = self._info(ns, cid), looked_up + 1
                out.append(self._container(ns, cid, task, info))
        return out

    def _inspect(self, c: ContainerInfo) -> ContainerInfo:
        ns = c.namespace
        ids = _run(self._argv("containers", "ls", "-q", namespace=ns), "containerd", self.env).split()
        if c.id not in ids:
            raise KeyError(c.id)
        return self._container(ns, c.id, self._tasks(ns).get(c.id), self._info(ns, c.id))


@dataclass
class Attempt:
    """One engine endpoint that was asked: ok, or why not."""
    engine: str
    endpoint: str
    ok: bool
    reason: str = ""
    permission: bool = False

    def line(self) -> str:
        where = "" if self.endpoint == "-" else f" at {self.endpoint}"
        return f"{self.engine}{where}: " + ("answered" if self.ok else self.reason)


def _podman_sockets(env) -> list[str]:
    urls = []
    if env.get("CONTAINER_HOST"):
        urls.append(env["CONTAINER_HOST"])
    urls.append(f"unix://{DEFAULT_PODMAN_SOCKET}")
    if os.geteuid() == 0:
        # rootless users' API sockets (podman-system-service(1): $XDG_RUNTIME_DIR/podman/podman.sock)
        try:
            for uid in sorted(os.listdir("/run/user")):
                p = f"/run/user/{uid}/podman/podman.sock"
                if uid.isdigit() and os.path.exists(p):
                    urls.append(f"unix://{p}")
        except OSError:
            pass
    else:
        xdg = env.get("XDG_RUNTIME_DIR")
        if xdg:
            urls.append(f"unix://{xdg}/podman/podman.sock")
    seen, out = set(), []
    for u in urls:
        if u not in seen:
            seen.add(u)
            out.append(u)
    return out


def _docker_tls(env):
    """TLS settings for a tcp:// DOCKER_HOST, the way the docker CLI reads them."""
    if not env.get("DOCKER_HOST", "").startswith("tcp://"):
        return None
    try:
        from docker.utils import kwargs_from_env
        return kwargs_from_env(environment=env).get("tls")
    except Exception:  # noqa: BLE001 - bad TLS env: connect without, the error will say why
        return None


def connect_engines(env=None, want: Optional[tuple[str, ...]] = None) -> tuple[list[Engine], list[Attempt]]:
    """Every engine that answers, in the order of evidence, and the record of every attempt."""
    env = os.environ if env is None else env
    want = wanted_engines(env) if want is None else want
    engines: list[Engine] = []
    tried: list[Attempt] = []
    if "docker" in want:
        url = env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        try:
            e = DockerAPIEngine(url, "docker", tls=_docker_tls(env))
            engines.append(e)
            tried.append(Attempt(e.name, url, True))
        except EngineUnavailable as x:
            tried.append(Attempt("docker", url, False, x.reason, x.permission))
    if "podman" in want:
        got = False
        for url in _podman_sockets(env):
            if any(e.endpoint == url for e in engines):
                got = True
                continue
            try:
                engines.append(DockerAPIEngine(url, "podman"))
                tried.append(Attempt("podman", url, True))
                got = True
            except EngineUnavailable as x:
                tried.append(Attempt("podman", url, False, x.reason, x.permission))
        if not got:
            try:
                e = PodmanCLIEngine(env)
                engines.append(e)
                tried.append(Attempt("podman", e.endpoint, True))
            except EngineUnavailable as x:
                tried.append(Attempt("podman", "-", False, x.reason, x.permission))
    if "containerd" in want:
        address = env.get("CONTAINERD_ADDRESS") or DEFAULT_CONTAINERD
        # Docker's containers also live in containerd's "moby" namespace: when Docker answered,
        # it is the better source (names, exit codes), so that namespace is skipped.
        skip = ("moby",) if any(e.name == "docker" for e in engines) else ()
        try:
            e = ContainerdEngine(address, env, skip_namespaces=skip)
            engines.append(e)
            tried.append(Attempt("containerd", address, True))
        except EngineUnavailable as x:
            tried.append(Attempt("containerd", address, False, x.reason, x.permission))
    return engines, tried


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= 200 else s[:197] + "..."
