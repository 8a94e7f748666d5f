#!/usr/bin/env bash
# README command 2: set up this host if needed, then run the whole test suite (unit,
# integration on real docker/skopeo/overlayfs/Prefect, and the slow ones).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec "$REPO/.venv/bin/pytest" "$@"
