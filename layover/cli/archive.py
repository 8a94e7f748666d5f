"""`layover archive status|prune`: how big the build host's archive is, and keeping it small."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from layover.cli.app import app, fail
from layover.errors import LayoverError, LockedError, UsageError
from layover.retention import KeptList

archive_app = typer.Typer(
    no_args_is_help=True,
    help="The build host's archive (WORK_DIR/lower): its size and releases, and pruning it to the "
    "releases that matter.",
)
app.add_typer(archive_app, name="archive")

WorkDirArg = Annotated[Path, typer.Argument(help="The work dir whose archive (lower/) to look at.")]
KeepOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--keep", metavar="LIST", help="Keep every image this images.list names (repeat for more lists)."
    ),
]
KeepGitOpt = Annotated[
    str | None,
    typer.Option(
        "--keep-git", metavar="REPO", help="Git repository (path or URL) whose tagged lists to keep."
    ),
]
KeepLastOpt = Annotated[
    int | None,
    typer.Option(
        "--keep-last",
        metavar="N",
        min=1,
        help="With --keep-git: keep the lists of the last N matching "
        "tags or branches, in version order (v1.10 after v1.9).",
    ),
]
TagsOpt = Annotated[
    str,
    typer.Option(
        "--tags", metavar="GLOB", help="With --keep-git: which tag or branch names count, e.g. 'v*'."
    ),
]
ListPathOpt = Annotated[
    str,
    typer.Option(
        "--list-path", metavar="PATH", help="With --keep-git: the list's path inside the repository."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _keep_lists(
    keep: list[Path] | None, keep_git: str | None, keep_last: int | None, tags: str, list_path: str
) -> list[KeptList]:
    """The lists to keep, read exactly as a release run reads them (tasks/load_list.py)."""
    from layover import imagelist
    from layover.adapters.git import list_refs, read_list_at
    from layover.retention import select_recent

    lists = [KeptList(str(p), None, imagelist.load(p)) for p in keep or ()]
    if (keep_git is None) != (keep_last is None):
        raise UsageError("--keep-git REPO and --keep-last N go together; give both")
    if keep_git is None or keep_last is None:
        if tags != "*" or list_path != "images.list":
            raise UsageError("--tags and --list-path apply to --keep-git; give --keep-git REPO --keep-last N")
        return lists
    for ref in select_recent(list_refs(keep_git), tags, keep_last, repo=keep_git):
        got = read_list_at(keep_git, ref, list_path)
        source = f"{got.repo}:{got.path}@{got.ref}"
        lists.append(KeptList(source, got.commit, imagelist.parse_bytes(got.data, source)))
    return lists


@archive_app.command()
def status(
    work_dir: WorkDirArg,
    keep: KeepOpt = None,
    keep_git: KeepGitOpt = None,
    keep_last: KeepLastOpt = None,
    tags: TagsOpt = "*",
    list_path: ListPathOpt = "images.list",
    as_json: JsonOpt = False,
) -> None:
    """Size on disk, blobs, repositories, tags, the releases built here and what each added;
    with keep options, what a prune keeping those lists would free. Reads only."""
    from layover.retention import archive_status, plan_retention
    from layover.workdir import WorkDir

    try:
        wd = WorkDir.at(work_dir)
        lists = _keep_lists(keep, keep_git, keep_last, tags, list_path)
        plan = plan_retention(wd.archive, lists, force=True) if lists else None
        found = archive_status(wd, plan)
        typer.echo(found.to_json() if as_json else found.to_text(), nl=not as_json)
    except LayoverError as e:
        fail(e)


@archive_app.command()
def prune(
    work_dir: WorkDirArg,
    keep: KeepOpt = None,
    keep_git: KeepGitOpt = None,
    keep_last: KeepLastOpt = None,
    tags: TagsOpt = "*",
    list_path: ListPathOpt = "images.list",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Prune even if the lists name no image or images the archive lacks."),
    ] = False,
    lock_wait: Annotated[
        float,
        typer.Option(
            "--lock-wait", metavar="SECONDS", min=0, help="Wait this long for a run holding the work dir."
        ),
    ] = 3600,
    as_json: JsonOpt = False,
) -> None:
    """Keep every image the lists name, delete everything else from the archive: under the
    work-dir lock, with no overlay mounted and no registry serving lower/. The next release
    fetches a pruned image again from the source."""
    from layover.adapters import overlay
    from layover.adapters.lock import work_dir_lock
    from layover.adapters.served import serving_containers
    from layover.retention import ApplyProgress, PruneReport, check_idle, plan_retention
    from layover.storage.vacuum import apply_gc, remove_empty_dirs
    from layover.workdir import WorkDir

    try:
        wd = WorkDir.at(work_dir)
        if not wd.archive.v2.is_dir():
            raise UsageError(f"{wd.lower}: no archive here (no docker/registry/v2); check WORK_DIR")
        if not keep and keep_git is None and not force:
            raise UsageError(
                "say what to keep: --keep LIST and/or --keep-git REPO --keep-last N "
                "(--force alone empties the archive)"
            )
        lists = _keep_lists(keep, keep_git, keep_last, tags, list_path)  # read before the lock
        holder = f"layover archive prune{' --dry-run' if dry_run else ''}"
        with ExitStack() as held:
            try:
                held.enter_context(work_dir_lock(wd.lock, holder))
            except LockedError as e:
                if lock_wait <= 0:
                    raise
                typer.echo(f"layover: {str(e).split(';')[0]}; waiting up to {lock_wait:g} s for it", err=True)
                held.enter_context(work_dir_lock(wd.lock, holder, wait_seconds=lock_wait))
            check_idle(
                wd, merged_mounted=overlay.is_mounted(wd.merged), served_by=serving_containers(wd.lower)
            )
            plan = plan_retention(wd.archive, lists, force=force)
            if not as_json:
                typer.echo("\n".join(plan.lines()))
            if dry_run:
                report = PruneReport(plan.summary(), True)
            else:
                progress = ApplyProgress(len(plan.gc.deletions), lambda line: typer.echo(line, err=True))
                done = apply_gc(plan.gc, progress=progress.advance)
                empty = remove_empty_dirs(wd.archive)
                report = PruneReport(
                    plan.summary(), False, done.deleted, done.bytes_freed, done.seconds, empty
                )
        if as_json:
            doc = {
                "plan": plan.to_dict(),
                "dry_run": dry_run,
                "deleted": report.deleted,
                "empty_dirs": report.empty_dirs,
                "bytes_freed": report.bytes_freed,
                "seconds": report.seconds,
            }
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        else:
            typer.echo(report.summary())
    except LayoverError as e:
        fail(e)
