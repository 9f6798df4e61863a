#!/usr/bin/env python3
"""The cgroup v2 test tier: run the cgroup_v2-marked tests in a qemu guest (no KVM).

CI machines have a hybrid cgroup layout (memory controller on v1), users' hosts are pure
cgroup v2. This boots Debian's kernel package (/boot/vmlinuz-<ver>, from linux-image-amd64)
under qemu-system-x86_64 with TCG, on a busybox-static initramfs built here, and runs
pytest on the guest against a pure cgroup v2 hierarchy with the memory controller:

  - 9p share "hostroot": this host's / , READ-ONLY; the guest chroots into it and runs the
    project's own interpreter (<repo>/.venv/bin/python) on this repository's tests;
  - 9p share "results": a private temporary folder (mode 0700), writable: the guest writes
    pytest's output (pytest.log) and exit code (rc) there;
  - a virtio disk with a fresh ext4 filesystem (a sparse temporary file): a disk-backed
    folder for the page-cache tests (/tmp is a tmpfs in the guest, and reading a tmpfs
    file charges nothing);
  - serial console: streamed here line by line (prefixed "guest| ") so a hang shows where.

Exit status: pytest's exit status in the guest; 124 if the guest did not report within
--timeout seconds (qemu is killed); 2 for a setup error here. Everything it creates
(temporary folder, qemu process) is removed on every exit path unless --keep is given.

  scripts/qemu/v2_tier.py [--timeout S] [--keep] [--kernel VER] [-- extra pytest args]

Needs root (9p passthrough of /), qemu-system-x86, linux-image-amd64 and busybox-static:
scripts/setup.sh --test installs them.
"""
from __future__ import annotations

import argparse
import glob
import lzma
import os
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Kernel modules the guest needs, by name; their dependencies come from modules.dep.
# Debian's 6.1 config builds all of these as modules (CONFIG_VIRTIO_PCI=m, CONFIG_NET_9P=m,
# CONFIG_9P_FS=m, CONFIG_VIRTIO_BLK=m, CONFIG_EXT4_FS=m); a name listed in modules.builtin
# is skipped. crc32c: ext4's metadata_csum and jbd2 ask the crypto API for "crc32c", and
# the guest has no modprobe to load it on demand.
GUEST_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "virtio_blk", "crc32c_generic", "ext4"]
GUEST_TESTS = ["tests/v2"]
SCRATCH_MIB = 256
MSIZE = 262144          # 9p message size: larger than the default 8 KiB..128 KiB, fewer round trips


def die(msg: str) -> "NoReturn":  # noqa: F821
    print(f"v2-tier: {msg}", file=sys.stderr)
    sys.exit(2)


# -- kernel and modules --------------------------------------------------------------------
def pick_kernel(version: str | None) -> tuple[str, str]:
    """(vmlinuz path, version): the newest /boot/vmlinuz-* that has a modules tree."""
    if version:
        cands = [f"/boot/vmlinuz-{version}"]
    else:
        cands = sorted(glob.glob("/boot/vmlinuz-*"), key=os.path.getmtime, reverse=True)
    for path in cands:
        ver = os.path.basename(path)[len("vmlinuz-"):]
        if os.path.isfile(path) and os.path.isfile(f"/lib/modules/{ver}/modules.dep"):
            return path, ver
    die("no /boot/vmlinuz-<version> with /lib/modules/<version>/modules.dep "
        "(install linux-image-amd64: scripts/setup.sh --test)")


def _modname(path: str) -> str:
    base = os.path.basename(path)
    return base.split(".ko", 1)[0].replace("-", "_")


def resolve_modules(ver: str, wanted: list[str]) -> list[str]:
    """Paths (relative to /lib/modules/<ver>) of the wanted modules and their dependencies,
    in load order (dependencies first)."""
    mdir = f"/lib/modules/{ver}"
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
            die(f"dependency cycle at {mod}")
        for d in deps.get(mod, []):
            visit(d, stack + (mod,))
        order.append(mod)

    for name in wanted:
        n = name.replace("-", "_")
        if n in by_name:
            visit(by_name[n])
        elif n not in builtin:
            die(f"module {name} is neither in {mdir}/modules.dep nor built in")
    return order


