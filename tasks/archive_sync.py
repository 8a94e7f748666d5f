"""Stage 1: copy every listed image from the CI registry into the archive (additive)."""

from __future__ import annotations

from layover.imagelist import ImageList
from layover.report import StageReport
from tasks.copying import Endpoints, copy_task
from tasks.fanout import fan_out

copy_to_archive = copy_task("archive-sync")


def sync_archive(images: ImageList, ends: Endpoints, *, concurrency: int, retries: int) -> StageReport:
    return fan_out(
        "archive sync", copy_to_archive.with_options(retries=retries), images.refs, ends, concurrency
    )
