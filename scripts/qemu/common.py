"""What the qemu test tiers share (scripts/qemu/v2_tier.py, scripts/qemu/arm64_tier.py).

Kernel modules resolved from modules.dep, a cpio "newc" writer for the initramfs (no cpio
tool needed), ELF checks, a sparse ext4 scratch disk, reading what the guest wrote into the
results share without following links, and running qemu with its console streamed line by
line and a hard timeout. Setup problems raise TierError; each tier prints it with its own
prefix and exits 2.
"""
from __future__ import annotations

import lzma
import os
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

MSIZE = 262144          # 9p message size: larger than the default 8 KiB..128 KiB, fewer round trips


class TierError(Exception):
    """The tier could not be set up (exit status 2)."""


# -- kernel modules -------------------------------------------------------------------------
def _modname(path: str) -> str:
    base = os.path.basename(path)
    return base.split(".ko", 1)[0].replace("-", "_")


def resolve_modules(mdir: str, wanted: list[str]) -> list[str]:
    """Paths (relative to mdir, a /lib/modules/<ver> tree) of the wanted modules and their
    dependencies, in load order (dependencies first). A name in modules.builtin is skipped."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    with open(f"{mdir}/modules.dep") as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod] = rest.split()
            by_name[_modname(mod)] = mod
    builtin = set()
    if os.path.exists(f"{mdir}/modules.builtin"):
        with open(f"{mdir}/modules.builtin") as f:
            builtin = {_modname(x.strip()) for x in f if x.strip()}
    order: list[str] = []

    def visit(mod: str, stack: tuple = ()):
        if mod in order:
            return
        if mod in stack:
            raise TierError(f"dependency cycle at {mod}")
        for d in deps.get(mod, []):
            visit(d, stack + (mod,))
        order.append(mod)

    for name in wanted:
        n = name.replace("-", "_")
        if n in by_name:
            visit(by_name[n])
        elif n not in builtin:
            raise TierError(f"module {name} is neither in {mdir}/modules.dep nor built in")
    return order


def modinfo(data: bytes) -> dict[str, str]:
    """The .modinfo section of a module (ELF64 little-endian): "key=value" strings."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise TierError("not a 64-bit ELF module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, = struct.unpack_from("<I", data, shoff + i * shentsize)
        off, size = struct.unpack_from("<QQ", data, shoff + i * shentsize + 0x18)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    out: dict[str, str] = {}
    for i in range(shnum):
        name, off, size = section(i)
        if data[stroff + name:data.index(b"\0", stroff + name)] == b".modinfo":
            for item in data[off:off + size].split(b"\0"):
                k, eq, v = item.decode("utf-8", "replace").partition("=")
                if eq:
                    out.setdefault(k, v)
    return out


def resolve_modules_unpacked(mdir: str, wanted: list[str]) -> list[str]:
    """resolve_modules for a kernel package unpacked with dpkg -x: no modules.dep (depmod
    writes it at install), so dependencies come from each module's .modinfo "depends"."""
    if os.path.exists(f"{mdir}/modules.dep"):
        return resolve_modules(mdir, wanted)
    by_name: dict[str, str] = {}
    for dirpath, _, files in os.walk(f"{mdir}/kernel"):
        for fn in files:
            if ".ko" in fn:
                by_name[_modname(fn)] = os.path.relpath(os.path.join(dirpath, fn), mdir)
    builtin = set()
    if os.path.exists(f"{mdir}/modules.builtin"):
        with open(f"{mdir}/modules.builtin") as f:
            builtin = {_modname(x.strip()) for x in f if x.strip()}
    order: list[str] = []

    def visit(name: str, stack: tuple = ()):
        if name in builtin:
            return
        if name not in by_name:
            raise TierError(f"module {name} is neither in {mdir}/kernel nor built in")
        rel = by_name[name]
        if rel in order:
            return
        if name in stack:
            raise TierError(f"dependency cycle at {name}")
        deps = modinfo(module_bytes(f"{mdir}/{rel}")).get("depends", "")
        for d in filter(None, deps.split(",")):
            visit(d.replace("-", "_"), stack + (name,))
        order.append(rel)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def module_bytes(path: str) -> bytes:
    """A module file, uncompressed (busybox insmod needs a plain .ko)."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".ko"):
        return data
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    raise TierError(f"{path}: compressed in a format this script does not unpack (busybox insmod needs .ko)")


def is_static_elf(path: str) -> bool:
    """True when the ELF file (64-bit, little-endian: x86_64 and aarch64) has no PT_INTERP
    program header (needs no dynamic loader)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", ph, i * phentsize)[0] != 3 for i in range(phnum))


