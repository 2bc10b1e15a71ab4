#!/usr/bin/env bash
# The whole test suite (fast unit tests and the slower real-size/multi-process ones), in the cached venv,
# after the linters (ruff lint + format check, configured in pyproject.toml). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ruff check --quiet .
ruff format --check --quiet .
exec python -m pytest "$@"
