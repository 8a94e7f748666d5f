"""Stage 6: prove the package serves every listed image, bit for bit, and nothing else."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.storage.images import mismatches
from layover.errors import VerifyError
from layover.imagelist import ImageList
from layover.report import StageReport
from layover.storage.verify import verify_storage
from layover.workdir import WorkDir


@task(name="verify-package", cache_policy=NO_CACHE)
def verify_package(wd: WorkDir, images: ImageList) -> StageReport:
    started = time.monotonic()
    report = verify_storage(wd.package, images)
    get_run_logger().info("verify: %s", report.summary())
    report.raise_for_problems()
    wrong = mismatches(wd.archive, wd.package, images)
    if wrong:
        raise VerifyError(
            "the package does not match the archive, no tarball written: " + "; ".join(wrong[:10])
        )
    return StageReport("verify", time.monotonic() - started, detail=report.summary().splitlines()[0])
