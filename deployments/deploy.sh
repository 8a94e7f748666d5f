#!/bin/sh
# Layover: check the deploy settings, store the typed ones as Prefect variables, then
# `prefect deploy --all` from the repository root. Idempotent: run it again after any change.
# Unset variables would otherwise be stored as literal "{{ $VAR }}" text in the deployments.
set -eu
cd "$(dirname "$0")/.."
missing=
for v in PREFECT_API_URL LAYOVER_LIST_REPO LAYOVER_RELEASE_BRANCH LAYOVER_SOURCE \
         LAYOVER_WORK_DIR LAYOVER_OUTPUT_DIR LAYOVER_TIMEZONE; do
    eval "val=\${$v:-}"
    [ -n "$val" ] || missing="$missing $v"
done
if [ -n "$missing" ]; then
    echo "deploy: set$missing (see deployments/deploy.env.example)" >&2
    exit 2
fi
tls=${LAYOVER_SRC_TLS_VERIFY:-true}
case "$tls" in true|false) ;; *) echo "deploy: LAYOVER_SRC_TLS_VERIFY must be true or false" >&2; exit 2 ;; esac
# A JSON boolean: prefect.yaml reads it as {{ prefect.variables.layover_src_tls_verify }}.
prefect variable set layover_src_tls_verify "$tls" --overwrite >/dev/null
exec prefect --no-prompt deploy --all
