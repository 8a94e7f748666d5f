"""Garbage collection of a registry storage tree: a pure plan, then a separate apply.

    plan_gc(layout)   mark: every tag's current link (plus pinned digests), through index
                      children in the same repo, to configs and layers; sweep: list what
                      nothing reachable needs. Reads only; any doubt raises GCError.
    apply_gc(plan)    delete exactly the planned paths, references before blobs, then the
                      directories that became empty. Deletes, never renames (overlayfs: EXDEV).

Why not `registry garbage-collect` (DESIGN §3): 2.8 deletes index children with
--delete-untagged, keeps `_layers` links and empty repositories, and drops the blobs of a repo
that has `_manifests` but no `_layers`. Here blobs are marked from manifests, never from links.

Hot loops work on hex strings and os.scandir: a plan covers ~100k blobs in a few seconds.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

from layover.errors import GCError, StorageError
from layover.storage.layout import StorageLayout
from layover.manifest import ManifestKind, parse_manifest
from layover.reference import Digest

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX64_LINES = re.compile(r"(?:[0-9a-f]{64}\n)*[0-9a-f]{64}")
_NO_DATA = -1  # blob directory without a data file


class DeletionKind(enum.Enum):
    # Declaration order is apply order: references go before the blobs they name, so a run
    # interrupted halfway leaves a tree that the next plan still marks without errors.
    UPLOADS = "uploads"
    REPOSITORY_INTERNAL = "repository"  # one `_*` dir of a repository without tags
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


@dataclass(frozen=True)
class GCPlan:
    layout: StorageLayout
    kept_blob_hexes: frozenset[str]  # compact: hex strings, see kept_blobs for Digests
    deletions: tuple[Deletion, ...]  # in apply order, then by path
    bytes_freed: int
    counts: GCCounts
    warnings: tuple[GCWarning, ...] = ()
    removed_repositories: tuple[str, ...] = ()

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
            f"({_human(self.bytes_freed)}), {c.repositories_removed} tagless repositories, "
            f"{c.revisions_deleted} revisions, {c.tag_index_deleted} tag-index entries, "
            f"{c.layer_links_deleted} layer links, {c.uploads_deleted} upload dirs"
        )
        if self.warnings:
            line += f"; {len(self.warnings)} warning(s), first: {self.warnings[0].message}"
        return line


@dataclass(frozen=True)
class GCResult:
    deleted: int  # planned paths removed (already-absent ones are not counted)
    dirs_removed: int  # directories removed because they became empty
    bytes_freed: int
    seconds: float

    def summary(self) -> str:
        return (f"GC applied: removed {self.deleted} paths and {self.dirs_removed} empty dirs, "
                f"freed {_human(self.bytes_freed)} in {self.seconds:.2f}s")


def plan_gc(layout: StorageLayout, extra_roots: Iterable[tuple[str, Digest]] = ()) -> GCPlan:
    """Compute what GC would delete. Reads only: this is also the dry run.

    `extra_roots` pins (repository, manifest digest) pairs that have no tag, e.g. digest-only
    entries of images.list; such a repository counts as tagged.
    """
    try:
        return _Planner(layout, extra_roots).plan()
    except StorageError as e:
        raise GCError(f"GC aborted while marking, nothing was deleted: {e}. Repair or re-copy "
                      "the image named there, then run GC again") from None
    except OSError as e:  # unreadable directory or file: marking cannot be trusted
        raise GCError(f"{e.filename}: cannot read ({e.strerror}); GC aborted while marking, nothing "
                      "was deleted. Fix permissions or the filesystem, then run GC again") from None


def apply_gc(plan: GCPlan, *, workers: int = 4) -> GCResult:
    """Delete the planned paths, then directories left empty. Safe to re-run after a crash.

    Kinds are applied one after the other (references before blobs); within a kind, paths are
    independent and `workers` threads delete them, which overlaps the filesystem's metadata
    latency (journal, overlayfs whiteouts).
    """
    start = time.monotonic()
    layout = plan.layout
    tops = {DeletionKind.REPOSITORY_INTERNAL: str(layout.repositories), DeletionKind.BLOB: str(layout.blobs)}
    deleted = 0
    freed = 0
    prune_from: set[tuple[str, str]] = set()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for kind in DeletionKind:
            batch = [d for d in plan.deletions if d.kind is kind]
            chunks = [batch[i:i + 512] for i in range(0, len(batch), 512)]
            for n, size, parents in pool.map(_delete_chunk, chunks):
                deleted += n
                freed += size
                # Only a removed repository or blob may leave empty parents worth removing. In a
                # kept repository an empty `_layers` still matters: the catalog lists it.
                if kind in tops:
                    prune_from.update((p, tops[kind]) for p in parents)
    dirs_removed = 0
    for start_dir, top in sorted(prune_from, key=lambda p: -len(p[0])):
        dirs_removed += _remove_empty_upwards(start_dir, top)
    return GCResult(deleted, dirs_removed, freed, time.monotonic() - start)


def _delete_chunk(chunk: list[Deletion]) -> tuple[int, int, set[str]]:
    deleted = freed = 0
    parents: set[str] = set()
    for d in chunk:
        try:
            if not _delete(d):
                continue  # gone already: a second apply of the same plan is harmless
        except OSError as e:
            raise GCError(f"{d.path}: cannot delete ({e.strerror}); GC stopped part way. What is "
                          "left is consistent: fix the cause and run GC again") from None
        deleted += 1
        freed += d.size
        parents.add(os.path.dirname(d.path))
    return deleted, freed, parents


# The one file a blob, revision, tag-index or layer-link directory holds. Unlinking it and
# rmdir-ing its directory is 2 syscalls where rmtree needs ~8: apply touches ~100k of them.
_LEAF = {DeletionKind.BLOB: "data", DeletionKind.REVISION: "link",
         DeletionKind.TAG_INDEX: "link", DeletionKind.LAYER_LINK: "link"}


def _delete(d: Deletion) -> bool:
    """Remove one planned path; False if it was already gone."""
    leaf = _LEAF.get(d.kind)
    if leaf is not None:
        try:
            os.unlink(f"{d.path}/{leaf}")
            os.rmdir(d.path)
            return True
        except NotADirectoryError:  # a stray file where a directory belongs
            os.unlink(d.path)
            return True
        except FileNotFoundError:
            if not os.path.lexists(d.path):
                return False
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
    # Anything else (uploads, repository internals, a directory with extra files): rmtree,
    # which unlinks and rmdirs bottom-up and never renames.
    try:
        if os.path.isdir(d.path) and not os.path.islink(d.path):
            shutil.rmtree(d.path)
        else:
            os.unlink(d.path)
    except FileNotFoundError:
        return False
    return True


def _remove_empty_upwards(path: str, top: str) -> int:
    """rmdir `path` and its parents while empty, stopping below `top`."""
    removed = 0
    while path.startswith(top + os.sep):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:  # not empty (a nested repository, other blobs): stop here
            break
        else:
            removed += 1
        path = os.path.dirname(path)
    return removed


class _Planner:
    def __init__(self, layout: StorageLayout, extra_roots: Iterable[tuple[str, Digest]]) -> None:
        self.layout = layout
        self.paths = layout.strings()
        self.pins: dict[str, list[str]] = {}
        for repo, digest in extra_roots:
            self.pins.setdefault(repo, []).append(digest.hex)
        self.blob_size: dict[str, int] = {}  # hex -> size of data, or _NO_DATA
        # parsed manifests are content-addressed, so one cache serves every repository:
        # hex -> (children, needed blobs, foreign layers)
        self.cache: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}
        self.reachable: set[str] = set()
        self.deletions: dict[DeletionKind, list[Deletion]] = {k: [] for k in DeletionKind}
        self.warnings: list[GCWarning] = []
        self.removed_repos: list[str] = []
        self.n_tags = 0
        self.n_manifests = 0

    def plan(self) -> GCPlan:
        self._scan_blobs()
        names = self.layout.repository_names()
        missing = sorted(set(self.pins) - set(names))
        if missing:
            raise GCError(f"{self.paths.repo(missing[0])}: pinned repository {missing[0]!r} does not exist; "
                          "nothing was deleted. Copy the image or remove the pin")
        for name in names:
            self._repo(name)
        blobs_deleted = 0
        blob_deletions = self.deletions[DeletionKind.BLOB]
        for hex_, size in self.blob_size.items():
            if hex_ not in self.reachable:
                blob_deletions.append(Deletion(
                    DeletionKind.BLOB, self.paths.blob_dir(hex_), None, max(size, 0)))
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
        )
        return GCPlan(self.layout, kept, tuple(deletions), sum(d.size for d in deletions),
                      counts, tuple(self.warnings), tuple(self.removed_repos))

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
        repo_dir = paths.repo(name)
        roots: list[tuple[str, str]] = []  # (manifest hex, file that names it)
        tags: list[tuple[str, str]] = []  # (tag, current hex)
        tags_dir = paths.tags(name)
        for tag in _subdirs(tags_dir):
            link = paths.tag_current_link(name, tag)
            hex_ = _read_link(link, f"tag {name}:{tag}")
            tags.append((tag, hex_))
            roots.append((hex_, link))
        for hex_ in self.pins.get(name, ()):
            roots.append((hex_, f"pinned {name}@sha256:{hex_}"))

        if not roots:
            # Tagless: drop every internal dir; nested repositories below stay untouched.
            self.removed_repos.append(name)
            with os.scandir(repo_dir) as it:
                for e in it:
                    if e.name.startswith("_") and e.is_dir(follow_symlinks=False):
                        size = _tree_size(e.path) if e.name == "_uploads" else 0
                        self.deletions[DeletionKind.REPOSITORY_INTERNAL].append(Deletion(DeletionKind.REPOSITORY_INTERNAL, e.path, name, size))
            return
        self.n_tags += len(tags)

        revs_dir = paths.revisions(name)
        revisions = _hex_subdirs(revs_dir)
        manifests: set[str] = set()
        needed: set[str] = set()  # config + non-foreign layers
        foreign: set[str] = set()
        stack = list(roots)
        while stack:
            hex_, named_by = stack.pop()
            if hex_ in manifests:
                continue
            rev_link = f"{revs_dir}/{hex_}/link"
            if hex_ not in revisions:
                raise GCError(f"{named_by} names manifest sha256:{hex_}, but {rev_link} does not exist, "
                              "so the registry cannot serve it; nothing was deleted. Re-copy the image")
            if _read_link(rev_link, "revision link") != hex_:
                raise GCError(f"{rev_link}: link names another digest than its directory; nothing "
                              "was deleted. Delete the revision directory and re-copy the image")
            children, blobs, foreign_layers = self._manifest(hex_, named_by)
            manifests.add(hex_)
            needed.update(blobs)
            foreign.update(foreign_layers)
            for child in children:
                stack.append((child, rev_link))
        self.n_manifests += len(manifests)

        for hex_ in revisions - manifests:
            self.deletions[DeletionKind.REVISION].append(Deletion(DeletionKind.REVISION, f"{revs_dir}/{hex_}", name))
        for tag, current in tags:
            index_dir = paths.tag_index(name, tag)
            for hex_ in _hex_subdirs(index_dir):
                if hex_ != current:
                    self.deletions[DeletionKind.TAG_INDEX].append(Deletion(DeletionKind.TAG_INDEX, f"{index_dir}/{hex_}", name))

        layers_dir = paths.layers(name)
        links = _hex_subdirs(layers_dir)
        sizes = self.blob_size
        for hex_ in links:
            has_data = sizes.get(hex_, _NO_DATA) != _NO_DATA
            # A link needed by a kept image stays even without data (that is reported below);
            # a foreign layer's link may go when dangling: its data legitimately lives elsewhere.
            if hex_ in needed or (hex_ in foreign and has_data):
                continue
            self.deletions[DeletionKind.LAYER_LINK].append(Deletion(DeletionKind.LAYER_LINK, f"{layers_dir}/{hex_}", name))
        for hex_ in sorted(needed):
            if sizes.get(hex_, _NO_DATA) == _NO_DATA:
                self.warnings.append(GCWarning(paths.blob_data(hex_),
                                               f"{name}: blob sha256:{hex_} is referenced but its data is missing"))
            if hex_ not in links:
                self.warnings.append(GCWarning(f"{layers_dir}/{hex_}/link",
                                               f"{name}: blob sha256:{hex_} is referenced but not linked"))

        uploads = paths.uploads(name)
        if os.path.isdir(uploads):
            self.deletions[DeletionKind.UPLOADS].append(Deletion(DeletionKind.UPLOADS, uploads, name, _tree_size(uploads)))

        reachable = self.reachable
        reachable.update(manifests)
        reachable.update(needed)
        reachable.update(h for h in foreign if sizes.get(h, _NO_DATA) != _NO_DATA)

    def _manifest(self, hex_: str, named_by: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        hit = self.cache.get(hex_)
        if hit is not None:
            return hit
        path = self.paths.blob_data(hex_)
        if self.blob_size.get(hex_, _NO_DATA) == _NO_DATA:
            raise GCError(f"{named_by} names manifest sha256:{hex_}, but its data {path} is missing; "
                          "nothing was deleted. Re-copy the image")
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, self.blob_size[hex_] + 1)
            finally:
                os.close(fd)
        except OSError as e:
            raise GCError(f"{path}: cannot read manifest ({e.strerror}); nothing was deleted") from None
        m = parse_manifest(data, path)
        if m.kind is ManifestKind.INDEX:
            entry = (tuple(c.hex for c in m.children), (), ())
        else:
            entry = ((), tuple(d.hex for d in m.blobs), tuple(d.hex for d in m.foreign_layers))
        self.cache[hex_] = entry
        return entry


def _scan_prefixes(prefix_dirs: list[tuple[str, str]]) -> dict[str, int]:
    """hex -> data size (or _NO_DATA) for the blob dirs below some blobs/sha256/<hh> dirs."""
    sizes: dict[str, int] = {}
    for prefix, pdir in prefix_dirs:
        for name in os.listdir(pdir):
            # Anything not shaped like a blob dir is left alone: not ours to judge.
            if name[:2] != prefix or not _HEX64.fullmatch(name):
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
        raise GCError(f"{path}: cannot read {what} ({e.strerror}); nothing was deleted. Repair the "
                      "link or delete its directory, then run GC again") from None
    if len(raw) != 71 or raw[:7] != b"sha256:" or not _HEX64.fullmatch(text := raw[7:].decode("ascii", "replace")):
        raise GCError(f"{path}: corrupt {what}, expected sha256:<64 hex>, found {raw[:80]!r}; nothing "
                      "was deleted. Repair the link or delete its directory, then run GC again")
    return text


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
    # one regex call per directory in the usual case where every name is valid
    if _HEX64_LINES.fullmatch("\n".join(names)):
        return set(names)
    return {n for n in names if _HEX64.fullmatch(n)}


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


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
