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
# What the tests need on top: a real terminal for the TUI test.
test_pkgs=(tmux)

want=("${run_pkgs[@]}")
[ "$mode" = --test ] && want+=("${test_pkgs[@]}")
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tracefs: tracepoints and uprobes need it (DESIGN.md section 5)
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: could not mount tracefs (eBPF probes will be off)"
fi

py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -U pip >/dev/null
if [ "$mode" = --test ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/pip install -q --disable-pip-version-check .
fi
