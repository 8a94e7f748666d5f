"""The archive retention flow: keep what the named releases need, prune the rest of lower/.

Composition only: the lists are read as the release flow reads them, then under the work-dir
lock (a release on this work dir finishes first) the archive is checked idle, planned and, unless
this is a dry run, pruned with the GC's own apply.
"""

from __future__ import annotations

from prefect import flow, runtime

from layover.adapters.lock import work_dir_lock
from layover.retention import PruneReport
from layover.settings import ListFromFile, ListFromGit, RetentionRequest
from layover.workdir import WorkDir
from tasks.load_list import load_images
from tasks.retention import apply_prune, check_archive_idle, plan_prune, publish_prune_report, recent_lists


@flow(
    name="layover-archive-retention",
    description="Prune the build host's archive to what the named releases need (dry run by default).",
    validate_parameters=True,
)
def archive_retention(request: RetentionRequest) -> PruneReport:
    wd = WorkDir.at(request.work_dir)
    locations: list[ListFromFile | ListFromGit] = list(request.keep_lists)
    if request.keep_recent is not None:
        locations += recent_lists(request.keep_recent)
    lists = [load_images(loc) for loc in locations]  # every bad line reported before the lock
    holder = f"{runtime.flow_run.name or 'layover'} ({runtime.flow_run.id or 'no run id'}, archive prune)"
    with work_dir_lock(wd.lock, holder, wait_seconds=request.lock_wait_seconds):
        check_archive_idle(wd)
        plan = plan_prune(wd, lists, request.force)
        report = PruneReport(plan.summary(), True) if request.dry_run else apply_prune(wd, plan)
    publish_prune_report(plan, report)
    return report
