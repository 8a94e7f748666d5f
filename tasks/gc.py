"""Stage 5: mark-and-sweep the package storage (the merged view; `lower` is never written).

The package registry is stopped before this runs: deleting under a running registry leaves its
blob-descriptor cache stale (docs/design.md §3).
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.diagnose import full_disk_named
from layover.imagelist import ImageList
from layover.report import StageReport
from layover.storage.gc import plan_gc
from layover.storage.images import pinned_roots
from layover.storage.vacuum import apply_gc, remove_empty_dirs
from layover.workdir import WorkDir


@task(name="garbage-collect", cache_policy=NO_CACHE)
def collect_garbage(wd: WorkDir, images: ImageList) -> StageReport:
    started = time.monotonic()
    plan = plan_gc(wd.package, extra_roots=pinned_roots(images))
    get_run_logger().info("gc plan: %s", plan.summary())
    with full_disk_named(wd.upper, "GC"):  # whiteouts land in the overlay's upper dir
        apply_gc(plan)
        # Empty dirs a killed archive prune left in lower would otherwise be packaged (docs/retention.md).
        remove_empty_dirs(wd.package)
    return StageReport("gc", time.monotonic() - started, detail=plan.summary())