EM_X86_64, EM_AARCH64 = 62, 183          # ELF e_machine (include/uapi/linux/elf-em.h)


def elf_machine(path: str) -> int:
    with open(path, "rb") as f:
        hdr = f.read(20)
    if hdr[:4] != b"\x7fELF":
        return -1
    return struct.unpack_from("<H", hdr, 18)[0]


# -- initramfs (cpio "newc", written here: no cpio tool needed) ---------------------------
class Cpio:
    def __init__(self):
        self.out = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple = (0, 0)):
        nm = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08x" % v for v in fields) + nm
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name: str):
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.out += b"\0" * (-len(self.out) % 512)
        return bytes(self.out)


def write_new(path: str, data: bytes) -> None:
    """Create path (it must not exist) with mode 0600 and write data."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_scratch(path: str, mib: int):
    """A fresh sparse file of `mib` MiB formatted ext4 without a journal."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, mib << 20)
    os.close(fd)
    mkfs = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not mkfs:
        raise TierError("mkfs.ext4 not found (e2fsprogs)")
    # no journal: nothing the tests need, and less work for the emulated CPU
    subprocess.run([mkfs, "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0", path],
                   check=True, stdin=subprocess.DEVNULL)


def read_result(path: str, limit: int = 1 << 20) -> str | None:
    """Text of a file the guest wrote into the results share (None if absent): a regular
    file only, links are not followed (the guest is root on that folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit).decode("utf-8", "replace")


def qopt(value: str) -> str:
    """A value inside a qemu -option list: commas are doubled (qemu-options docs)."""
    return value.replace(",", ",,")


# -- running the guest ------------------------------------------------------------------------
@dataclass
class GuestRun:
    timed_out: bool
    returncode: int | None
    console: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Qemu:
    """One qemu process in its own session: its console streamed (prefixed "guest| ")
    unless quiet, killed with its process group after `timeout` seconds or by kill()."""

    def __init__(self, cmd: list[str], quiet: bool = False, prefix: str = "guest| ", env: dict | None = None):
        self.cmd, self.quiet, self.prefix, self.env = cmd, quiet, prefix, env
        self.proc: subprocess.Popen | None = None
        self.console: list[str] = []

    def run(self, timeout: float) -> GuestRun:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=self.env)

        def pump():
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.console.append(line)
                if not self.quiet:
                    print(f"{self.prefix}{line}", flush=True)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            self.proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        th.join(timeout=5)
        return GuestRun(timed_out, self.proc.returncode, self.console, time.monotonic() - t0)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def guest_status(label: str, run: GuestRun, results: str, timeout: int, quiet: bool,
                 elapsed: float) -> int:
    """The exit status of a tier from what the guest wrote into `results` (rc, pytest.log),
    with the messages both tiers print; 124 when the guest never reported."""
    rc_text = read_result(os.path.join(results, "rc"))
    log = read_result(os.path.join(results, "pytest.log"))
    if run.timed_out or rc_text is None or not rc_text.strip().isdigit():
        why = f"killed after {timeout} s" if run.timed_out else f"qemu exited with {run.returncode}"
        print(f"{label}: FAILED: the guest did not report a pytest exit status ({why})", flush=True)
        if quiet:
            print("\n".join(f"guest| {x}" for x in run.console[-60:]))
        if quiet and log:
            print(f"{label}: partial pytest output:")
            print(log[-8000:])
        return 124
    rc = int(rc_text.strip())
    if quiet and log:
        print(log)
    print(f"{label}: guest pytest exit status {rc}; tier took {elapsed:.1f} s", flush=True)
    return rc
