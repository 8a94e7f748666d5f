#!/usr/bin/env bash
# The XFS variant: the incremental release with every work dir and output on one reflink XFS,
# layover against blog-overlay in the same run, so the tarball stage can clone instead of copy.
#
#   bench/xfs.sh [--scale 1.0] [--runs 3] [extra bench options]
#
# Makes a sparse 40 GiB file under /var/tmp, `mkfs.xfs -m reflink=1`, loop-mounts it, runs
# bench/run.sh with --work-root on it, and unmounts and deletes it on every exit path.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMG="$(mktemp /var/tmp/layover-bench-xfs.XXXXXX.img)"
MNT="$(mktemp -d /var/tmp/layover-bench-xfs.XXXXXX)"
cleanup() {
    mountpoint -q "$MNT" && umount "$MNT" || true
    rmdir "$MNT" 2>/dev/null || true
    rm -f "$IMG"
}
trap cleanup EXIT
truncate -s 40G "$IMG"
mkfs.xfs -q -m reflink=1 "$IMG"
mount -o loop "$IMG" "$MNT"
xfs_info "$MNT" | grep -q 'reflink=1' || { echo "xfs.sh: no reflink on $MNT" >&2; exit 1; }
"$REPO/bench/run.sh" --only incremental --runners blog-overlay,layover \
    --work-root "$MNT/work" "$@"
