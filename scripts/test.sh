#!/usr/bin/env bash
# The README's test command: set up a fresh machine (as root) and run every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/python -m pytest tests "$@"