def module_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".ko"):
        return data
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    die(f"{path}: compressed in a format this script does not unpack (busybox insmod needs .ko)")


def is_static_elf(path: str) -> bool:
    """True when the ELF file has no PT_INTERP program header (needs no dynamic loader)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", ph, i * phentsize)[0] != 3 for i in range(phnum))


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


INIT = r"""#!/bin/busybox sh
# Guest init (generated by scripts/qemu/v2_tier.py): mounts, modules, chroot, pytest, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/null
say() { echo "v2-tier-guest: $*"; }
finish() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
for m in $(cat /modules.list); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=@MSIZE@ results /results || { say "no results share"; finish; }
R=/hostroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=@MSIZE@,cache=loose hostroot $R \
    || { say "no hostroot share"; echo 3 > /results/rc; finish; }
# the guest covers /tmp and /run with its own tmpfs: keep a repository under them visible
REPO=@REPO@
case "$REPO" in /tmp/*|/run/*) mkdir -p /repo && mount --bind "$R$REPO" /repo && KEEP_REPO=1 ;; esac
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=755 tmpfs $R/run
[ -n "$KEEP_REPO" ] && mkdir -p "$R$REPO" && mount --bind /repo "$R$REPO"
# pure cgroup v2 with the memory controller for children of the root
mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup
echo +memory > $R/sys/fs/cgroup/cgroup.subtree_control
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# disk-backed scratch folder for page-cache tests
mkdir -p $R/tmp/scratch
mount -t ext4 /dev/vda $R/tmp/scratch || say "scratch disk not mounted"
cp /guest-run.sh $R/tmp/guest-run.sh
say "kernel $(uname -r), cgroup2 controllers: $(cat $R/sys/fs/cgroup/cgroup.controllers)"
say "subtree_control: $(cat $R/sys/fs/cgroup/cgroup.subtree_control); starting pytest at uptime $(cut -d" " -f1 /proc/uptime) s"
set -o pipefail
timeout -s TERM @GUEST_TIMEOUT@ chroot $R /bin/sh /tmp/guest-run.sh 2>&1 | tee /results/pytest.log
echo $? > /results/rc.tmp && mv /results/rc.tmp /results/rc
say "pytest exit status $(cat /results/rc)"
finish
"""

GUEST_RUN = r"""# run inside the chroot (the host's root, read-only)
cd @REPO@ || exit 3
export HOME=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
export MEMPROBE_REQUIRE_V2=1 MEMPROBE_V2_SCRATCH=/tmp/scratch
exec @PY@ -m pytest -p no:cacheprovider -p no:hypothesispytest -m cgroup_v2 -v @ARGS@
"""


def build_initramfs(path: str, ver: str, repo: str, pytest_args: list[str], guest_timeout: int):
    busybox = shutil.which("busybox", path="/bin:/usr/bin") or ""
    if not busybox or not is_static_elf(busybox):
        die("a static /bin/busybox is needed (install busybox-static: scripts/setup.sh --test)")
    mods = resolve_modules(ver, GUEST_MODULES)
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "hostroot", "results", "lib", "lib/modules", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    c.symlink("bin/sh", "busybox")
    flat = []
    for m in mods:
        name = os.path.basename(m).split(".ko", 1)[0] + ".ko"
        c.file(f"lib/modules/{name}", module_bytes(f"/lib/modules/{ver}/{m}"))
        flat.append(name)
    c.file("modules.list", ("\n".join(flat) + "\n").encode())
    init = (INIT.replace("@MSIZE@", str(MSIZE)).replace("@REPO@", shlex.quote(repo))
            .replace("@GUEST_TIMEOUT@", str(guest_timeout)))
    c.file("init", init.encode(), 0o755)
    py = os.path.join(repo, ".venv", "bin", "python")
    args = [shlex.quote(a) for a in GUEST_TESTS + pytest_args]
    run = (GUEST_RUN.replace("@REPO@", shlex.quote(repo)).replace("@PY@", shlex.quote(py))
           .replace("@ARGS@", " ".join(args)))
    c.file("guest-run.sh", run.encode(), 0o755)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(c.finish())
    return flat


def make_scratch(path: str):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, SCRATCH_MIB << 20)
    os.close(fd)
    mkfs = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not mkfs:
        die("mkfs.ext4 not found (e2fsprogs)")
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


# -- run ------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("MEMPROBE_V2_TIER_TIMEOUT", 180)),
                    help="seconds before qemu is killed (default 180, or MEMPROBE_V2_TIER_TIMEOUT); "
                         "pytest in the guest is stopped 40 s earlier so its output still comes back")
    ap.add_argument("--kernel", help="kernel version under /boot (default: newest with modules)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, images)")
    ap.add_argument("--quiet", action="store_true", help="do not stream the guest console")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("needs root (9p passthrough share of / and cgroup writes in the guest)")
    if not os.path.exists(os.path.join(REPO, ".venv", "bin", "python")):
        die(f"{REPO}/.venv missing: run scripts/setup.sh --test first")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        die("qemu-system-x86_64 not found (install qemu-system-x86: scripts/setup.sh --test)")
    vmlinuz, ver = pick_kernel(a.kernel)

    # a cancelled CI job sends SIGTERM: leave through the finally below (kill qemu, remove files)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="memprobe-v2-tier-")      # mode 0700
    proc = None
    try:
        results = os.path.join(tmp, "results")
        os.mkdir(results, 0o700)
        initrd = os.path.join(tmp, "initrd.cpio")
        # the guest ends pytest itself a bit before qemu is killed, so its output comes back
        mods = build_initramfs(initrd, ver, REPO, a.pytest_args, max(30, a.timeout - 40))
        scratch = os.path.join(tmp, "scratch.ext4")
        make_scratch(scratch)
        append = "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off rdinit=/init"
        cmd = [qemu, "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048",
               "-machine", "q35", "-display", "none", "-monitor", "none", "-serial", "stdio",
               "-nic", "none", "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
               "-append", append,
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
                          "readonly=on,multidevs=remap,id=hostroot",
               "-virtfs", f"local,path={qopt(results)},mount_tag=results,security_model=passthrough,"
                          "id=results",
               "-drive", f"file={qopt(scratch)},if=virtio,format=raw,cache=unsafe"]
        print(f"v2-tier: booting {vmlinuz} (TCG, 2 vCPUs, 2 GiB) with {len(mods)} modules; "
              f"timeout {a.timeout} s; tests {' '.join(GUEST_TESTS)} from {REPO}", flush=True)
        console = []
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def pump():
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                console.append(line)
                if not a.quiet:
                    print(f"guest| {line}", flush=True)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            proc.wait(timeout=a.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        th.join(timeout=5)
        elapsed = time.monotonic() - t0
        rc_text = read_result(os.path.join(results, "rc"))
        log = read_result(os.path.join(results, "pytest.log"))
        if timed_out or rc_text is None or not rc_text.strip().isdigit():
            why = f"killed after {a.timeout} s" if timed_out else f"qemu exited with {proc.returncode}"
            print(f"v2-tier: FAILED: the guest did not report a pytest exit status ({why})", flush=True)
            if a.quiet:
                print("\n".join(f"guest| {x}" for x in console[-60:]))
            if a.quiet and log:
                print("v2-tier: partial pytest output:")
                print(log[-8000:])
            return 124
        rc = int(rc_text.strip())
        if a.quiet and log:
            print(log)
        print(f"v2-tier: guest pytest exit status {rc}; tier took {elapsed:.1f} s", flush=True)
        return rc
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if a.keep:
            print(f"v2-tier: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
