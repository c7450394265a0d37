#!/usr/bin/env bash
# Run by: users. User commands live in scripts/, maintainer tools in tools/.
# The test suite: set-up (idempotent), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${FEDSM_VENV:-.venv}/bin/python" -m pytest "$@"
