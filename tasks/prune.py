"""Stage 3: prune every `_manifests` in the merged view (never under a running registry)."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.storage.prune import PruneResult, prune_manifests
from layover.report import StageReport
from layover.workdir import WorkDir


@task(name="prune-manifests", cache_policy=NO_CACHE)
def prune(wd: WorkDir) -> StageReport:
    started = time.monotonic()
    if overlay.can_hide(wd.merged):
        # same merged view as deleting, one whiteout per repository (see overlay.hide_in_upper)
        archive = wd.archive
        names = archive.repository_names()
        present = [n for n in names if archive.manifests(n).is_dir()]
        overlay.hide_in_upper(
            wd.lower, wd.upper, wd.work, wd.merged,
            [archive.manifests(n).relative_to(wd.lower).as_posix() for n in present],
        )
        result = PruneResult(len(names), len(present))
    else:
        result = prune_manifests(wd.package)
    return StageReport(
        "manifest pruning",
        time.monotonic() - started,
        detail=f"{result.pruned} of {result.repositories} repositories pruned",
    )
