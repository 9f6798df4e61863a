#!/usr/bin/env bash
# The README's test command: set up a fresh machine (as root) and run every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
rc=0
.venv/bin/python -m pytest tests "$@" || rc=$?
# The cgroup v2 tier: tests/v2 in a qemu guest with pure cgroup v2 (docs/testing.md).
# MEMPROBE_V2_TIER=0 leaves it out.
if [ "${MEMPROBE_V2_TIER:-1}" != 0 ]; then
    .venv/bin/python scripts/qemu/v2_tier.py || rc=$?
fi
# The arm64 tier: pip install ., parity, live cgroup v2, eBPF probes and page sizes in an arm64
# qemu guest (4 KiB and 16 KiB pages; docs/testing.md). MEMPROBE_ARM64_TIER=0 leaves it out.
if [ "${MEMPROBE_ARM64_TIER:-1}" != 0 ]; then
    .venv/bin/python scripts/qemu/arm64_tier.py || rc=$?
fi
exit $rc
