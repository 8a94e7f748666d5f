"""Archive retention: keep what the named releases need, plan the deletion of everything else.

    keep_set(lists)                     every listed tag and pinned digest -> a GC KeepSet
    select_recent(refs, glob, last)     the last N tags (or branches) matching a glob, version order
    plan_retention(archive, lists)      the GC plan with a KeepSet, checked: refuses an empty keep
                                        set or names the archive lacks, unless forced
    check_idle(wd, mounted, served)     refuses while anything may be using lower/
    archive_status(wd, plan)            size, counts, the releases recorded, what a prune frees
    ApplyProgress                       files/s while a long apply runs

Pure: the callers (layover/cli/archive.py, tasks/retention.py) read the lists, take the work-dir
lock, look at mounts and containers, and apply the plan with storage/vacuum.py. Deleting is the
GC's own plan/apply (docs/design.md §4): the archive is marked from the kept tags only, and a
crash part way leaves a tree the next plan still marks.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layover.errors import InputError, LayoverError, UsageError
from layover.imagelist import ImageList
from layover.storage.gc import DeletionKind, GCPlan, KeepSet, plan_gc
from layover.storage.layout import StorageLayout
from layover.units import human_bytes
from layover.workdir import WorkDir

TAG_PREFIX = "refs/tags/"
BRANCH_PREFIX = "refs/heads/"


# --- the keep set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptList:
    """One images.list whose images a prune keeps: where it came from, and its images."""

    source: str  # the file, or repo:path@ref
    commit: str | None
    images: ImageList


def keep_set(lists: Iterable[ImageList]) -> KeepSet:
    """Every listed tag, and every pinned digest (`repo@sha256:...`, `repo:tag@sha256:...`).

    A pinned entry keeps both: the tag as the archive has it now, and the exact manifest the list
    pinned (the archive sync copied that one, even if the tag has moved since)."""
    tags: set[tuple[str, str]] = set()
    digests = set()
    for images in lists:
        for ref in images.refs:
            if ref.tag is not None:
                tags.add((ref.repository, ref.tag))
            if ref.digest is not None:
                digests.add((ref.repository, ref.digest))
    return KeepSet(frozenset(tags), frozenset(digests))


_RUNS = re.compile(r"(\d+)|(\D+)")


def version_key(name: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Sort key in version order, as `git tag --sort=v:refname` and `sort -V` order names:
    digit runs compare as numbers (v1.10 after v1.9, v10 after v9); the rest as text."""
    runs = tuple((0, int(num), "") if num else (1, 0, text) for num, text in _RUNS.findall(name))
    return runs, name


