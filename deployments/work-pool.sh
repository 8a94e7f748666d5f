#!/bin/sh
# Layover: create (or update) the work pool and the per-host work queues. Idempotent.
#
#   PREFECT_API_URL=http://prefect.internal:4200/api deployments/work-pool.sh build-a build-b
#
# One process-type pool, `layover-builds`, shared by every build host. Runs created by the
# schedule, the UI or a trigger go to its `default` queue; each host also gets a queue named
# after it so a run can be aimed at that host's work dir (`--work-queue build-a`). Start each
# host's worker with deployments/worker.sh.
set -eu
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
pool=${LAYOVER_POOL:-layover-builds}

if prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool exists"
else
    prefect work-pool create "$pool" --type process
fi
for host in "$@"; do
    if prefect work-queue inspect "$host" --pool "$pool" >/dev/null 2>&1; then
        echo "work queue $host exists"
    else
        prefect work-queue create "$host" --pool "$pool"
    fi
done
