"""Stage 1: copy every listed image from the CI registry into the archive (additive).

Images whose current digest the archive already holds whole are found first, in one task (one
HEAD request each, in parallel): in an incremental release that is most of them, and they cost
no copy at all. The others are copied by at most `concurrency` worker tasks that take images
from one shared queue until it is empty: the task count follows the work (none when nothing
needs copying, never more than the concurrency), and Prefect's ~20 ms of server CPU per task run
is paid a few times, not once per image (docs/benchmarks.md, the wide fixture). Each worker
logs every image it copied and leaves a table artifact with one row per image, so the UI still
shows image by image what moved.

The flow runs the stage in two calls, `plan_archive` then `sync_archive`, so that it can start
attached discovery for the images the plan found archived while the others copy.

Retries are per image inside the worker (layover/converge.py): an attempt that landed blobs
does not spend the budget, and a source that stops answering ends the stage with one line.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from layover import progress
from layover.adapters.registry_copy import Landed
from layover.converge import RetryPolicy, SourceWatch, converge
from layover.copy import SkopeoCopier
from layover.errors import LayoverError, SourceUnreachableError, StageFailed
from layover.imagelist import ImageList
from layover.reference import ImageRef
from layover.report import ImageCopy, StageReport
from layover.units import human_bytes
from tasks.fanout import MAX_CONCURRENCY

STAGE = "archive sync"


@dataclass(frozen=True)
class ArchivePlan:
    present: tuple[ImageCopy, ...]  # already whole in the archive: nothing to copy
    todo: tuple[ImageRef, ...]
    archived: tuple[ImageRef, ...] = ()  # the listed references of `present`
    started: float = 0.0  # the stage's clock (time.monotonic) when planning began


@task(name="archive-sync-plan", cache_policy=NO_CACHE)
def plan_archive_sync(images: ImageList, copier: SkopeoCopier, concurrency: int) -> ArchivePlan:
    refs = images.refs
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        found = list(pool.map(copier.already_there, refs))
    present = tuple(f for f in found if f is not None)
    todo = tuple(ref for ref, f in zip(refs, found, strict=True) if f is None)
    get_run_logger().info(
        "archive sync: %d of %d images already archived, %d to copy", len(present), len(refs), len(todo)
    )
    archived = tuple(ref for ref, f in zip(refs, found, strict=True) if f is not None)
    return ArchivePlan(present, todo, archived)


def _attempt(copier: SkopeoCopier, ref: ImageRef, landed: Landed) -> ImageCopy:
    return copier.copy(ref, landed)


class WorkQueue:
    """The images still to copy, shared by a stage's workers (thread-safe)."""

    def __init__(self, refs: Sequence[ImageRef]) -> None:
        self._todo = list(reversed(refs))
        self._lock = threading.Lock()
        self.total = len(refs)

    def take(self) -> ImageRef | None:
        with self._lock:
            return self._todo.pop() if self._todo else None

    def drain(self) -> None:
        with self._lock:
            self._todo.clear()


@dataclass(frozen=True)
class Copies:
    copies: tuple[ImageCopy, ...]
    failures: tuple[tuple[str, BaseException], ...]


