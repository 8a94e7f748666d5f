#!/usr/bin/env bash
# Prepare a fresh Debian 12 host (as root) to build and test Layover. Idempotent: every step
# checks first and only does what is missing, so it is safe to run again at any time.
#
#   scripts/setup.sh            # from any directory
#
# Steps: apt packages -> dockerd (loopback only) -> $REPO/.venv with layover[test] -> registry image.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
DOCKERD_LOG=/var/log/layover-dockerd.log
# Runtime: docker.io skopeo docker-registry fuse-overlayfs git. For the test suite:
# apache2-utils (htpasswd, auth tests), e2fsprogs + xfsprogs + btrfs-progs (loop-disk and
# reflink tests), libarchive-tools (bsdtar extracts our tarballs), postgresql (two-host Prefect
# test), chromium (renders the Prefect UI in the deployment test).
PACKAGES=(docker.io skopeo docker-registry fuse-overlayfs git apache2-utils e2fsprogs xfsprogs
          btrfs-progs libarchive-tools postgresql chromium strace)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "run as root (apt-get, dockerd and overlay mounts need it)"

# --- 1. apt packages ---------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    say "installing apt packages: ${missing[*]}"
    apt-get update -q || die "apt-get update failed; check the Debian mirror in /etc/apt/sources.list*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed; see the output above"
else
    say "apt packages present: ${PACKAGES[*]}"
fi

# --- 2. dockerd --------------------------------------------------------------------------
# No bridge and no iptables rules: our registries use host networking on 127.0.0.1, and nothing
# of ours may reach the engine's private 172.16/12 bridge addresses.
if docker info >/dev/null 2>&1; then
    say "docker engine already answers; leaving it alone"
elif pgrep -x dockerd >/dev/null; then
    say "a dockerd is already running (pid $(pgrep -x dockerd | tr '\n' ' ')); waiting for its socket"
else
    say "starting dockerd --bridge=none --iptables=false (log: $DOCKERD_LOG)"
    nohup dockerd --bridge=none --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
    disown || true
fi
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
done
docker info >/dev/null 2>&1 \
    || die "docker engine did not answer within 60 s; see $DOCKERD_LOG (tail -50 $DOCKERD_LOG)"
say "docker engine is up"

# --- 3. Python venv ----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating venv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed; apt-get install python3-venv"
fi
# Checked from / so a layover/ in the caller's cwd cannot pass for an installed one.
installed="$(cd / && "$VENV/bin/python" -c 'import layover, pytest; print(layover.__file__)' 2>/dev/null || true)"
if [[ "$installed" == "$REPO/"* ]]; then
    say "layover already importable in $VENV"
else
    say "installing layover[test] into $VENV (editable)"
    "$VENV/bin/pip" install -q -e "$REPO[test]" || die "pip install -e '$REPO[test]' failed; see the output above"
fi

# --- 4. registry image -------------------------------------------------------------------
image="$("$VENV/bin/python" -m layover.adapters.registry_image)" \
    || die "could not provide a registry image; see the error above"
say "registry image: $image"
say "done"
