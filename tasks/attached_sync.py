"""Stage 1b: signatures, attestations, SBOMs and other referrers of every listed image, from the
source into the archive (layover/attached_sync.py), and the package's list they add to.

Discovery for the images archive sync's plan found already archived starts right after the plan
(`discovering`, one task with its own threads) and runs while archive sync copies the others:
in an incremental release that is most images, and discovery asks ~5 requests per signed image
where archive sync asked one HEAD, so run after the copies it would add seconds to the release
that overlapped it adds far less of (docs/benchmarks.md). The stage itself (`attach`) then
discovers only the images that were copied and copies what is new for all.

Transient failures are retried per image inside the tasks (layover/attached_sync.py says why),
so the tasks themselves have no Prefect retries: one retry layer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from layover.attached import AttachedMode
from layover.attached_sync import (
    AttachedSync,
    AttachedSyncer,
    Discovered,
    discover_each,
    skipped,
    sync_attached,
)
from layover.copy import Route
from layover.imagelist import ImageList
from layover.reference import ImageRef
from layover.report import StageReport

STOP_WAIT_SECONDS = 10.0


@contextmanager
def attached_syncer(route: Route, mode: AttachedMode) -> Iterator[AttachedSyncer | None]:
    """The clients both attached tasks share (so the early discovery's tag listings, fetched
    manifests and request counts serve the stage too); none for `--attached none`."""
    if mode == "none":
        yield None
        return
    with AttachedSyncer.open(route) as syncer:
        yield syncer


@task(name="attached-discovery-early", cache_policy=NO_CACHE)
def discover_archived(
    refs: tuple[ImageRef, ...], syncer: AttachedSyncer, concurrency: int, retries: int, stop: threading.Event
) -> Discovered:
    logger = get_run_logger()
    done = discover_each(
        refs, syncer, concurrency=concurrency, retries=retries, log=logger.warning, stop=stop
    )
    logger.info(
        "attached sync: %d of %d already archived image(s) discovered in %.2f s alongside archive sync",
        len(done.found),
        len(refs),
        done.seconds,
    )
    return done


class EarlyDiscovery:
    """The running discovery of the already archived images."""

    def __init__(self, future: PrefectFuture[Discovered], stop: threading.Event) -> None:
        self._future = future
        self._stop = stop

    def result(self) -> Discovered:
        """Its outcome, once it is done; a task that failed outright leaves every image to the
        stage (which discovers them again, and names what fails)."""
        outcome = self._future.result(raise_on_failure=False)
        return outcome if isinstance(outcome, Discovered) else Discovered({})

    def stop(self) -> None:
        """Start no image more, and wait a little for the ones under way (they use the clients,
        closed next): a run that is stopping must not hang on a source that stopped answering,
        and what they find is not used."""
        self._stop.set()
        self._future.wait(timeout=STOP_WAIT_SECONDS)


@contextmanager
def discovering(
    syncer: AttachedSyncer | None, refs: Sequence[ImageRef], *, concurrency: int, retries: int
) -> Iterator[EarlyDiscovery | None]:
    """Discovery for `refs` runs while the body does; when the body fails, it is stopped (and
    waited for) before the failure goes on. None when there is nothing to discover early."""
    if syncer is None or not refs:
        yield None
        return
    stop = threading.Event()
    early = EarlyDiscovery(discover_archived.submit(tuple(refs), syncer, concurrency, retries, stop), stop)
    try:
        yield early
    except BaseException:
        early.stop()
        raise


@task(name="attached-sync", cache_policy=NO_CACHE)
def copy_attached(
    images: ImageList,
    syncer: AttachedSyncer | None,
    mode: AttachedMode,
    concurrency: int,
    retries: int,
    early: EarlyDiscovery | None,
) -> AttachedSync:
    logger = get_run_logger()
    if mode == "none" or syncer is None:
        return skipped(images)
    waiting = time.monotonic()
    discovered = early.result() if early is not None else None
    waited = time.monotonic() - waiting
    done = sync_attached(
        images, syncer, mode, concurrency=concurrency, retries=retries, log=logger.warning, early=discovered
    )
    done = replace(done, discovery_seconds=waited + done.discovery_seconds)
    logger.info(
        "attached sync: %s on %d listed image(s); %d request(s) to the source",
        done.record.counts,
        len(done.record.images),
        sum(done.requests.values()),
    )
    return done


def attach(
    images: ImageList,
    syncer: AttachedSyncer | None,
    mode: AttachedMode,
    *,
    concurrency: int,
    retries: int,
    early: EarlyDiscovery | None = None,
) -> tuple[StageReport, AttachedSync]:
    """The stage; waiting for the early discovery counts in its seconds, as discovery."""
    started = time.monotonic()
    done = copy_attached(images, syncer, mode, concurrency, retries, early)
    return done.stage(time.monotonic() - started), done
