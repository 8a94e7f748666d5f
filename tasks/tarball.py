"""Stage 7: write the release tarball (temp name, fsync, rename) with .sha256 and .json beside it."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover.adapters.tar_writer import OverlayTree, write_tarball
from layover.report import StageReport
from layover.units import human_bytes
from layover.workdir import WorkDir


@task(name="write-tarball", cache_policy=NO_CACHE)
def write_release_tarball(wd: WorkDir, output: Path) -> tuple[StageReport, str, int]:
    started = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    result = write_tarball(OverlayTree(merged=wd.merged, upper=wd.upper, lower=wd.lower), output)
    detail = (
        f"{result.files} files; cloned {human_bytes(result.bytes_cloned)}, "
        f"in-kernel {human_bytes(result.bytes_kernel_copied)}, "
        f"user space {human_bytes(result.bytes_user_copied)}"
    )
    stage = StageReport("tarball", time.monotonic() - started, bytes_moved=result.size, detail=detail)
    return stage, result.sha256, result.size