def select_recent(refs: Iterable[str], glob: str, last: int, *, repo: str = "the repository") -> list[str]:
    """The last `last` tags or branches whose short name matches `glob`, oldest first.

    `refs` are full names (refs/tags/v1, refs/heads/release-1). Version order, not dates: it is
    the same for a local repository and a URL (no history needs fetching), and re-creating or
    re-pushing a tag does not reorder it. A tag and a branch of one name count once, as the tag
    (git resolves a bare name that way too)."""
    if last < 1:
        raise UsageError(f"--keep-last {last}: keep at least 1 tag or branch")
    by_name: dict[str, str] = {}
    for ref in refs:
        for prefix in (BRANCH_PREFIX, TAG_PREFIX):  # tags last: they win a name clash
            if ref.startswith(prefix) and fnmatch.fnmatchcase(ref[len(prefix) :], glob):
                by_name[ref[len(prefix) :]] = ref
    if not by_name:
        raise InputError(
            f"{repo}: no tag or branch matches {glob!r}; check the pattern (a glob on names "
            "such as v* or release-*) and that the tags are pushed"
        )
    names = sorted(by_name, key=version_key)[-last:]
    return [by_name[n] for n in names]


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPlan:
    lists: tuple[KeptList, ...]
    keep: KeepSet
    gc: GCPlan
    dropped: tuple[str, ...]  # "repo:tag" of every tag the prune deletes, sorted
    forced: bool = False

    @property
    def empty(self) -> bool:
        return self.gc.empty

    def summary(self) -> str:
        c = self.gc.counts
        return (
            f"prune plan: keep {len(self.keep.tags)} tags and {len(self.keep.digests)} pinned digests "
            f"from {len(self.lists)} list(s); delete {len(self.dropped)} tags, {c.repositories_removed} "
            f"repositories, {c.revisions_deleted} manifests, {c.blobs_deleted} of {c.blobs} blobs, "
            f"freeing {human_bytes(self.gc.bytes_freed)}"
        )

    def lines(self, *, max_images: int = 50) -> list[str]:
        out = [f"keep: {len(self.keep.tags)} tags, {len(self.keep.digests)} pinned digests, from:"]
        for kept in self.lists:
            at = f" @ {kept.commit}" if kept.commit else ""
            out.append(f"  {kept.source}{at}: {len(kept.images)} images")
        if self.gc.missing:
            out.append(
                f"not in the archive ({len(self.gc.missing)}, --force given): "
                + ", ".join(self.gc.missing[:10])
            )
        out.append(f"delete {len(self.dropped)} images (tags):")
        out += [f"  {d}" for d in self.dropped[:max_images]]
        if len(self.dropped) > max_images:
            out.append(f"  ... and {len(self.dropped) - max_images} more (--json lists every one)")
        out.append(self.gc.summary())
        out.append(self.summary())
        return out

    def to_dict(self) -> dict[str, object]:
        c = self.gc.counts
        return {
            "lists": [{"source": k.source, "commit": k.commit, "images": len(k.images)} for k in self.lists],
            "keep": {
                "tags": sorted(f"{r}:{t}" for r, t in self.keep.tags),
                "digests": sorted(f"{r}@{d}" for r, d in self.keep.digests),
            },
            "missing": list(self.gc.missing),
            "delete": {
                "images": list(self.dropped),
                "repositories": list(self.gc.removed_repositories),
                "manifests": c.revisions_deleted,
                "layer_links": c.layer_links_deleted,
                "blobs": c.blobs_deleted,
                "paths": len(self.gc.deletions),
                "bytes": self.gc.bytes_freed,
            },
            "archive": {"blobs": c.blobs, "repositories": c.repositories, "tags": c.tags + c.tags_deleted},
            "forced": self.forced,
        }


def plan_retention(
    archive: StorageLayout, lists: Sequence[KeptList], *, force: bool = False
) -> RetentionPlan:
    """Plan a prune that keeps exactly what `lists` name. Reads only: this is the dry run.

    Refuses (InputError, nothing deleted) when the lists name no image at all (the plan would
    empty the archive), or name images the archive does not hold (a typo, or a release built on
    another work dir: its images would not be protected by anything), unless `force`."""
    if not archive.v2.is_dir():
        raise UsageError(f"{archive.root}: no archive here (no docker/registry/v2); check the work dir")
    keep = keep_set(k.images for k in lists)
    if keep.empty and not force:
        raise InputError(
            f"the keep lists name no image, so a prune would empty the archive {archive.root}; "
            "nothing was deleted. Give lists with images (--keep, --keep-git), or --force"
        )
    plan = plan_gc(archive, keep=keep)
    if plan.missing and not force:
        raise InputError(
            f"{len(plan.missing)} kept image(s) are not in the archive {archive.root}, first: "
            f"{', '.join(plan.missing[:3])}; nothing was deleted. Check the lists (was that "
            "release built on this work dir?) or pass --force to prune anyway"
        )
    return RetentionPlan(tuple(lists), keep, plan, _dropped_tags(archive, plan), force)


def _dropped_tags(archive: StorageLayout, plan: GCPlan) -> tuple[str, ...]:
    dropped = {f"{d.repo}:{os.path.basename(d.path)}" for d in plan.deletions if d.kind is DeletionKind.TAG}
    for repo in plan.removed_repositories:  # a removed repository's tags go with it
        try:
            dropped.update(f"{repo}:{t}" for t in os.listdir(archive.tags(repo)))
        except (FileNotFoundError, NotADirectoryError):
            pass
    return tuple(sorted(dropped))


