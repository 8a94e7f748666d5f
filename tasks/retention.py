"""Archive retention's tasks: thin shells over layover/retention.py and the GC's plan/apply."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.adapters.git import list_refs
from layover.adapters.served import serving_containers
from layover.retention import (
    ApplyProgress,
    KeptList,
    PruneReport,
    RetentionPlan,
    check_idle,
    plan_retention,
    select_recent,
)
from layover.settings import KeepRecent, ListFromGit
from layover.storage.vacuum import apply_gc, remove_empty_dirs
from layover.workdir import WorkDir
from tasks.load_list import LoadedList


@task(name="recent-lists", cache_policy=NO_CACHE)
def recent_lists(rule: KeepRecent) -> list[ListFromGit]:
    refs = select_recent(list_refs(rule.repo), rule.pattern, rule.last, repo=rule.repo)
    get_run_logger().info("keeping the lists at %s", ", ".join(refs))
    return [ListFromGit(repo=rule.repo, ref=ref, path=rule.path) for ref in refs]


@task(name="check-archive-idle", cache_policy=NO_CACHE)
def check_archive_idle(wd: WorkDir) -> None:
    check_idle(wd, merged_mounted=overlay.is_mounted(wd.merged), served_by=serving_containers(wd.lower))


@task(name="plan-prune", cache_policy=NO_CACHE)
def plan_prune(wd: WorkDir, lists: list[LoadedList], force: bool) -> RetentionPlan:
    plan = plan_retention(wd.archive, [KeptList(k.source, k.commit, k.images) for k in lists], force=force)
    get_run_logger().info("%s", "\n".join(plan.lines()))
    return plan


@task(name="apply-prune", cache_policy=NO_CACHE)
def apply_prune(wd: WorkDir, plan: RetentionPlan) -> PruneReport:
    logger = get_run_logger()
    progress = ApplyProgress(len(plan.gc.deletions), logger.info, every=10.0)
    result = apply_gc(plan.gc, progress=progress.advance)
    empty = remove_empty_dirs(wd.archive)
    return PruneReport(plan.summary(), False, result.deleted, result.bytes_freed, result.seconds, empty)


@task(name="publish-prune-report", cache_policy=NO_CACHE)
def publish_prune_report(plan: RetentionPlan, report: PruneReport) -> None:
    get_run_logger().info("%s", report.summary())
    body = "\n".join(
        [
            "# Layover archive retention",
            "",
            f"- {report.summary()}",
            "",
            "```",
            *plan.lines(max_images=200),
            "```",
            "",
        ]
    )
    create_markdown_artifact(key="archive-retention", markdown=body, description="Layover archive prune")
