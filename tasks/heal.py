"""Archive heal: put back archive blobs that package sync or verify found damaged, in the same run.

A blob in lower/ whose content does not hash to its name (truncated, overwritten, bit rot) is
invisible to archive sync, which stats and never hashes; package sync (manifests, which it reads)
or verify (every blob of the package) finds it, and raises ArchiveDamagedError. The flow then
runs this once and builds the package again (docs/design.md §1, stage 1c):

    unmount the overlay          lower/ is written only while nothing is mounted over it
    hash the named blobs again   in lower/ itself: the damage is the archive's, not the view's
    repair (layover/storage/repair.py, the code `layover repair-archive` runs): move the damaged
                                 files into <work_dir>/quarantine/<UTC time>/, then fetch each
                                 blob again from the source through the archive registry
                                 (layover/adapters/registry_copy.py: refetch), hashed on the way

A blob the source no longer has fails the run with one line naming the blob, the images that
need it and what to do; nothing ships. This is the archive sync's code path (it adds to lower/
through the archive registry), not a second writer of the archive.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.adapters.registry_client import RegistryClient
from layover.adapters.registry_copy import Wanted, refetch
from layover.errors import ArchiveDamagedError, StorageError
from layover.imagelist import ImageList
from layover.reference import Digest
from layover.registries import RunRegistries
from layover.report import StageReport
from layover.storage.repair import needed_by, repair, scan
from layover.workdir import WorkDir


@task(name="archive-heal", cache_policy=NO_CACHE)
def heal_archive(
    wd: WorkDir, images: ImageList, damage: ArchiveDamagedError, regs: RunRegistries, source: RegistryClient
) -> StageReport:
    started = time.monotonic()
    logger = get_run_logger()
    logger.warning("archive heal: %s", damage)
    if overlay.is_mounted(wd.merged):
        overlay.unmount(wd.merged)
    plan = scan(wd.archive, [Digest(h) for h in damage.blobs])
    needs = needed_by(wd.archive, images.refs, [f.digest for f in plan.findings if f.digest is not None])
    archive = regs.serve_archive()
    try:
        destination = regs.client(archive)

        def fetch(blobs: Sequence[Digest]) -> Sequence[Digest]:
            return refetch(
                source, destination, [Wanted(d, needs[d].repositories, needs[d].manifest) for d in blobs]
            )

        done = repair(plan, wd.quarantine_for(datetime.now()), fetch)
    finally:
        regs.stop(archive)
    if done.lost:
        first = done.lost[0]
        need = needs[first]
        more = (
            f" (and {len(done.lost) - 1} more damaged blob(s) the source lacks)" if len(done.lost) > 1 else ""
        )
        raise StorageError(
            str(wd.archive.blob_data(first)),
            f"archive blob {first} did not hash to its name and the source {source.host} no longer has "
            f"it{more}; needed by {', '.join(need.images) or 'no listed image'}; the damaged file is kept "
            f"in {done.quarantine}. Push those images to the source again (or restore the blob from a "
            "backup of the archive), or drop them from the list, and run again; nothing shipped",
        )
    detail = (
        f"{len(done.fetched)} damaged blob(s) fetched again from {source.host}; damaged files moved to "
        f"{done.quarantine}"
        if done.moved
        else "the damage was not in the archive; package built again"
    )
    logger.warning("archive heal: %s", detail)
    return StageReport(
        "archive heal", time.monotonic() - started, blobs_copied=len(done.fetched), detail=detail
    )
