"""Garbage collection of a registry storage tree, planned: mark and sweep, reading only.

    plan_gc(layout)   mark: every kept tag's current link (plus pinned digests), through the one
                      reachability walk (storage/walk.py) to configs and layers; sweep: list
                      what nothing reachable needs. Any doubt raises GCError, nothing deleted.

Deleting is storage/vacuum.py's job (apply_gc), kept apart so the plan is also the dry run.

Why not `registry garbage-collect` (docs/design.md §3): 2.8 deletes index children with
--delete-untagged, keeps `_layers` links and empty repositories, and drops the blobs of a repo
that has `_manifests` but no `_layers`. Here blobs are marked from manifests, never from links.

By default every tag is kept (a package registry holds exactly the listed tags). A `KeepSet`
marks from named tags only and plans every other tag's deletion: archive retention, and a
package whose listed images carry attached artifacts (signatures, SBOMs) under their own tags.

Hot loops work on hex strings and os.scandir: a plan covers ~100k blobs in a few seconds.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

from layover.errors import GCError, StorageError
from layover.manifest import parse_manifest
from layover.reference import HEX64, Digest
from layover.storage.layout import StorageLayout, parse_link
from layover.storage.walk import Refs, walk
from layover.units import human_bytes

# one regex call per directory in the usual case where every name is a digest
_HEX64_LINES = re.compile(r"(?:[0-9a-f]{64}\n)*[0-9a-f]{64}")
_NO_DATA = -1  # blob directory without a data file


@dataclass(frozen=True)
class KeepSet:
    """Mark from these only; every other tag is deleted. Without one, every tag is kept."""

    tags: frozenset[tuple[str, str]] = frozenset()  # (repository, tag)
    digests: frozenset[tuple[str, Digest]] = frozenset()  # (repository, manifest) kept untagged

    @property
    def empty(self) -> bool:
        return not self.tags and not self.digests


class DeletionKind(enum.Enum):
    # Declaration order is apply order: references go before the blobs they name, so a run
    # interrupted halfway leaves a tree that the next plan still marks without errors.
    UPLOADS = "uploads"
    REPOSITORY_INTERNAL = "repository"  # one `_*` dir of a repository without tags
    TAG = "tag"  # a whole tag directory the keep set does not name
    TAG_INDEX = "tag-index"
    REVISION = "revision"
    LAYER_LINK = "layer-link"
    BLOB = "blob"


@dataclass(frozen=True)
class Deletion:
    kind: DeletionKind
    path: str  # directory to remove, absolute
    repo: str | None = None
    size: int = 0  # bytes of data inside (blob data, upload files); links count as 0


@dataclass(frozen=True)
class GCWarning:
    """Something GC cannot repair and leaves in place; verify reports it as a failure."""

    path: str
    message: str


@dataclass(frozen=True)
class GCCounts:
    repositories: int
    repositories_removed: int
    tags: int
    manifests_kept: int
    blobs: int
    blobs_kept: int
    blobs_deleted: int
    revisions_deleted: int
    tag_index_deleted: int
    layer_links_deleted: int
    uploads_deleted: int
    tags_deleted: int = 0


@dataclass(frozen=True)
class GCPlan:
    layout: StorageLayout
    kept_blob_hexes: frozenset[str]  # compact: hex strings, see kept_blobs for Digests
    deletions: tuple[Deletion, ...]  # in apply order, then by path
    bytes_freed: int
    counts: GCCounts
    warnings: tuple[GCWarning, ...] = ()
    removed_repositories: tuple[str, ...] = ()
    # keep-set entries the tree does not hold: "repo:tag" / "repo@digest" (callers decide)
    missing: tuple[str, ...] = ()

    @cached_property
    def kept_blobs(self) -> frozenset[Digest]:
        return frozenset(Digest(h) for h in self.kept_blob_hexes)

    @property
    def empty(self) -> bool:
        return not self.deletions

    def summary(self) -> str:
        c = self.counts
        line = (
            f"GC plan: keep {c.blobs_kept}/{c.blobs} blobs, {c.repositories - c.repositories_removed}/"
            f"{c.repositories} repositories, {c.tags} tags; delete {c.blobs_deleted} blobs "
            f"({human_bytes(self.bytes_freed)}), {c.repositories_removed} tagless repositories, "
            f"{c.revisions_deleted} revisions, {c.tag_index_deleted} tag-index entries, "
            f"{c.layer_links_deleted} layer links, {c.uploads_deleted} upload dirs"
        )
        if c.tags_deleted:
            line += f", {c.tags_deleted} tags not kept"
        if self.warnings:
            line += f"; {len(self.warnings)} warning(s), first: {self.warnings[0].message}"
        return line


def plan_gc(
    layout: StorageLayout, extra_roots: Iterable[tuple[str, Digest]] = (), *, keep: KeepSet | None = None
) -> GCPlan:
    """Compute what GC would delete. Reads only: this is also the dry run.

    `extra_roots` pins (repository, manifest digest) pairs that have no tag, e.g. digest-only
    entries of images.list; such a repository counts as tagged. `keep` restricts marking to the
    named tags and digests and plans the deletion of every other tag.
    """
    try:
        return _Planner(layout, extra_roots, keep).plan()
    except StorageError as e:
        raise GCError(
            f"GC aborted while marking, nothing was deleted: {e}. Repair or re-copy "
            "the image named there, then run GC again"
        ) from None
    except OSError as e:  # unreadable directory or file: marking cannot be trusted
        raise GCError(
            f"{e.filename}: cannot read ({e.strerror}); GC aborted while marking, nothing "
            "was deleted. Fix permissions or the filesystem, then run GC again"
        ) from None


class _Planner:
    def __init__(
        self, layout: StorageLayout, extra_roots: Iterable[tuple[str, Digest]], keep: KeepSet | None
    ) -> None:
        self.layout = layout
        self.paths = layout.strings()
        self.keep = keep
        self.pins: dict[str, list[str]] = {}
        for repo, digest in [*extra_roots, *(keep.digests if keep else ())]:
            self.pins.setdefault(repo, []).append(digest.hex)
        self.kept_tags: dict[str, set[str]] = {}
        for repo, tag in keep.tags if keep else ():
            self.kept_tags.setdefault(repo, set()).add(tag)
        self.blob_size: dict[str, int] = {}  # hex -> size of data, or _NO_DATA
        # parsed manifests are content-addressed, so one cache serves every repository
        self.cache: dict[str, Refs] = {}
        self.reachable: set[str] = set()
        self.deletions: dict[DeletionKind, list[Deletion]] = {k: [] for k in DeletionKind}
        self.warnings: list[GCWarning] = []
        self.removed_repos: list[str] = []
        self.missing: list[str] = []
        self.n_tags = 0
        self.n_tags_dropped = 0
        self.n_manifests = 0

    def plan(self) -> GCPlan:
        self._scan_blobs()
        names = self.layout.repository_names()
        absent = sorted(set(self.pins) - set(names))
        if absent and self.keep is None:
            raise GCError(
                f"{self.paths.repo(absent[0])}: pinned repository {absent[0]!r} does not exist; "
                "nothing was deleted. Copy the image or remove the pin"
            )
        self.missing += [f"{r}@sha256:{h}" for r in absent for h in self.pins[r]]
        self.missing += sorted(
            f"{r}:{t}" for r in set(self.kept_tags) - set(names) for t in self.kept_tags[r]
        )
        for name in names:
            self._repo(name)
        blobs_deleted = 0
        blob_deletions = self.deletions[DeletionKind.BLOB]
        for hex_, size in self.blob_size.items():
            if hex_ not in self.reachable:
                blob_deletions.append(
                    Deletion(DeletionKind.BLOB, self.paths.blob_dir(hex_), None, max(size, 0))
                )
                blobs_deleted += 1
        deletions: list[Deletion] = []
        for kind in DeletionKind:  # apply order, then by path
            deletions += sorted(self.deletions[kind], key=_path)
        by_kind = {k: len(v) for k, v in self.deletions.items()}
        kept = frozenset(self.reachable & self.blob_size.keys())
        counts = GCCounts(
            repositories=len(names),
            repositories_removed=len(self.removed_repos),
            tags=self.n_tags,
            manifests_kept=self.n_manifests,
            blobs=len(self.blob_size),
            blobs_kept=len(kept),
            blobs_deleted=blobs_deleted,
            revisions_deleted=by_kind[DeletionKind.REVISION],
            tag_index_deleted=by_kind[DeletionKind.TAG_INDEX],
            layer_links_deleted=by_kind[DeletionKind.LAYER_LINK],
            uploads_deleted=by_kind[DeletionKind.UPLOADS],
            tags_deleted=self.n_tags_dropped,
        )
        return GCPlan(
            self.layout,
            kept,
            tuple(deletions),
            sum(d.size for d in deletions),
            counts,
            tuple(self.warnings),
            tuple(self.removed_repos),
            tuple(sorted(self.missing)),
        )

    # --- blobs ---------------------------------------------------------------------------
    def _scan_blobs(self) -> None:
        top = self.paths.blobs
        if not os.path.isdir(top):
            return
        with os.scandir(top) as prefixes:
            prefix_dirs = sorted((p.name, p.path) for p in prefixes if p.is_dir(follow_symlinks=False))
        # ~100k stat calls: threads overlap their latency (os.stat releases the GIL).
        with ThreadPoolExecutor(max_workers=4) as pool:
            for part in pool.map(_scan_prefixes, [prefix_dirs[i::4] for i in range(4)]):
                self.blob_size.update(part)

    # --- one repository ------------------------------------------------------------------
    def _repo(self, name: str) -> None:
        paths = self.paths
        roots: list[tuple[str, str]] = []  # (manifest hex, file that names it)
        tags: list[tuple[str, str]] = []  # (tag, current hex) of kept tags
        wanted = self.kept_tags.get(name, set()) if self.keep is not None else None
        present = _subdirs(paths.tags(name))
        dropped: list[Deletion] = []
        for tag in present:
            if wanted is not None and tag not in wanted:
                dropped.append(Deletion(DeletionKind.TAG, paths.tag_dir(name, tag), name))
                continue
            link = paths.tag_current_link(name, tag)
            hex_ = _read_link(link, f"tag {name}:{tag}")
            tags.append((tag, hex_))
            roots.append((hex_, link))
        if wanted is not None:
            self.missing += [f"{name}:{t}" for t in sorted(wanted - set(present))]
        for hex_ in self.pins.get(name, ()):
            if self.keep is not None and not os.path.isdir(paths.revision_dir(name, hex_)):
                self.missing.append(f"{name}@sha256:{hex_}")
                continue
            roots.append((hex_, f"pinned {name}@sha256:{hex_}"))
        self.n_tags_dropped += len(dropped)

        if not roots:
            # Tagless: drop every internal dir; nested repositories below stay untouched.
            self.removed_repos.append(name)
            with os.scandir(paths.repo(name)) as it:
                for e in it:
                    if e.name.startswith("_") and e.is_dir(follow_symlinks=False):
                        size = _tree_size(e.path) if e.name == "_uploads" else 0
                        self.deletions[DeletionKind.REPOSITORY_INTERNAL].append(
                            Deletion(DeletionKind.REPOSITORY_INTERNAL, e.path, name, size)
                        )
            return
        self.n_tags += len(tags)
        self.deletions[DeletionKind.TAG] += dropped  # a removed repository's tags go with it

        revisions = _hex_subdirs(paths.revisions(name))

        def load(hex_: str, named_by: str) -> Refs:
            rev_link = paths.revision_link(name, hex_)
            if hex_ not in revisions:
                raise GCError(
                    f"{named_by} names manifest sha256:{hex_}, but {rev_link} does not exist, "
                    "so the registry cannot serve it; nothing was deleted. Re-copy the image"
                )
            if _read_link(rev_link, "revision link") != hex_:
                raise GCError(
                    f"{rev_link}: link names another digest than its directory; nothing "
                    "was deleted. Delete the revision directory and re-copy the image"
                )
            return self._manifest(hex_, named_by)

        reach = walk(roots, load, label_child=lambda parent, _: paths.revision_link(name, parent))
        manifests = set(reach.manifests)
        needed = reach.blobs.keys()
        self.n_manifests += len(manifests)

        for hex_ in revisions - manifests:
            self.deletions[DeletionKind.REVISION].append(
                Deletion(DeletionKind.REVISION, paths.revision_dir(name, hex_), name)
            )
        for tag, current in tags:
            for hex_ in _hex_subdirs(paths.tag_index(name, tag)):
                if hex_ != current:
                    self.deletions[DeletionKind.TAG_INDEX].append(
                        Deletion(DeletionKind.TAG_INDEX, paths.tag_index_dir(name, tag, hex_), name)
                    )

        links = _hex_subdirs(paths.layers(name))
        sizes = self.blob_size
        for hex_ in links:
            has_data = sizes.get(hex_, _NO_DATA) != _NO_DATA
            # A link needed by a kept image stays even without data (that is reported below);
            # a foreign layer's link may go when dangling: its data legitimately lives elsewhere.
            if hex_ in needed or (hex_ in reach.foreign and has_data):
                continue
            self.deletions[DeletionKind.LAYER_LINK].append(
                Deletion(DeletionKind.LAYER_LINK, paths.layer_dir(name, hex_), name)
            )
        for hex_ in sorted(needed):
            if sizes.get(hex_, _NO_DATA) == _NO_DATA:
                self.warnings.append(
                    GCWarning(
                        paths.blob_data(hex_),
                        f"{name}: blob sha256:{hex_} is referenced but its data is missing",
                    )
                )
            if hex_ not in links:
                self.warnings.append(
                    GCWarning(
                        paths.layer_link(name, hex_),
                        f"{name}: blob sha256:{hex_} is referenced but not linked",
                    )
                )

        uploads = paths.uploads(name)
        if os.path.isdir(uploads):
            self.deletions[DeletionKind.UPLOADS].append(
                Deletion(DeletionKind.UPLOADS, uploads, name, _tree_size(uploads))
            )

        reachable = self.reachable
        reachable.update(manifests)
        reachable.update(needed)
        reachable.update(h for h in reach.foreign if sizes.get(h, _NO_DATA) != _NO_DATA)

    def _manifest(self, hex_: str, named_by: str) -> Refs:
        hit = self.cache.get(hex_)
        if hit is not None:
            return hit
        path = self.paths.blob_data(hex_)
        if self.blob_size.get(hex_, _NO_DATA) == _NO_DATA:
            raise GCError(
                f"{named_by} names manifest sha256:{hex_}, but its data {path} is missing; "
                "nothing was deleted. Re-copy the image"
            )
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, self.blob_size[hex_] + 1)
            finally:
                os.close(fd)
        except OSError as e:
            raise GCError(f"{path}: cannot read manifest ({e.strerror}); nothing was deleted") from None
        refs = self.cache[hex_] = Refs.of(parse_manifest(data, path))
        return refs


def _scan_prefixes(prefix_dirs: list[tuple[str, str]]) -> dict[str, int]:
    """hex -> data size (or _NO_DATA) for the blob dirs below some blobs/sha256/<hh> dirs."""
    sizes: dict[str, int] = {}
    for prefix, pdir in prefix_dirs:
        for name in os.listdir(pdir):
            # Anything not shaped like a blob dir is left alone: not ours to judge.
            if name[:2] != prefix or not HEX64.fullmatch(name):
                continue
            try:
                sizes[name] = os.stat(f"{pdir}/{name}/data").st_size
            except FileNotFoundError:
                sizes[name] = _NO_DATA
            except NotADirectoryError:
                continue
    return sizes


def _read_link(path: str, what: str) -> str:
    """A link's hex digest; missing or corrupt is fatal for marking."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.read(fd, 200)
        finally:
            os.close(fd)
    except OSError as e:
        raise GCError(
            f"{path}: cannot read {what} ({e.strerror}); nothing was deleted. Repair the "
            "link or delete its directory, then run GC again"
        ) from None
    hex_ = parse_link(raw)
    if hex_ is None:
        raise GCError(
            f"{path}: corrupt {what}, expected sha256:<64 hex>, found {raw[:80]!r}; nothing "
            "was deleted. Repair the link or delete its directory, then run GC again"
        )
    return hex_


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _hex_subdirs(path: str) -> set[str]:
    """Names in a `.../sha256` dir that are hex digests; anything else is not ours to judge."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    if _HEX64_LINES.fullmatch("\n".join(names)):
        return set(names)
    return {n for n in names if HEX64.fullmatch(n)}


def _path(d: Deletion) -> str:
    return d.path


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