@task(
    name="archive-sync-copy",
    task_run_name="archive-sync: copier {number} of {workers}",
    cache_policy=NO_CACHE,
)
def copy_to_archive(
    queue: WorkQueue,
    copier: SkopeoCopier,
    policy: RetryPolicy,
    watch: SourceWatch,
    stage_started: float,
    number: int,
    workers: int,
) -> Copies:
    """Copy images from the queue until it is empty; every failure is kept and raised at the end
    (so one bad image does not keep the others out of the archive)."""
    logger = get_run_logger()
    sink = progress.current()
    copies: list[ImageCopy] = []
    failures: list[tuple[str, BaseException]] = []
    while (ref := queue.take()) is not None:
        sink.image_started(STAGE, str(ref))
        try:
            done = converge(
                str(ref),
                functools.partial(_attempt, copier, ref),
                policy,
                watch,
                stage_started=stage_started,
            )
        except SourceUnreachableError:
            sink.image_done(STAGE, str(ref), ok=False)
            queue.drain()  # the others stop taking images too
            raise
        except LayoverError as e:
            sink.image_done(STAGE, str(ref), ok=False)
            logger.warning("%s: failed: %s", ref, e)
            failures.append((str(ref), e))
            continue
        sink.image_done(STAGE, str(ref), bytes_copied=done.bytes_copied)
        copies.append(done)
        logger.info(
            "%s: %d blob(s) copied (%s), %d reused, %d attempt(s), %.2f s",
            ref,
            done.blobs_copied,
            human_bytes(done.bytes_copied),
            done.blobs_reused,
            done.attempts,
            done.seconds,
        )
    if copies:
        create_table_artifact(
            table=[
                {
                    "image": c.image,
                    "digest": c.manifest_digest or "",
                    "blobs copied": c.blobs_copied,
                    "blobs reused": c.blobs_reused,
                    "bytes": c.bytes_copied,
                    "attempts": c.attempts,
                    "seconds": round(c.seconds, 2),
                }
                for c in copies
            ],
            description=f"archive sync, copier {number} of {workers}: {len(copies)} image(s) copied",
        )
    if failures:
        raise StageFailed(f"archive sync: {len(failures)} image(s) failed", failures)
    return Copies(tuple(copies), ())


def plan_archive(images: ImageList, copier: SkopeoCopier, *, concurrency: int) -> ArchivePlan:
    """The stage's first half: which images the archive already holds. The flow has the plan
    so that work needing only archived images (attached discovery) can start now."""
    started = time.monotonic()
    return replace(plan_archive_sync(images, copier, concurrency), started=started)


def sync_archive(
    plan: ArchivePlan, copier: SkopeoCopier, watch: SourceWatch, *, concurrency: int, policy: RetryPolicy
) -> StageReport:
    """The second half: copy what the plan left to copy (inside the flow's `archive sync`
    progress stage); the stage's seconds count from the plan's start."""
    sink = progress.current()
    for present in plan.present:
        sink.image_done(STAGE, present.image)
    copied = _copy_all(plan.todo, copier, watch, policy, concurrency, plan.started)
    return StageReport.from_copies(STAGE, time.monotonic() - plan.started, [*plan.present, *copied])


def _copy_all(
    todo: tuple[ImageRef, ...],
    copier: SkopeoCopier,
    watch: SourceWatch,
    policy: RetryPolicy,
    concurrency: int,
    started: float,
) -> list[ImageCopy]:
    """At most `concurrency` copier tasks drain one queue; failures are named in list order."""
    if not todo:
        return []
    queue = WorkQueue(copier.copy_order(todo))
    workers = max(1, min(concurrency, MAX_CONCURRENCY, len(todo)))
    futures = [
        copy_to_archive.submit(queue, copier, policy, watch, started, n, workers)
        for n in range(1, workers + 1)
    ]
    copied: list[ImageCopy] = []
    failures: list[tuple[str, BaseException]] = []
    down: SourceUnreachableError | None = None
    for future in futures:
        outcome = future.result(raise_on_failure=False)
        if isinstance(outcome, SourceUnreachableError):
            down = down or outcome
        elif isinstance(outcome, StageFailed):
            failures += outcome.failures
        elif isinstance(outcome, BaseException):
            failures.append((f"copier {futures.index(future) + 1}", outcome))
        else:
            copied += outcome.copies
    if down is not None:
        raise down  # one line naming the source, not one per image
    if failures:
        order = {str(r): i for i, r in enumerate(todo)}
        failures.sort(key=lambda f: order.get(f[0], len(order)))
        raise StageFailed(f"archive sync: {len(failures)} image(s) failed", failures)
    return copied
