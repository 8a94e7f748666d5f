#!/bin/sh
# Layover: emit git.tag.pushed from a CI job that runs on tag pushes.
#
#   emit-tag-event.sh REPO_URL TAG [NAME]
#
# REPO_URL is what the build hosts fetch the images.list from (they need read access to it);
# NAME becomes the resource id git.repo.NAME (default: REPO_URL's last path component).
# Uses `prefect event emit` when the prefect CLI is on PATH, otherwise plain curl. Either way
# the server is $PREFECT_API_URL; a login, if the server needs one, comes from
# PREFECT_API_AUTH_STRING (prefect) or ~/.netrc (curl) provided by the CI's secret store.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 REPO_URL TAG [NAME]" >&2; exit 2; }
repo=$1 tag=$2
name=${3:-$(basename "$repo" .git)}
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://prefect.internal:4200/api}"

json() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
payload=$(printf '{"repo":"%s","tag":"%s"}' "$(json "$repo")" "$(json "$tag")")

if command -v prefect >/dev/null 2>&1; then
    exec prefect event emit git.tag.pushed --resource-id "git.repo.$name" \
        --resource "prefect.resource.name=$name" --payload "$payload"
fi
id=$(cat /proc/sys/kernel/random/uuid)
now=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
printf '[{"id":"%s","occurred":"%s","event":"git.tag.pushed","resource":{"prefect.resource.id":"git.repo.%s","prefect.resource.name":"%s"},"payload":%s}]' \
    "$id" "$now" "$(json "$name")" "$(json "$name")" "$payload" |
    curl --silent --show-error --fail --netrc-optional --max-time 15 \
        -H 'Content-Type: application/json' --data-binary @- "${PREFECT_API_URL%/}/events"
echo "sent git.tag.pushed for $tag of $repo" >&2
