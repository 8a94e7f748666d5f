"""Stage 4: copy every listed image archive -> package; blobs are already there, so only
manifests are written (the pruned overlay kept every blob and `_layers` link)."""

from __future__ import annotations

import time

from layover.imagelist import ImageList
from layover.report import StageReport
from tasks.copying import Endpoints, copy_task
from tasks.fanout import fan_out

copy_to_package = copy_task("package-sync")


def sync_package(images: ImageList, ends: Endpoints, *, concurrency: int, retries: int) -> StageReport:
    started = time.monotonic()
    copies = fan_out(
        "package sync", copy_to_package.with_options(retries=retries), images.refs, ends, concurrency
    )
    return StageReport.from_copies("package sync", time.monotonic() - started, copies)
