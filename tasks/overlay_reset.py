"""Stage 2: drop the last run's overlay and mount a fresh one over the archive."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.report import StageReport
from layover.workdir import WorkDir


@task(name="overlay-reset", cache_policy=NO_CACHE)
def reset_overlay(wd: WorkDir) -> StageReport:
    started = time.monotonic()
    wd.lower.mkdir(parents=True, exist_ok=True)
    overlay.reset(wd.lower, wd.upper, wd.work, wd.merged)
    return StageReport("overlay reset", time.monotonic() - started, detail=f"mounted {wd.merged}")


@task(name="overlay-unmount", cache_policy=NO_CACHE)
def unmount_overlay(wd: WorkDir) -> None:
    if overlay.is_mounted(wd.merged):
        overlay.unmount(wd.merged)
