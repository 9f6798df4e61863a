#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (run as root) for memprobe: system packages, a
# virtualenv with the package installed, tracefs. Idempotent: installs only what is missing.
#   scripts/setup.sh          what `memprobe` needs to run (README install command)
#   scripts/setup.sh --test   plus what the test tiers need (README test command)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

# What running needs: a compiler for the native sampler; bcc from Debian (PyPI's `bcc` is
# an unrelated package) for eBPF attribution.
run_pkgs=(gcc libc6-dev python3-bpfcc bpfcc-tools)
# Debian's python3 leaves out ensurepip (`python3 -m venv` fails without python3-venv) and
# Python.h (cffi's API mode builds the native sampler against it): both are separate packages.
run_pkgs+=(python3-venv python3-dev)
# zlib's header: the native sampler deflates the flight recorder's rows (csrc/row.c).
run_pkgs+=(zlib1g-dev)
# bcc compiles its BPF C against kernel headers; where the running kernel has none (CI VMs:
# kernel 6.18, Debian ships 6.1), Debian's headers merged below stand in (docs/facts.md#f-vm).
run_pkgs+=("linux-headers-$(dpkg --print-architecture)")
# What the tests need on top: a real terminal for the TUI test.
test_pkgs=(tmux)
# The cgroup v2 tier (scripts/qemu/v2_tier.py, docs/testing.md): qemu without KVM, Debian's
# kernel package for the guest (its vmlinuz and modules under /boot and /lib/modules), a
# static busybox for the initramfs, mkfs.ext4 for the scratch disk, and headers of the same
# kernel so bcc can compile the guest's fentry test.
test_pkgs+=(qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs linux-headers-amd64)
# The arm64 tier (scripts/qemu/arm64_tier.py, docs/testing.md): qemu-system-aarch64. The guest's
# arm64 kernels and userland are Debian 12 arm64 packages that the tier itself downloads with
# apt-get (own lists and cache, the host's package state untouched) and caches, keyed by version,
# in /var/cache/memprobe-arm64.
test_pkgs+=(qemu-system-arm)
# The container engine tests (tests/test_docker*.py, docs/attach.md): Debian's Docker engine
# (brings containerd with ctr, and runc), Podman, and a static busybox for the test image.
# memprobe itself needs none of them at run time: it asks whichever engine it finds.
test_pkgs+=(docker.io podman busybox-static)
# The eBPF probe tests (tests/test_bpf*.py, docs/probes.md): bpftool lists loaded programs, to
# prove that none of ours is left after exit, Ctrl-C or SIGTERM.
test_pkgs+=(bpftool)
# The eBPF overhead bench (scripts/bench/bench_bpf.py, docs/performance.md) compares the probes with
# bpftrace's page-fault one-liner in the same run (Debian 12: bpftrace 0.17).
test_pkgs+=(bpftrace)
# The exporter tests (tests/test_export*.py, docs/export.md): a real Prometheus server scrapes
# `memprobe export`, and promtool checks and unit-tests the example alert rules. The tests start
# their own server on a free loopback port (on a host running systemd the package also enables
# its own prometheus.service on :9090; `systemctl disable --now prometheus` if unwanted).
test_pkgs+=(prometheus)
# The units' test (tests/test_flight_service.py): `systemd-analyze verify` loads
# scripts/*.service offline; setpriv (util-linux, essential) applies their capability bounds.
test_pkgs+=(systemd)
# The report tests (tests/test_report_render.py, docs/report.md): the HTML report is opened in a
# real headless browser (Debian chromium) and screenshotted.
test_pkgs+=(chromium)

want=("${run_pkgs[@]}")
[ "$mode" = --test ] && want+=("${test_pkgs[@]}")
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq -o DPkg::Lock::Timeout=300
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
fi

# tracefs: tracepoints and uprobes need it (docs/facts.md#f-vm)
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: could not mount tracefs (eBPF probes will be off)"
fi

# Kernel headers for bcc: without /lib/modules/$(uname -r)/build, merge Debian's -common and
# -<arch> header trees (symlinks, `cp -as`) into one tree; spark_memprobe/sources/bpf/bccload.py
# points BCC_KERNEL_SOURCE at it. Mismatched headers are why the BPF code reads only helpers
# and tracepoint fields, never kernel structs.
merged=/usr/src/memprobe-kernel-headers
if [ ! -d "/lib/modules/$(uname -r)/build/include" ]; then
    arch_dir=$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" 2>/dev/null | sort -V | tail -n 1 || true)
    common_dir=${arch_dir%-*}-common
    if [ -n "$arch_dir" ] && [ -d "$common_dir" ]; then
        if [ "$(cat "$merged/.memprobe-source" 2>/dev/null)" != "$arch_dir" ]; then
            rm -rf "$merged.tmp" && mkdir -p "$merged.tmp"
            cp -as "$common_dir/." "$merged.tmp/"
            cp -asf "$arch_dir/." "$merged.tmp/"
            echo "$arch_dir" > "$merged.tmp/.memprobe-source"
            rm -rf "$merged" && mv "$merged.tmp" "$merged"
        fi
    else
        echo "setup: no Debian kernel headers found under /usr/src (eBPF probes will not compile)"
    fi
fi

py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -U pip >/dev/null
if [ "$mode" = --test ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/pip install -q --disable-pip-version-check .
fi
