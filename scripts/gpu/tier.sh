#!/usr/bin/env bash
# The GPU test tier, on a GPU machine that has PyTorch and cupy but no bcc, no cffi and no
# package registry (docs/testing.md, "GPU tier"). Run from the repository root, as root, with
#   .whl/   cffi and pycparser wheels for this Python (pip download, see docs/testing.md)
#   .debs/  Debian bookworm's python3-bpfcc, libbpfcc, libbpf1, libllvm14, libclang-cpp14,
#           libz3-4, linux-headers-<ver>-common and -amd64 (apt-get download)
# and any pytest arguments after the script name (default: tests/gpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
work=${MEMPROBE_GPU_WORK:-/tmp/memprobe-gpu}
mkdir -p "$work"
"$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$work/site" .whl/*.whl
export PYTHONPATH="$work/site:$PWD"
# the native sampler, built in place (the tier compares it with the pure readers)
"$py" setup.py -q build_ext --inplace >"$work/build.log" 2>&1 || echo "gpu tier: native sampler not built (see $work/build.log)"
# bcc unpacked from Debian's packages, with the two header trees merged (scripts/setup.sh does
# the same on Debian); bcc's Python module and its libraries found through the environment
if [ ! -d "$work/bcc" ]; then
    for d in .debs/*.deb; do dpkg -x "$d" "$work/bcc"; done
    mkdir -p "$work/hdr"
    cp -as "$work"/bcc/usr/src/linux-headers-*-common/. "$work/hdr/"
    cp -asf "$work"/bcc/usr/src/linux-headers-*-amd64/. "$work/hdr/"
fi
export LD_LIBRARY_PATH="$work/bcc/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PYTHONPATH:$work/bcc/usr/lib/python3/dist-packages"
export BCC_KERNEL_SOURCE="$work/hdr"
[ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
exec "$py" -m pytest -p no:cacheprovider -v -s "${@:-tests/gpu}"
