"""Stage 6: prove the package serves every listed image, bit for bit, and nothing else.

`images` is the package's list (listed images plus their attached artifacts, layover/attached.py);
with the run's attachment record, the package's attachments must also be exactly those the source
had at sync time."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.attached import AttachedRecord
from layover.attached_storage import attached_differences
from layover.errors import ArchiveDamagedError, VerifyError
from layover.imagelist import ImageList
from layover.report import StageReport
from layover.storage.images import mismatches
from layover.storage.verify import verify_storage
from layover.workdir import WorkDir


@task(name="verify-package", cache_policy=NO_CACHE)
def verify_package(
    wd: WorkDir, images: ImageList, attached: AttachedRecord | None = None, *, hash_blobs: bool = True
) -> StageReport:
    """`hash_blobs=False`: the tarball stage hashes every blob as it writes it and publishes
    nothing if one differs (tasks/tarball.py), so blob data is read once, not twice."""
    started = time.monotonic()
    report = verify_storage(wd.package, images, hash_blobs=hash_blobs)
    get_run_logger().info("verify: %s", report.summary())
    if report.damaged_blobs:  # the flow heals the archive and builds the package again (tasks/heal.py)
        first = next(p for p in report.problems if p.blob is not None)
        raise ArchiveDamagedError(
            first.path,
            f"verify: {len(report.damaged_blobs)} blob(s) do not hash to their names; first: {first.message}",
            sorted(report.damaged_blobs),
        )
    report.raise_for_problems()
    wrong = mismatches(wd.archive, wd.package, images)
    if wrong:
        raise VerifyError(
            "the package does not match the archive, no tarball written: " + "; ".join(wrong[:10])
        )
    differ = attached_differences(wd.package, attached) if attached is not None else []
    if differ:
        raise VerifyError(
            "the package's attached artifacts are not the source's at sync time, no tarball written: "
            + "; ".join(differ[:10])
        )
    return StageReport("verify", time.monotonic() - started, detail=report.summary().splitlines()[0])
