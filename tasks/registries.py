"""Before and after a run: what a killed run left, and what this run must not leave.

The registry containers themselves are the flow's `with registries(wd)` (layover/registries.py);
these tasks handle the rest of a work dir's disposable state and show in the run's timeline.
"""

from __future__ import annotations

import socket
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.adapters import flow_runs, overlay
from layover.adapters.lock import DeadHolder
from layover.adapters.tar_writer import partial_files
from layover.registries import RunRegistries
from layover.workdir import WorkDir


@task(name="clear-stale-state", cache_policy=NO_CACHE)
def clear_stale(wd: WorkDir, output: Path, dead: DeadHolder | None = None) -> None:
    """Undo what a killed run of this work dir left behind: the overlay mount, half-written
    tarballs, a decoded credentials file (its containers went when `registries` was entered),
    and a Prefect flow run left RUNNING by a process that died holding the work dir (`dead`,
    from the lock file): it is marked CRASHED.

    Archive sync must not run while anything is mounted over `lower` (docs/design.md §1)."""
    if dead is not None:
        mark_crashed(dead)
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


def mark_crashed(dead: DeadHolder) -> None:
    """Mark the flow run of a holder that died (SIGKILL, OOM, a host or cgroup kill, its worker
    killed with it) CRASHED, if the server still has it unfinished. Nobody else would: a
    worker reports a crash only of a child it outlived, and a self-hosted Prefect server marks
    nothing without a heartbeat automation (docs/reliability.md). Best effort: a run of another
    host, of another server (a CLI run's temporary one) or an unreachable server only gets a
    warning."""
    if dead.run_id is None or dead.host != socket.gethostname():
        return
    logger = get_run_logger()
    what = f"run {dead.run!r} (pid {dead.pid or '?'}, since {dead.since})"
    try:
        marked = flow_runs.mark_crashed(
            dead.run_id, "its process died holding the work dir; the next run cleaned up after it"
        )
    except Exception as e:  # noqa: BLE001 - never fail a release over an older run's state
        logger.warning("%s died holding the work dir; could not mark it crashed: %s", what, type(e).__name__)
        return
    if marked:
        logger.warning("%s died holding the work dir: marked it crashed", what)
