#!/usr/bin/env bash
# README command 1: set up this host (apt, dockerd, venv, registry image), then package two
# sample releases end to end on local registries with Prefect's embedded server.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
exec "$REPO/.venv/bin/python" "$REPO/scripts/demo.py" "$@"
