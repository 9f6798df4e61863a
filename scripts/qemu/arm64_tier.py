#!/usr/bin/env python3
"""The arm64 test tier: build, probe and test memprobe in an arm64 qemu guest (TCG, no KVM).

DGX Spark (GB10) and GH200/GB200 hosts are arm64 (Grace). The CI machines are x86_64, so this
boots Debian's arm64 kernels under qemu-system-aarch64 with an arm64 userland assembled here
from Debian 12 arm64 packages (no network in the guest):

  - packages: `apt-get` with its own lists, status and cache for arm64 resolves and downloads
    python3, gcc, python3-bpfcc, bpftool, the kernel and headers (ROOT_PACKAGES, KERNELS);
    pure-Python wheels that Debian 12 has too old (docker, prometheus_client, nvidia-ml-py:
    setup.py's install_requires minus DEBIAN_PY) come from `pip download`;
  - root image: every package unpacked with `dpkg -x` (no maintainer scripts: FIXUPS below do
    what they would have done), Python byte code compiled on the host (same 3.11 magic), made
    into an ext4 image with `mkfs.ext4 -d`. Cached in MEMPROBE_ARM64_CACHE (default
    /var/cache/memprobe-arm64), keyed by the exact .deb and wheel file names: a cached run
    only resolves versions and boots;
  - per boot: a busybox initramfs (busybox-static:arm64 and the kernel's virtio, ext4 and 9p
    modules), the root image as a virtio disk with snapshot=on (the guest writes, the cache
    stays pristine), a read-only 9p share "input" with a tar of this working tree, a writable
    9p share "results" (pytest.log, rc, doctor output), serial console streamed here;
  - in the guest: `pip install .` into a venv (the native cffi sampler is compiled by the
    guest's gcc), `memprobe doctor`, then pytest on GUEST_TESTS with MEMPROBE_REQUIRE_V2=1 and
    MEMPROBE_REQUIRE_ARM64=1 (a skip for a missing guest capability is a failure).

Two boots: "4k" (linux-image-arm64, Debian 12's 6.1 kernel, 4 KiB pages: everything) and
"16k" (linux-image-6.12-arm64-16k from bookworm-security: 16 KiB pages, for the page-size
tests; Debian has no 64 KiB-page arm64 kernel).

Exit status: the worst guest pytest exit status; 124 if a guest did not report within its
timeout (qemu is killed); 2 for a setup error here. Everything it creates per run (temporary
folder, qemu process) is removed on every exit path unless --keep is given.

  scripts/qemu/arm64_tier.py [--boot 4k|16k ...] [--timeout S] [--keep] [--quiet]
                             [--prepare-only] [-- extra pytest args]

Needs root, qemu-system-arm, e2fsprogs and network access to deb.debian.org and PyPI on the
first run (scripts/setup.sh --test installs the host packages).
"""
from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (EM_AARCH64, MSIZE, Cpio, Qemu, TierError, elf_machine,  # noqa: E402
                    guest_status, is_static_elf, module_bytes, qopt, read_result,
                    resolve_modules_unpacked, write_new)

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
LABEL = "arm64-tier"
CACHE = os.environ.get("MEMPROBE_ARM64_CACHE", "/var/cache/memprobe-arm64")
MIRROR = os.environ.get("MEMPROBE_ARM64_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("MEMPROBE_ARM64_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
SUITE = "bookworm"
LISTS_MAX_AGE_S = 12 * 3600     # apt lists and wheels older than this are refreshed
RECIPE = "7"                    # bump when the assembly below changes: a new cache key

# The guest's userland (Debian 12 arm64, --no-install-recommends, with dependencies).
ROOT_PACKAGES = [
    "libc6", "libc-bin", "dash", "bash", "coreutils", "util-linux", "mount", "tar", "gzip",
    "findutils", "grep", "sed", "procps", "kmod",
    "busybox-static",                                   # the initramfs's shell and tools
    "python3", "python3-venv", "python3-pip", "python3-setuptools", "python3-wheel",
    "python3-dev", "gcc", "libc6-dev", "zlib1g-dev",    # pip install . compiles the cffi sampler
    "python3-cffi", "python3-pycparser", "python3-psutil", "python3-rich",
    "python3-requests", "python3-urllib3",              # docker's dependencies
    "python3-pytest", "python3-hypothesis",
    "python3-bpfcc", "bpftool",                         # eBPF probes; bpftool lists loaded programs
]
# Python requirements of setup.py that Debian 12's packages above satisfy; the others are
# fetched as pure-Python wheels (--no-deps: their dependencies are Debian packages above).
DEBIAN_PY = {"cffi", "psutil", "rich", "pycparser", "requests", "urllib3"}


class Boot:
    def __init__(self, name, image_meta, headers_meta, tests, deselect, expected_skips, timeout, page_size):
        self.name = name
        self.image_meta = image_meta        # Debian meta-package naming the kernel
        self.headers_meta = headers_meta    # its headers (bcc), or None
        self.tests = tests                  # pytest paths, relative to the repository
        self.deselect = deselect            # node ids left out in the guest (why: next to each)
        self.expected_skips = expected_skips  # (test file, reason text): any other skip fails the tier
        self.timeout = timeout
        self.page_size = page_size


# What each boot runs. Left out in the guest, with their cost under TCG (measured, 2-vCPU CI VM):
# the three hypothesis fuzz tests of test_parity.py (128 s, 99 s, and the second-read one about
# 230 s: the tier's growth when it came in; tests/arm64/test_parser_bytes.py compares the C and
# Python parsers on arm64 in seconds, and the pure-Python one does not depend on the CPU), and
# three bpf tests that repeat what others prove (CLI aggregates 18 s, the libcuda path given
# before the process starts 9 s, Ctrl-C next to SIGTERM 16 s).
BOOTS = {
    "4k": Boot("4k", "linux-image-arm64", "linux-headers-arm64",
               ["tests/arm64/test_arm64_guest.py", "tests/arm64/test_parser_bytes.py",
                "tests/arm64/test_page_size.py", "tests/arm64/test_native_fallback.py",
                "tests/test_parse.py", "tests/test_parity.py", "tests/v2", "tests/test_bpf_probes.py"],
               ["tests/test_parity.py::test_fuzz_kv_parity", "tests/test_parity.py::test_fuzz_never_invents",
                "tests/test_parity.py::test_fuzz_parity_of_a_second_read",
                "tests/test_bpf_probes.py::test_cli_run_prints_the_aggregates",
                "tests/test_bpf_probes.py::test_cuda_library_given_before_the_process_starts",
                "tests/test_bpf_probes.py::test_ctrl_c_and_sigterm_leave_nothing_attached[2]"],
               # bcc 0.26's BPF.support_kfunc() is x86_64-only; Debian 12's kernels predate the
               # memcg tracepoints (Linux 6.13)
               [("tests/v2/test_v2_fentry.py", "bcc says this kernel does not support fentry (kfunc) probes"),
                ("tests/test_bpf_probes.py", "no memcg tracepoints (Linux < 6.13)")],
               600, 4096),
    "16k": Boot("16k", "linux-image-6.12-arm64-16k", None,
                ["tests/arm64/test_arm64_guest.py", "tests/v2/test_v2_live.py::test_known_anon_and_page_cache"],
                [], [], 300, 16384),
}

# Kernel modules the guest needs (virtio PCI disk and 9p shares on -M virt, ext4); names
# that a kernel builds in (virtio_pci in 6.12) are skipped through modules.builtin.
GUEST_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "9pnet_virtio", "9p"]

