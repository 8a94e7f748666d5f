#!/bin/sh
# Layover: run one build host's worker (foreground; see systemd/layover-worker.service).
#
#   LAYOVER_CHECKOUT=/opt/layover PREFECT_API_URL=http://prefect.internal:4200/api \
#       deployments/worker.sh build-a
#
# The worker polls the pool's `default` queue (schedule, UI, trigger runs) and the queue named
# after this host, and starts each flow run as a child process in $LAYOVER_CHECKOUT (the pull
# step in prefect.yaml reads that variable on this host). It must run as root: registries,
# overlay mounts and skopeo need it.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 HOST_QUEUE_NAME" >&2; exit 2; }
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://prefect.internal:4200/api}"
: "${LAYOVER_CHECKOUT:?set LAYOVER_CHECKOUT to this host's checkout of Layover}"
export LAYOVER_CHECKOUT
exec "$LAYOVER_CHECKOUT/.venv/bin/prefect" worker start --pool "${LAYOVER_POOL:-layover-builds}" \
    --work-queue default --work-queue "$1" --name "layover-$1" --type process
