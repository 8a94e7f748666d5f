"""Stage 4: write every listed image's manifests archive -> package.

By default without a registry (`package_sync: files`): each image's revision and tag links are
written into the merged view from the archive's records (layover/storage/publish.py), as the
registry's PUTs would write them; 602 images cost milliseconds instead of 3 s of HTTP and a
registry container's start and stop. `package_sync: registry` keeps the path below, through a
package registry; tests/integration/test_publish.py proves the two give the same tarball.

The pruned overlay kept every blob and `_layers` link, so each image costs a few HTTP PUTs of a
few milliseconds. A Prefect task per image costs about 40 ms of orchestration on a 2-core machine
(measured on the bench: 64 images, 3.3 s of stage for 0.7 s of copying), more than the work, so
this stage is one retrying task that copies the images on a thread pool and reports each one.
PUTting a manifest again is harmless, so a retry of the whole stage is safe.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover import progress
from layover.copy import ManifestCopier
from layover.diagnose import full_disk_named
from layover.errors import (
    ArchiveDamagedError,
    LayoverError,
    StageFailed,
    Transient,
    TransientCopyError,
    brief,
)
from layover.imagelist import ImageList
from layover.reference import ImageRef
from layover.report import ImageCopy, StageReport
from layover.storage.publish import publish
from layover.workdir import WorkDir
from tasks.retry import COPY_RETRY

STAGE = "package sync"


@task(name="package-sync", cache_policy=NO_CACHE, **COPY_RETRY)
def copy_manifests_to_package(
    refs: tuple[ImageRef, ...], copier: ManifestCopier, concurrency: int
) -> list[ImageCopy]:
    sink = progress.current()

    def one(ref: ImageRef) -> ImageCopy | BaseException:
        try:
            done = copier.copy(ref)
        except Exception as e:  # noqa: BLE001 - collected, then reported together below
            sink.image_done(STAGE, str(ref), ok=False)
            return e
        sink.image_done(STAGE, str(ref))
        return done

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        outcomes = list(pool.map(one, refs))
    failures = [(ref, o) for ref, o in zip(refs, outcomes, strict=True) if isinstance(o, BaseException)]
    if failures:
        message = f"{STAGE}: {len(failures)} image(s) failed"
        if all(isinstance(e, Transient) for _, e in failures):
            # Prefect retries the stage; the last attempt's failures are named if it gives up
            raise TransientCopyError(f"{message}: {'; '.join(f'{r}: {brief(e)}' for r, e in failures[:3])}")
        raise StageFailed(message, [(str(r), e) for r, e in failures])
    get_run_logger().info("%s: %d images written", STAGE, len(refs))
    return [o for o in outcomes if isinstance(o, ImageCopy)]


@task(name="package-sync-files", cache_policy=NO_CACHE)
def link_package(wd: WorkDir, images: ImageList) -> StageReport:
    started = time.monotonic()
    copies: list[ImageCopy] = []
    failures: list[tuple[str, BaseException]] = []
    with progress.stage(STAGE, images=len(images)) as sink:
        with full_disk_named(wd.upper, STAGE):  # the links land in the overlay's upper dir
            for ref in images.refs:
                t = time.monotonic()
                try:
                    done = publish(wd.archive, wd.package, ref)
                except LayoverError as e:  # every image checked, then all reported together
                    sink.image_done(STAGE, str(ref), ok=False)
                    failures.append((str(ref), e))
                    continue
                sink.image_done(STAGE, str(ref))
                copies.append(ImageCopy(str(ref), str(done.digest), 0, done.blobs, 0, time.monotonic() - t))
        damaged = [e for _, e in failures if isinstance(e, ArchiveDamagedError)]
        if damaged:  # the flow heals the archive and builds the package again (tasks/heal.py)
            blobs = list(dict.fromkeys(d for e in damaged for d in e.blobs))
            raise ArchiveDamagedError(
                damaged[0].path,
                f"{STAGE}: {len(blobs)} damaged manifest(s) in the archive; first: {damaged[0].reason}",
                blobs,
            )
        if failures:
            raise StageFailed(
                f"{STAGE}: {len(failures)} image(s) failed; the archive does not hold them whole: "
                f"`layover repair-archive {wd.root}` removes damaged files so that the next run "
                "fetches them again",
                failures,
            )
    get_run_logger().info("%s: %d images written", STAGE, len(copies))
    return StageReport.from_copies(STAGE, time.monotonic() - started, copies)


def sync_package(images: ImageList, copier: ManifestCopier, *, concurrency: int, retries: int) -> StageReport:
    started = time.monotonic()
    with progress.stage(STAGE, images=len(images)):
        copies = copy_manifests_to_package.with_options(retries=retries)(images.refs, copier, concurrency)
    return StageReport.from_copies(STAGE, time.monotonic() - started, copies)
