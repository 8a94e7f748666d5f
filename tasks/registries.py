"""Before and after a run: what a killed run left, and what this run must not leave.

The registry containers themselves are the flow's `with registries(wd)` (layover/registries.py);
these tasks handle the rest of a work dir's disposable state and show in the run's timeline.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.adapters.tar_writer import partial_files
from layover.registries import RunRegistries
from layover.workdir import WorkDir


@task(name="clear-stale-state", cache_policy=NO_CACHE)
def clear_stale(wd: WorkDir, output: Path) -> None:
    """Undo what a killed run of this work dir left behind: the overlay mount, half-written
    tarballs, a decoded credentials file (its containers went when `registries` was entered).

    Archive sync must not run while anything is mounted over `lower` (docs/design.md §1)."""
    mounted = overlay.is_mounted(wd.merged)
    if mounted:
        overlay.unmount(wd.merged)
    partial = partial_files(output)
    for p in partial:
        p.unlink(missing_ok=True)
    wd.src_auth.unlink(missing_ok=True)
    if mounted or partial:
        get_run_logger().warning(
            "cleaned up after an earlier run: overlay %s, %d partial tarball(s) removed",
            "unmounted" if mounted else "was not mounted",
            len(partial),
        )


@task(name="teardown", cache_policy=NO_CACHE)
def teardown(wd: WorkDir, regs: RunRegistries) -> None:
    """Stop every registry of this work dir, then unmount the overlay (a registry serving merged
    would keep it busy), then drop the credentials file; on success and failure alike."""
    try:
        regs.stop_all()
    finally:
        wd.src_auth.unlink(missing_ok=True)
        if overlay.is_mounted(wd.merged):
            overlay.unmount(wd.merged)
