"""Stage 1b: signatures, attestations, SBOMs and other referrers of every listed image, from the
source into the archive (layover/attached_sync.py), and the package's list they add to.

One task; transient failures are retried per image inside it (layover/attached_sync.py says why),
so the task itself has no Prefect retries: one retry layer.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.attached import AttachedMode
from layover.attached_sync import AttachedSync, AttachedSyncer, skipped, sync_attached
from layover.copy import Route
from layover.imagelist import ImageList
from layover.report import StageReport


@task(name="attached-sync", cache_policy=NO_CACHE)
def copy_attached(
    images: ImageList, route: Route, mode: AttachedMode, concurrency: int, retries: int
) -> AttachedSync:
    logger = get_run_logger()
    if mode == "none":
        return skipped(images)
    with AttachedSyncer.open(route) as syncer:
        done = sync_attached(
            images, syncer, mode, concurrency=concurrency, retries=retries, log=logger.warning
        )
    logger.info(
        "attached sync: %s on %d listed image(s); %d request(s) to the source",
        done.record.counts,
        len(done.record.images),
        sum(done.requests.values()),
    )
    return done


def attach(
    images: ImageList, route: Route, mode: AttachedMode, *, concurrency: int, retries: int
) -> tuple[StageReport, AttachedSync]:
    started = time.monotonic()
    done = copy_attached(images, route, mode, concurrency, retries)
    return done.stage(time.monotonic() - started), done
