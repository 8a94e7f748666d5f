"""Stage 3: prune every `_manifests` in the merged view (never under a running registry)."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.diagnose import full_disk_named
from layover.report import StageReport
from layover.storage.prune import prune_manifests
from layover.workdir import WorkDir


@task(name="prune-manifests", cache_policy=NO_CACHE)
def prune(wd: WorkDir) -> StageReport:
    started = time.monotonic()
    hide = overlay.whiteout_hider(wd.lower, wd.upper, wd.work, wd.merged)
    with full_disk_named(wd.upper, "manifest pruning"):  # whiteouts land in the overlay's upper dir
        result = prune_manifests(wd.archive, wd.package, hide)
    return StageReport(
        "manifest pruning",
        time.monotonic() - started,
        detail=f"{result.pruned} of {result.repositories} repositories pruned",
    )
