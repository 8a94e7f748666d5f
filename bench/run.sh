#!/usr/bin/env bash
# Run the benchmark: bench/run.sh [--scale 1.0] [--runs 3] [--only cold|incremental]
# Writes bench/results/<date>.md (+ .json) and prints the table. Needs root, dockerd, skopeo.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$REPO/.venv/bin/python" -m bench "$@"