APT_SOURCES = f"""Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY}
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def say(msg: str) -> None:
    print(f"{LABEL}: {msg}", flush=True)


def die(msg: str) -> "NoReturn":  # noqa: F821
    print(f"{LABEL}: {msg}", file=sys.stderr)
    sys.exit(2)


# -- packages -----------------------------------------------------------------------------------
class Apt:
    """apt-get and apt-cache for arm64 with their own lists, cache and (empty) status: the
    host's package state is neither read nor changed."""

    def __init__(self, base: str):
        self.base = base
        for d in ("lists/partial", "cache", "debs/partial", "etc/sources.list.d", "empty/partial"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        self.status = os.path.join(base, "status")
        if not os.path.exists(self.status):
            open(self.status, "w").close()
        src = os.path.join(base, "etc/sources.list.d/debian.sources")
        if read_result(src) != APT_SOURCES:
            with open(src, "w") as f:
                f.write(APT_SOURCES)
        self.debs = os.path.join(base, "debs")
        self.opts = [
            "-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64",
            f"-oDir::State::Lists={base}/lists", f"-oDir::State::status={self.status}",
            f"-oDir::Cache={base}/cache", f"-oDir::Etc::SourceParts={base}/etc/sources.list.d",
            "-oDir::Etc::SourceList=/dev/null", "-oDir::Etc::Preferences=/dev/null",
            "-oDir::Etc::PreferencesParts=/nonexistent", "-oDebug::NoLocking=1",
            "-oAPT::Install-Recommends=0", "-oAPT::Get::AllowUnauthenticated=0",
            "-oAcquire::Retries=3",
        ]

    def run(self, tool: str, *args: str, cwd: str | None = None) -> str:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        r = subprocess.run([tool, *self.opts, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise TierError(f"{tool} {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}")
        return r.stdout

    def lists_age(self) -> float:
        stamps = glob.glob(os.path.join(self.base, "lists", "*_Packages*"))
        return time.time() - max(os.path.getmtime(p) for p in stamps) if stamps else float("inf")

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def depends_on(self, meta: str, prefix: str) -> str:
        """The package a meta-package depends on whose name starts with prefix
        (linux-image-arm64 -> linux-image-6.1.0-NN-arm64)."""
        out = self.run("apt-cache", "depends", meta)
        for line in out.splitlines():
            m = re.match(r"\s*\|?Depends:\s*(\S+)", line)
            if m and m.group(1).startswith(prefix):
                return m.group(1)
        raise TierError(f"apt-cache depends {meta}: no dependency named {prefix}*")

    def resolve(self, packages: list[str]) -> list[tuple[str, str]]:
        """(URI, .deb file name) of every package installing `packages` pulls in, from
        scratch (empty status): --print-uris with an empty archive folder lists them all."""
        out = self.run("apt-get", "-y", f"-oDir::Cache::archives={self.base}/empty",
                       "--print-uris", "install", *packages)
        files = re.findall(r"^'([^']+)' (\S+\.deb) ", out, re.M)
        if not files:
            raise TierError(f"apt-get --print-uris resolved nothing for {packages}:\n{out[-2000:]}")
        return sorted(set(files), key=lambda x: x[1])

    def uri_of(self, package: str) -> tuple[str, str]:
        """(URI, .deb file name) of one package, without its dependencies."""
        out = self.run("apt-get", "--print-uris", "download", package)
        files = re.findall(r"^'([^']+)' (\S+\.deb) ", out, re.M)
        if len(files) != 1:
            raise TierError(f"apt-get --print-uris download {package}:\n{out[-2000:]}")
        return files[0]

    def download_one(self, package: str) -> None:
        self.run("apt-get", "-q", "download", package, cwd=self.debs)

    def download(self, packages: list[str]) -> None:
        """Download (verified against the signed Release files) into debs/, skipping files
        already there."""
        self.run("apt-get", "-y", "-q", f"-oDir::Cache::archives={self.debs}", "install", "-d", *packages)


def setup_requires(repo: str) -> list[str]:
    """install_requires of setup.py (a literal list), read without running setup.py."""
    with open(os.path.join(repo, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            for kw in node.keywords:
                if kw.arg == "install_requires":
                    return list(ast.literal_eval(kw.value))
    raise TierError("setup.py: no literal install_requires in setup()")


def req_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, 1)[0].strip().lower().replace("_", "-")


def fetch_wheels(dest: str, pyver: str, refresh: bool) -> list[str]:
    """Pure-Python wheels for the requirements Debian 12 does not satisfy."""
    os.makedirs(dest, exist_ok=True)
    reqs = [r for r in setup_requires(REPO) if req_name(r) not in {n.replace("_", "-") for n in DEBIAN_PY}]
    listing = os.path.join(dest, "wheels.json")
    try:
        with open(listing) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    if refresh or saved.get("reqs") != reqs or not all(os.path.exists(os.path.join(dest, w))
                                                       for w in saved.get("files", [])):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", pyver, "--platform", "manylinux2014_aarch64",
               "-d", dest, *reqs]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        if r.returncode != 0:
            raise TierError(f"pip download failed:\n{r.stdout[-2000:]}")
        files = []
        for req in reqs:
            name = req_name(req).replace("-", "_")
            found = sorted((w for w in os.listdir(dest) if w.endswith(".whl")
                            and w.lower().replace("-", "_").startswith(name + "_")),
                           key=lambda w: os.path.getmtime(os.path.join(dest, w)))
            if not found:
                raise TierError(f"pip download gave no wheel for {req}")
            files.append(found[-1])
        saved = {"reqs": reqs, "files": files}
        with open(listing + ".tmp", "w") as f:
            json.dump(saved, f)
        os.replace(listing + ".tmp", listing)
    return saved["files"]


# -- the root image ------------------------------------------------------------------------------
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def fixups(root: str, wheels_dir: str, wheels: list[str]) -> None:
    """What dpkg's maintainer scripts would have done, as far as the tests need it."""
    # update-alternatives gives Debian's cc; gcc's own link is in the package
    os.makedirs(f"{root}/usr/bin", exist_ok=True)
    if not os.path.lexists(f"{root}/usr/bin/cc"):
        os.symlink("gcc", f"{root}/usr/bin/cc")
    # base-passwd's postinst writes these
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        if not os.path.exists(f"{root}/etc/{name}"):
            with open(f"{root}/etc/{name}", "w") as f:
                f.write(text)
    with open(f"{root}/etc/hostname", "w") as f:
        f.write("memprobe-arm64\n")
    for d in ("results", "input", "root", "var/tmp", "tmp", "run", "sys/kernel/tracing", "sys/kernel/debug"):
        os.makedirs(f"{root}/{d}", exist_ok=True)
    os.chmod(f"{root}/tmp", 0o1777)
    os.chmod(f"{root}/var/tmp", 0o1777)
    dst = f"{root}/opt/memprobe/wheels"
    os.makedirs(dst, exist_ok=True)
    for w in wheels:
        shutil.copy2(os.path.join(wheels_dir, w), dst)
    # documentation is not needed in the guest
    for d in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
        shutil.rmtree(f"{root}/{d}", ignore_errors=True)


def precompile(root: str, pyver: str) -> str:
    """Byte-compile the guest's Python packages here (the .pyc format depends on the Python
    minor version only, not on the CPU): the emulated CPU would otherwise compile them on every
    boot. unchecked-hash: the files never change inside the image."""
    for cand in (sys.executable, shutil.which(f"python{pyver}") or ""):
        if not cand:
            continue
        r = subprocess.run([cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
        if r.stdout.strip() == pyver:
            dirs = [d for d in (f"{root}/usr/lib/python{pyver}", f"{root}/usr/lib/python3/dist-packages")
                    if os.path.isdir(d)]
            subprocess.run([cand, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
                            "-x", r"(lib2to3/tests|test/|/tests/|bad|badsyntax|py2_)", *dirs],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return f"byte code compiled with {cand}"
    return f"no Python {pyver} here: the guest compiles byte code itself (slower)"


def extract_kernel(deb: str, dest: str) -> str:
    """vmlinuz, config and the GUEST_MODULES (with dependencies) of a linux-image .deb, in
    dest/<ver>/; returns the kernel version."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as t:
        subprocess.run(["dpkg-deb", "-x", deb, t], check=True)
        vml = glob.glob(f"{t}/boot/vmlinuz-*")
        if len(vml) != 1:
            raise TierError(f"{deb}: expected one /boot/vmlinuz-*, found {vml}")
        ver = os.path.basename(vml[0])[len("vmlinuz-"):]
        mdir = f"{t}/lib/modules/{ver}"
        mods = resolve_modules_unpacked(mdir, GUEST_MODULES)
        out = f"{dest}/{ver}"
        os.makedirs(f"{out}/modules", exist_ok=True)
        shutil.copy2(vml[0], f"{out}/vmlinuz")
        shutil.copy2(f"{t}/boot/config-{ver}", f"{out}/config")
        for m in mods:
            name = os.path.basename(m).split(".ko", 1)[0] + ".ko"
            with open(f"{out}/modules/{name}", "wb") as f:
                f.write(module_bytes(f"{mdir}/{m}"))
        with open(f"{out}/modules.list", "w") as f:
            f.write("".join(os.path.basename(m).split(".ko", 1)[0] + ".ko\n" for m in mods))
    return ver


def kernel_page_size(config: str) -> int:
    """Page size a kernel was built for, from its config (CONFIG_ARM64_{4,16,64}K_PAGES)."""
    with open(config) as f:
        text = f.read()
    for kib in (64, 16, 4):
        if f"\nCONFIG_ARM64_{kib}K_PAGES=y" in text:
            return kib << 10
    raise TierError(f"{config}: no CONFIG_ARM64_*K_PAGES=y")


def prepare(boots: list[Boot]) -> dict:
    """The cached image for these boots, made if needed; returns its manifest."""
    t0 = time.monotonic()
    os.makedirs(CACHE, mode=0o700, exist_ok=True)
    apt = Apt(os.path.join(CACHE, "apt"))
    images = os.path.join(CACHE, "images")
    os.makedirs(images, exist_ok=True)
    refresh = apt.lists_age() > LISTS_MAX_AGE_S
    try:
        if refresh:
            say("updating the arm64 package lists (Debian 12)")
            apt.update()
        if apt.lists_age() == float("inf"):
            raise TierError("no arm64 package lists (and none cached)")
        kernels = {b.name: apt.depends_on(b.image_meta, "linux-image-") for b in boots}
        headers = [apt.depends_on(b.headers_meta, "linux-headers-") for b in boots if b.headers_meta]
        root_pkgs = ROOT_PACKAGES + headers
        root_files = apt.resolve(root_pkgs)
        kern_files = [apt.uri_of(kernels[b.name]) for b in boots]
        pyfile = [f for _, f in root_files if re.match(r"python3\.\d+-minimal_", f)]
        if len(pyfile) != 1:
            raise TierError(f"cannot tell the guest's Python version from {pyfile}")
        pyver = re.match(r"python(3\.\d+)-minimal_", pyfile[0]).group(1)
        wheels = fetch_wheels(os.path.join(CACHE, "wheels"), pyver, refresh)
    except TierError as e:
        raise TierError(f"{e}\n(no network? --offline boots the newest cached image)") from None
    for b in boots:
        k = kernels[b.name].removeprefix("linux-image-")
        for h in headers:
            if b.headers_meta and not h.startswith(f"linux-headers-{k}"):
                raise TierError(f"kernel {kernels[b.name]} and headers {h} differ: bcc needs the same version")
    names = sorted(f for _, f in root_files) + sorted(f for _, f in kern_files) + sorted(wheels)
    key = hashlib.sha256(("\n".join(names) + f"\nrecipe {RECIPE}\n").encode()).hexdigest()[:16]
    img = os.path.join(images, key)
    manifest_path = os.path.join(img, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            m = json.load(f)
        say(f"cached arm64 image {key} ({len(names)} packages and wheels; versions checked in "
            f"{time.monotonic() - t0:.1f} s)")
        return m

    say(f"assembling arm64 image {key}: {len(root_files)} root packages, "
        f"{len(kern_files)} kernels, {len(wheels)} wheels")
    t1 = time.monotonic()
    apt.download(root_pkgs)
    for (_, f), name in zip(kern_files, [kernels[b.name] for b in boots]):
        if not os.path.exists(os.path.join(apt.debs, f)):
            apt.download_one(name)
    t_dl = time.monotonic() - t1
    for _, f in root_files + kern_files:
        if not os.path.exists(os.path.join(apt.debs, f)):
            raise TierError(f"{f} was not downloaded")
    tmp = img + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    root = os.path.join(tmp, "root")
    os.makedirs(root)
    t2 = time.monotonic()
    for _, f in root_files:
        subprocess.run(["dpkg-deb", "-x", os.path.join(apt.debs, f), root], check=True)
    fixups(root, os.path.join(CACHE, "wheels"), wheels)
    pyc = precompile(root, pyver)
    kvers = {}
    for b in boots:
        deb = [f for _, f in kern_files if f.startswith(kernels[b.name] + "_")]
        if len(deb) != 1:
            raise TierError(f"no .deb for {kernels[b.name]}")
        kvers[b.name] = extract_kernel(os.path.join(apt.debs, deb[0]), os.path.join(tmp, "kernels"))
    busybox = os.path.join(root, "bin", "busybox")
    if not (os.path.exists(busybox) and is_static_elf(busybox) and elf_machine(busybox) == EM_AARCH64):
        raise TierError(f"{busybox} is not a static arm64 ELF (busybox-static:arm64)")
    shutil.copy2(busybox, os.path.join(tmp, "busybox"))
    du = int(subprocess.run(["du", "-sxm", root], capture_output=True, text=True, check=True).stdout.split()[0])
    size_mib = du + du // 4 + 1536            # room for the venv, builds and the tests' files
    image = os.path.join(tmp, "root.ext4")
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    mkfs = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not mkfs:
        raise TierError("mkfs.ext4 not found (e2fsprogs)")
    subprocess.run([mkfs, "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    "-L", "memprobe-arm64", "-d", root, image], check=True, stdin=subprocess.DEVNULL)
    shutil.rmtree(root)
    t_asm = time.monotonic() - t2
    m = {"key": key, "python": pyver, "kernels": kvers,
         "packages": names, "image_mib": size_mib, "root_mib": du, "pyc": pyc,
         "download_s": round(t_dl, 1), "assemble_s": round(t_asm, 1), "created": time.time()}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)
    os.replace(tmp, img)
    say(f"image {key} ready: root {du} MiB, downloads {t_dl:.1f} s, unpack + mkfs {t_asm:.1f} s ({pyc})")
    # keep the two newest images and the .deb files the newest one used
    others = sorted((d for d in glob.glob(os.path.join(images, "*")) if d != img and not d.endswith(".tmp")),
                    key=os.path.getmtime, reverse=True)
    for d in others[1:]:
        shutil.rmtree(d, ignore_errors=True)
    used = {f for _, f in root_files + kern_files}
    for f in os.listdir(apt.debs):
        if f.endswith(".deb") and f not in used:
            os.unlink(os.path.join(apt.debs, f))
    return m


def newest_image(boots: list[Boot]) -> dict:
    best = None
    for p in glob.glob(os.path.join(CACHE, "images", "*", "manifest.json")):
        with open(p) as f:
            m = json.load(f)
        if all(b.name in m["kernels"] for b in boots) and (best is None or m["created"] > best["created"]):
            best = m
    if best is None:
        raise TierError(f"no cached arm64 image in {CACHE}/images (run once with network access)")
    return best


# -- per run -------------------------------------------------------------------------------------
EXCLUDE_DIRS = {".git", ".venv", "build", "dist", ".cache", ".pytest_cache", ".hypothesis", "__pycache__",
                ".whl", ".debs", "node_modules"}


def repo_tar(path: str) -> int:
    """This working tree (what pip install . and the tests need) as a tar: not .git, virtual
    environments, build outputs or this host's native extension."""
    n = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for dirpath, dirnames, filenames in os.walk(REPO):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.endswith(".egg-info"))
            for fn in sorted(filenames):
                if fn.endswith((".so", ".o", ".pyc")) or fn == "_native.c":
                    continue
                full = os.path.join(dirpath, fn)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                ti = t.gettarinfo(full, arcname=os.path.relpath(full, REPO))
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "root"
                with open(full, "rb") as f:
                    t.addfile(ti, f)
                n += 1
    return n


INIT = r"""#!/bin/busybox sh
# Guest init (generated by scripts/qemu/arm64_tier.py): modules, root disk, shares, switch_root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/null
say() { echo "arm64-tier-guest: $*"; }
finish() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
for m in $(cat /modules.list); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
R=/newroot
mkdir -p $R
mount -t ext4 /dev/vda $R || { say "root disk not mounted"; finish; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=@MSIZE@ results $R/results || { say "no results share"; finish; }
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=@MSIZE@ input $R/input \
    || { say "no input share"; echo 3 > $R/results/rc; finish; }
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=755 tmpfs $R/run
# pure cgroup v2 with the memory controller for children of the root
mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup
echo +memory > $R/sys/fs/cgroup/cgroup.subtree_control
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
cp /guest-run.sh /guest-init.sh $R/tmp/
say "kernel $(uname -r) $(uname -m), cgroup2 controllers: $(cat $R/sys/fs/cgroup/cgroup.controllers)"
# switch_root, not chroot: the tests see a real root (a process that pivot_roots in its own mount
# namespace, as container runtimes do, must see paths as on a host)
exec switch_root $R /bin/busybox sh /tmp/guest-init.sh
say "switch_root failed"
echo 3 > $R/results/rc
finish
"""

GUEST_INIT = r"""# PID 1 in the guest's arm64 root after switch_root (scripts/qemu/arm64_tier.py)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "arm64-tier-guest: $*"; }
finish() { sync; busybox poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
say "page size $(getconf PAGESIZE); starting the guest run at uptime $(cut -d" " -f1 /proc/uptime) s"
set -o pipefail
timeout -s TERM @GUEST_TIMEOUT@ /bin/sh /tmp/guest-run.sh 2>&1 </dev/null | tee /results/pytest.log
echo $? > /results/rc.tmp && mv /results/rc.tmp /results/rc
say "exit status $(cat /results/rc) at uptime $(cut -d" " -f1 /proc/uptime) s"
umount /results
finish
"""

GUEST_RUN = r"""# runs inside the guest's arm64 root (scripts/qemu/arm64_tier.py)
set -eu
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONUNBUFFERED=1 LANG=C.UTF-8 TMPDIR=/tmp
up() { cut -d" " -f1 /proc/uptime; }
say() { echo "arm64-tier-guest: $* (uptime $(up) s)"; }
SRC=/root/memprobe
mkdir -p $SRC /var/tmp/scratch
tar -xf /input/repo.tar -C $SRC
cd $SRC
python3 -m venv --system-site-packages --without-pip /opt/venv
say "pip install . (builds the native sampler with $(gcc -dumpfullversion) for $(gcc -dumpmachine))"
# Debian's pip, run by the venv's python, installs into the venv; --no-index: the guest has no
# network, the wheels Debian lacks were fetched on the host
start=$(up)
if ! /opt/venv/bin/python -m pip install --disable-pip-version-check --no-index \
        --find-links /opt/memprobe/wheels --no-build-isolation . > /results/pip.log 2>&1; then
    cat /results/pip.log
    say "pip install . FAILED"
    exit 5
fi
grep -i "warning: native sampler" /results/pip.log || true
echo "pip_install_s $start $(up)" >> /results/times
say "installed"
cd /
/opt/venv/bin/memprobe doctor --json > /results/doctor.json || say "memprobe doctor --json failed"
/opt/venv/bin/memprobe doctor || true
cd $SRC
export MEMPROBE_REQUIRE_V2=1 MEMPROBE_REQUIRE_ARM64=1 MEMPROBE_V2_SCRATCH=/var/tmp/scratch
export MEMPROBE_ARM64_BOOT=@BOOT@ MEMPROBE_ARM64_PAGE_SIZE=@PAGE_SIZE@ MEMPROBE_ARM64_RESULTS=/results
export PYTHONPATH=$SRC/tests/arm64/plugins
say "pytest @TESTS@"
start=$(up)
# -P: the source tree is not put on sys.path, so the tests import the installed package
set +e
/opt/venv/bin/python -P -m pytest -p no:cacheprovider -p tcg_profile -v -rs @ARGS@
rc=$?
echo "pytest_s $start $(up)" >> /results/times
exit $rc
"""


def build_initramfs(path: str, kdir: str, busybox: str, boot: Boot, pytest_args: list[str],
                    guest_timeout: int) -> list[str]:
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp", "newroot"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    c.symlink("bin/sh", "busybox")
    with open(os.path.join(kdir, "modules.list")) as f:
        mods = f.read().split()
    for m in mods:
        with open(os.path.join(kdir, "modules", m), "rb") as f:
            c.file(f"lib/modules/{m}", f.read())
    c.file("modules.list", ("\n".join(mods) + "\n").encode())
    c.file("init", INIT.replace("@MSIZE@", str(MSIZE)).encode(), 0o755)
    c.file("guest-init.sh", GUEST_INIT.replace("@GUEST_TIMEOUT@", str(guest_timeout)).encode(), 0o755)
    args = " ".join(shlex.quote(a) for a in boot.tests + [f"--deselect={d}" for d in boot.deselect]
                    + pytest_args)
    run = (GUEST_RUN.replace("@BOOT@", boot.name).replace("@PAGE_SIZE@", str(boot.page_size))
           .replace("@TESTS@", shlex.quote(" ".join(boot.tests))).replace("@ARGS@", args))
    c.file("guest-run.sh", run.encode(), 0o755)
    write_new(path, c.finish())
    return mods


def check_skips(boot: Boot, log: str) -> int:
    """1 when the guest skipped a test that is not in boot.expected_skips (pytest -rs lines:
    "SKIPPED [n] path:line: reason"): a missing capability in the guest must fail the tier."""
    bad = []
    for m in re.finditer(r"^SKIPPED \[\d+\] ([^:\s]+):\d+: (.*)$", log, re.M):
        path, reason = m.group(1), m.group(2).strip()
        if not any(path == f and r in reason for f, r in boot.expected_skips):
            bad.append(f"{path}: {reason}")
    if bad:
        say(f"boot {boot.name}: FAILED: unexpected skips in the guest:\n  " + "\n  ".join(bad))
        return 1
    return 0


def run_boot(boot: Boot, m: dict, tmp: str, tarball: str, a, qemu: str, timeout: int) -> int:
    img = os.path.join(CACHE, "images", m["key"])
    ver = m["kernels"][boot.name]
    kdir = os.path.join(img, "kernels", ver)
    bdir = os.path.join(tmp, boot.name)
    results, inp = os.path.join(bdir, "results"), os.path.join(bdir, "input")
    os.makedirs(results, 0o700)
    os.makedirs(inp, 0o700)
    os.link(tarball, os.path.join(inp, "repo.tar"))          # same temporary folder: no copy
    initrd = os.path.join(bdir, "initrd.cpio")
    mods = build_initramfs(initrd, kdir, os.path.join(img, "busybox"), boot, a.pytest_args, max(60, timeout - 40))
    # -cpu max with the implementation-defined pointer-authentication algorithm: QARMA5 (the
    # default) costs the emulated kernel dearly on every function return (qemu docs, arm cpu features)
    append = "console=ttyAMA0 quiet loglevel=3 panic=-1 rdinit=/init"
    cmd = [qemu, "-accel", "tcg,thread=multi", "-machine", "virt", "-cpu", "max,pauth-impdef=on",
           "-smp", "2", "-m", "2048", "-display", "none", "-monitor", "none", "-serial", "stdio",
           "-nic", "none", "-no-reboot", "-kernel", os.path.join(kdir, "vmlinuz"), "-initrd", initrd,
           "-append", append,
           "-drive", f"file={qopt(os.path.join(img, 'root.ext4'))},if=virtio,format=raw,snapshot=on,cache=unsafe",
           "-virtfs", f"local,path={qopt(results)},mount_tag=results,security_model=passthrough,id=results",
           "-virtfs", f"local,path={qopt(inp)},mount_tag=input,security_model=passthrough,readonly=on,id=input"]
    page = kernel_page_size(os.path.join(kdir, "config"))
    if page != boot.page_size:
        raise TierError(f"kernel {ver} has {page}-byte pages, boot {boot.name} expects {boot.page_size}")
    say(f"boot {boot.name}: kernel {ver} ({page}-byte pages; TCG, 2 vCPUs, "
        f"2 GiB) with {len(mods)} modules; timeout {timeout} s; tests {' '.join(boot.tests)}")
    t0 = time.monotonic()
    # qemu writes the snapshot=on overlay of the root disk into TMPDIR
    qm = Qemu(cmd, quiet=a.quiet, env=dict(os.environ, TMPDIR=bdir))
    try:
        run = qm.run(timeout)
    finally:
        qm.kill()
    rc = guest_status(f"{LABEL} [{boot.name}]", run, results, timeout, a.quiet, time.monotonic() - t0)
    if rc == 0 and not a.pytest_args:
        rc = check_skips(boot, read_result(os.path.join(results, "pytest.log")) or "")
    times = read_result(os.path.join(results, "times")) or ""
    parts = []
    for line in times.splitlines():
        w = line.split()
        if len(w) == 3:
            parts.append(f"{w[0].removesuffix('_s')} {float(w[2]) - float(w[1]):.1f} s")
    if parts:
        say(f"boot {boot.name}: " + ", ".join(parts) + f"; qemu wall time {run.wall_s:.1f} s")
    if a.keep_results:
        dst = os.path.join(a.keep_results, boot.name)
        shutil.copytree(results, dst, dirs_exist_ok=True)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boot", action="append", choices=sorted(BOOTS),
                    help="which boot(s) to run (default: all: " + ", ".join(BOOTS) + ")")
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("MEMPROBE_ARM64_TIER_TIMEOUT", 0)) or None,
                    help="seconds before each qemu is killed (default per boot: "
                         + ", ".join(f"{b.name} {b.timeout}" for b in BOOTS.values())
                         + "; or MEMPROBE_ARM64_TIER_TIMEOUT); the guest stops pytest 40 s earlier")
    ap.add_argument("--offline", action="store_true", help="use the newest cached image, no network")
    ap.add_argument("--prepare-only", action="store_true", help="download and assemble the image, boot nothing")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (initrd, results)")
    ap.add_argument("--keep-results", metavar="DIR", help="copy each boot's results share (logs, doctor output) to DIR")
    ap.add_argument("--quiet", action="store_true", help="do not stream the guest console")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("needs root (packages unpacked with their owners, cgroup writes in the guest)")
    qemu = shutil.which("qemu-system-aarch64")
    if not qemu and not a.prepare_only:
        die("qemu-system-aarch64 not found (install qemu-system-arm: scripts/setup.sh --test)")
    boots = [BOOTS[n] for n in (a.boot or list(BOOTS))]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        # every boot's kernel is in the image, whichever boots run: one cache key for all
        m = newest_image(boots) if a.offline else prepare(list(BOOTS.values()))
    except TierError as e:
        die(str(e))
    t_prep = time.monotonic() - t0
    if a.prepare_only:
        say(f"prepared in {t_prep:.1f} s")
        return 0
    tmp = tempfile.mkdtemp(prefix="memprobe-arm64-tier-")
    worst = 0
    try:
        tarball = os.path.join(tmp, "repo.tar")
        n = repo_tar(tarball)
        say(f"working tree: {n} files, {os.path.getsize(tarball) >> 10} KiB")
        for b in boots:
            rc = run_boot(b, m, tmp, tarball, a, qemu, a.timeout or b.timeout)
            if rc != 0 and (worst == 0 or rc == 124):
                worst = rc
    except TierError as e:
        die(str(e))
    finally:
        if a.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"{'passed' if worst == 0 else 'FAILED'}: prepare {t_prep:.1f} s, whole tier {time.monotonic() - t0:.1f} s")
    return worst


if __name__ == "__main__":
    sys.exit(main())
