"""Stage 1: copy every listed image from the CI registry into the archive (additive).

Images whose current digest the archive already holds whole are found first, in one task (one
HEAD request each, in parallel): in an incremental release that is most of them, and they need
no copy task at all. Every other image gets its own retrying copy task.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.imagelist import ImageList
from layover.reference import ImageRef
from layover.report import ImageCopy, StageReport
from tasks.copying import Endpoints, already_archived, copy_task
from tasks.fanout import fan_out

copy_to_archive = copy_task("archive-sync")


@dataclass(frozen=True)
class ArchivePlan:
    present: tuple[ImageCopy, ...]  # already whole in the archive: nothing to copy
    todo: tuple[ImageRef, ...]


@task(name="archive-sync-plan", cache_policy=NO_CACHE)
def plan_archive_sync(images: ImageList, ends: Endpoints, concurrency: int) -> ArchivePlan:
    refs = images.refs
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        found = list(pool.map(lambda ref: already_archived(ref, ends), refs))
    present = tuple(f for f in found if f is not None)
    todo = tuple(ref for ref, f in zip(refs, found, strict=True) if f is None)
    get_run_logger().info(
        "archive sync: %d of %d images already archived, %d to copy", len(present), len(refs), len(todo)
    )
    return ArchivePlan(present, todo)


def sync_archive(images: ImageList, ends: Endpoints, *, concurrency: int, retries: int) -> StageReport:
    started = time.monotonic()
    plan = plan_archive_sync(images, ends, concurrency)
    copied = fan_out(
        "archive sync", copy_to_archive.with_options(retries=retries), plan.todo, ends, concurrency
    )
    return StageReport.from_copies("archive sync", time.monotonic() - started, [*plan.present, *copied])
