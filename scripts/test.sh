#!/usr/bin/env bash
# The whole test suite (fast unit tests and the slower real-size/multi-process ones), in the cached venv.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec python -m pytest "$@"