def check_idle(wd: WorkDir, *, merged_mounted: bool, served_by: Sequence[str]) -> None:
    """Refuse while anything may be using lower/ (the caller holds the work-dir lock).

    Under the lock a mounted overlay means a killed run left it; a registry serving lower/ would
    keep answering for deleted blobs from its cache (docs/design.md §3)."""
    if served_by:
        raise LayoverError(
            f"{wd.lower} is served by running container(s) {', '.join(served_by)}; stop "
            "them first (deleting under a running registry corrupts what it serves)"
        )
    if merged_mounted:
        raise LayoverError(
            f"{wd.merged} is still mounted over the archive (left by a killed run); run "
            f"`layover run` once on this work dir, or `umount {wd.merged}`, then prune again"
        )


# --- applying -------------------------------------------------------------------------------


class ApplyProgress:
    """Counts deleted paths and says `done/total, files/s` through `emit` every `every` seconds.

    One planned path is one blob or link file with its directory (a tag or an upload directory
    counts as one too)."""

    def __init__(
        self,
        total: int,
        emit: Callable[[str], None],
        *,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.emit = emit
        self.every = every
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last = self.started

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self.emit(self.line(now))

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"pruning: {self.done}/{self.total} paths ({pct:.0f}%), {rate:,.0f} files/s"


@dataclass(frozen=True)
class PruneReport:
    """What one prune did (or, in a dry run, would do)."""

    plan: str  # RetentionPlan.summary()
    dry_run: bool
    deleted: int = 0  # planned paths removed
    bytes_freed: int = 0
    seconds: float = 0.0
    empty_dirs: int = 0  # left empty by an earlier, interrupted prune, and removed now

    @property
    def files_per_second(self) -> float:
        return self.deleted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.dry_run:
            return f"dry run, nothing deleted: {self.plan}"
        tidy = f" and {self.empty_dirs} empty dirs an interrupted prune left" if self.empty_dirs else ""
        return (
            f"pruned: removed {self.deleted} paths{tidy}, freed {human_bytes(self.bytes_freed)} in "
            f"{self.seconds:.2f} s ({self.files_per_second:,.0f} files/s); {self.plan}"
        )


# --- status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRelease:
    """One package a run built on this work dir, from its report under releases/."""

    sha256: str
    list_source: str
    list_commit: str | None
    images: int
    package_bytes: int
    added_blobs: int  # what its archive sync copied: what this release added to the archive
    added_bytes: int
    recorded: float  # when the report was written (epoch seconds)
    kind: str = "full"  # "delta": made from a full package against a base (its sidecar is the record)
    base_sha256: str | None = None  # a delta's base package


@dataclass(frozen=True)
class PruneEstimate:
    lists: int
    images_deleted: tuple[str, ...]
    blobs_deleted: int
    bytes_freed: int
    missing: tuple[str, ...]

    @classmethod
    def of(cls, plan: RetentionPlan) -> PruneEstimate:
        return cls(
            len(plan.lists), plan.dropped, plan.gc.counts.blobs_deleted, plan.gc.bytes_freed, plan.gc.missing
        )


@dataclass(frozen=True)
class ArchiveStatus:
    archive: str
    bytes_on_disk: int
    blobs: int
    blob_bytes: int
    repositories: int
    tags: int
    releases: tuple[RecordedRelease, ...] = ()
    unreadable: tuple[str, ...] = ()  # release records that could not be parsed
    prune: PruneEstimate | None = None  # what a prune with the given keep lists would do

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def to_text(self) -> str:
        out = [
            f"archive {self.archive}: {human_bytes(self.bytes_on_disk)} on disk, {self.blobs} blobs "
            f"({human_bytes(self.blob_bytes)}), {self.repositories} repositories, {self.tags} tags"
        ]
        if self.releases:
            out.append(
                f"releases recorded: {len(self.releases)}, oldest {_when(self.releases[0].recorded)}, "
                f"newest {_when(self.releases[-1].recorded)}"
            )
            rows = [("recorded", "images", "added to archive", "package", "sha256", "list")]
            rows += [
                (
                    _when(r.recorded),
                    str(r.images),
                    f"delta from {r.base_sha256[:12]}"
                    if r.kind == "delta" and r.base_sha256
                    else f"{r.added_blobs} blobs, {human_bytes(r.added_bytes)}",
                    human_bytes(r.package_bytes),
                    r.sha256[:12],
                    r.list_source + (f" @ {r.list_commit[:12]}" if r.list_commit else ""),
                )
                for r in self.releases
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            out += [
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                for row in rows
            ]
        else:
            out.append("releases recorded: none (runs record their report under releases/)")
        out += [f"unreadable release record: {p}" for p in self.unreadable]
        if self.prune is not None:
            p = self.prune
            out.append(
                f"a prune keeping {p.lists} list(s) would delete {len(p.images_deleted)} images, "
                f"{p.blobs_deleted} of {self.blobs} blobs, and free {human_bytes(p.bytes_freed)}"
            )
            if p.missing:
                out.append(
                    f"  the lists name {len(p.missing)} image(s) the archive does not hold, first: "
                    + ", ".join(p.missing[:3])
                )
        return "\n".join(out)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def recorded_releases(directory: Path) -> tuple[list[RecordedRelease], list[str]]:
    """The release records under `directory`, oldest first, and the ones that cannot be read."""
    found: list[RecordedRelease] = []
    bad: list[str] = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return found, bad
    for name in names:
        path = directory / name
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("kind") == "delta":  # a delta's sidecar (layover/delta.py): it adds nothing
                contents = doc["contents"]
                found.append(
                    RecordedRelease(
                        sha256=str(doc["sha256"]),
                        list_source=str(contents["list_source"]),
                        list_commit=contents.get("list_commit"),
                        images=int(contents["totals"]["images"]),
                        package_bytes=int(doc.get("tarball_bytes", 0)),
                        added_blobs=0,
                        added_bytes=0,
                        recorded=path.stat().st_mtime,
                        kind="delta",
                        base_sha256=str(doc["base_sha256"]),
                    )
                )
                continue
            sync: dict[str, Any] = next(
                (s for s in doc.get("stages", ()) if s.get("name") == "archive sync"), {}
            )
            found.append(
                RecordedRelease(
                    sha256=str(doc["sha256"]),
                    list_source=str(doc["list_source"]),
                    list_commit=doc.get("list_commit"),
                    images=int(doc["images"]),
                    package_bytes=int(doc.get("tarball_bytes", 0)),
                    added_blobs=int(sync.get("blobs_copied", 0)),
                    added_bytes=int(sync.get("bytes_moved", 0)),
                    recorded=path.stat().st_mtime,
                )
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            bad.append(str(path))
    found.sort(key=lambda r: (r.recorded, r.sha256))
    return found, bad


def archive_status(wd: WorkDir, plan: RetentionPlan | None = None) -> ArchiveStatus:
    layout = wd.archive
    if not layout.v2.is_dir():
        raise UsageError(f"{wd.lower}: no archive here (no docker/registry/v2); check the work dir")
    blobs = blob_bytes = 0
    if layout.blobs.is_dir():
        for prefix in os.scandir(layout.blobs):
            if not prefix.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(prefix.path):
                try:
                    blob_bytes += os.stat(f"{entry.path}/data").st_size
                    blobs += 1
                except (FileNotFoundError, NotADirectoryError):
                    pass
    on_disk = 0
    for dirpath, dirnames, filenames in os.walk(wd.lower):
        for n in (*dirnames, *filenames):
            try:
                on_disk += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except FileNotFoundError:
                pass
    names = layout.repository_names()
    tags = 0
    for name in names:
        try:
            tags += sum(1 for e in os.scandir(layout.tags(name)) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            pass
    releases, bad = recorded_releases(wd.releases)
    return ArchiveStatus(
        str(wd.lower),
        on_disk,
        blobs,
        blob_bytes,
        len(names),
        tags,
        tuple(releases),
        tuple(bad),
        PruneEstimate.of(plan) if plan is not None else None,
    )
