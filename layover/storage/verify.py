"""Offline check that a package serves exactly the listed images, before it ships.

Checks, each failure a typed Problem:
  - every listed image resolves: tag -> current link -> revision link + manifest data; a
    tag+digest entry's tag points at that digest; a digest-only entry has its revision link;
  - every manifest reachable from those (index children, same repo) is stored and parses, and
    its config and non-foreign layers have a `_layers` link and data;
  - the sha256 of every blob on disk equals its name (streamed, 1 MiB reads);
  - nothing else: no repository or tag outside the list, no unreferenced blob, no `_uploads`.

`listed_only` (what `layover install` checks in a storage dir that holds other images too):
only the listed images' checks, and only the blobs they reference are hashed; the "nothing
else" checks are skipped. `hashed`: blobs the caller has checked itself, not hashed again.

A tarball's contents file (`layover/contents.json`, its first member) is not storage and not
a stray; layover/install.py checks it against the tree. What it claims reaches verify as a
`Claims` value, which the caller builds from the member's bytes (layover/package.py:
claims_reader) so that the storage wing knows nothing of the contents format:
  - the attached artifacts it records (signatures, SBOMs, referrers indexes of the listed
    images): accepted as images of the package, so checking a package against the images.list
    it was made from passes; any other tag is extra;
  - a delta's assumed blobs: a delta lacks its base's blob data by design (layover/delta.py).
    Its manifests, tags and links are checked as usual, and every blob with no data must be one
    the contents file declares assumed; those are counted, not checked (`layover install`
    checks them against the storage dir the base was installed into). Below a manifest the
    delta does not carry, the contents file's lists of the image's manifests and blobs stand in
    for the walk that cannot read it.

Two sources share those checks through a small read-only view of the storage tree:
  verify_storage  a directory; blobs are hashed on a thread pool (hashlib drops the GIL)
  verify_tarball  a release tarball, read once as a stream (`tarfile` "r|*") and never
                  extracted: no second copy on disk, and every byte is hashed as it is read.
                  Link files and JSON blobs up to 4 MiB (manifests, configs) stay in memory.
"""

from __future__ import annotations

import enum
import hashlib
import json
import lzma
import os
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from layover.errors import PackageError, StorageError, VerifyError
from layover.imagelist import ImageList
from layover.manifest import parse_manifest
from layover.reference import HEX64, Digest
from layover.storage.hashing import CHUNK, sha256_file
from layover.storage.layout import V2, StorageLayout, blob_of_data_file, parse_link
from layover.storage.walk import Refs, walk
from layover.tarball import CONTENTS_MEMBER, DELTA_README, MAX_CONTENTS_BYTES

_MAX_MANIFEST = 4 << 20  # the registry refuses bigger manifests
_MAX_SMALL = 4096  # link files are 71 bytes


class ProblemKind(enum.Enum):
    MISSING_REPOSITORY = "missing-repository"
    MISSING_TAG = "missing-tag"
    TAG_MISMATCH = "tag-mismatch"
    MISSING_MANIFEST = "missing-manifest"  # no revision link for a needed manifest
    BAD_MANIFEST = "bad-manifest"
    CORRUPT_LINK = "corrupt-link"
    MISSING_LINK = "missing-link"  # a config/layer without its `_layers` link
    MISSING_BLOB = "missing-blob"  # referenced, but no data
    DIGEST_MISMATCH = "digest-mismatch"
    EXTRA_REPOSITORY = "extra-repository"
    EXTRA_TAG = "extra-tag"
    EXTRA_REVISION = "extra-revision"  # a manifest revision no listed image reaches
    EXTRA_LINK = "extra-link"  # a `_layers` link no listed image needs
    STALE_TAG_INDEX = "stale-tag-index"  # a tag-index entry other than the tag's current digest
    UNREFERENCED_BLOB = "unreferenced-blob"
    UPLOADS = "uploads"
    STRAY = "stray"  # something in the tree that is not registry storage
    BAD_CONTENTS = "bad-contents"  # the tarball's contents file cannot be read


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    path: str  # the file or directory concerned ("" if none)
    repo: str | None
    message: str
    blob: str | None = None  # DIGEST_MISMATCH: the hex of the blob whose data is damaged

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}" + (f" ({self.path})" if self.path else "")


@dataclass(frozen=True)
class VerifyReport:
    source: str
    problems: tuple[Problem, ...]
    images: int
    manifests: int
    blobs: int
    bytes_hashed: int
    seconds: float
    attached: int = 0  # images accepted beyond the list: attachments the contents file records
    kind: str = "full"  # "delta": blob data its base provides is not in it
    assumed: int = 0  # a delta's blobs that are not in it, as its contents file declares
    base: str = ""  # a delta's base release, for people
    deferred: bool = False  # blob data left to the caller to hash (the release's tarball writer)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_blobs(self) -> tuple[str, ...]:
        """Blobs whose data does not hash to their name (hex), in report order."""
        return tuple(dict.fromkeys(p.blob for p in self.problems if p.blob is not None))

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "ok": self.ok,
                "images": self.images,
                "manifests": self.manifests,
                "blobs": self.blobs,
                "bytes_hashed": self.bytes_hashed,
                "seconds": round(self.seconds, 3),
                "attached": self.attached,
                "kind": self.kind,
                "assumed": self.assumed,
                "problems": [
                    {"kind": p.kind.value, "path": p.path, "repo": p.repo, "message": p.message}
                    for p in self.problems
                ],
            },
            indent=2,
        )

    def summary(self, limit: int = 5) -> str:
        rate = self.bytes_hashed / self.seconds / 2**20 if self.seconds > 0 else 0.0
        hashed = (
            "blob data hashed as the tarball is written"
            if self.deferred
            else f"{self.bytes_hashed / 2**20:.1f} MiB hashed in {self.seconds:.2f}s ({rate:.0f} MiB/s)"
        )
        lines = [
            f"verify {self.source}: {'OK' if self.ok else 'FAILED'}",
            f"  {self.images} images, {self.manifests} manifests, {self.blobs} blobs, {hashed}",
        ]
        if self.attached:
            lines.append(
                f"  {self.attached} of the images are attached artifacts the contents file records "
                "(signatures, attestations, SBOMs, referrers indexes)"
            )
        if self.kind == "delta":
            lines.append(
                f"  a delta of {self.base or 'its base package'}: its manifests, tags and links are checked; "
                f"{self.assumed} blob(s) its base provides are not in it and were not checked "
                "(layover install checks them against the storage dir, --deep hashes them)"
            )
        if self.problems:
            by_kind: dict[str, int] = {}
            for p in self.problems:
                by_kind[p.kind.value] = by_kind.get(p.kind.value, 0) + 1
            lines.append(
                f"  {len(self.problems)} problem(s): "
                + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items()))
            )
            lines += [f"  - {p}" for p in self.problems[:limit]]
            if len(self.problems) > limit:
                lines.append(
                    f"  ... and {len(self.problems) - limit} more problem(s) not shown "
                    "(--json lists every one)"
                )
        return "\n".join(lines)

    def raise_for_problems(self, limit: int = 20) -> None:
        if self.ok:
            return
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = f"\n  ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        raise VerifyError(
            f"{self.source}: {len(self.problems)} problem(s); the package does not serve exactly the "
            f"listed images. Do not ship it: re-run the release (sync, GC) and verify again.\n{shown}{more}"
        )


def verify_storage(
    layout: StorageLayout,
    images: ImageList,
    *,
    workers: int = 4,
    listed_only: bool = False,
    hashed: frozenset[str] = frozenset(),
    hash_blobs: bool = True,
) -> VerifyReport:
    """`hash_blobs=False`: every check but the blobs' data hashing, which the caller does itself
    (the release hashes each blob while writing the tarball and refuses to publish it otherwise:
    one read of every byte instead of two, docs/design.md §1)."""
    start = time.monotonic()
    view = _DirView(layout)
    workers = max(1, workers)
    if listed_only:
        return _verify_listed(layout, view, images, workers, hashed, start)
    items = [(h, view.paths.blob_data(h)) for h in sorted(view.blob_sizes) if h not in hashed and hash_blobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Hash in the background while the structure is checked; each worker takes every n-th
        # blob so sizes spread evenly enough.
        hashing = [pool.submit(_hash_slice, items[i::workers]) for i in range(workers)]
        problems: list[Problem] = list(view.problems)
        checker = _Checker(view, layout, problems)
        checker.run(images)
        found: list[Problem] = []
        for f in hashing:
            part, total = f.result()
            found += part
            view.bytes_hashed += total
    problems += sorted(found, key=lambda p: p.path)
    report = _report(layout, problems, images, checker, len(view.blob_sizes), view, start)
    return report if hash_blobs else replace(report, deferred=True)


def _verify_listed(
    layout: StorageLayout,
    view: _DirView,
    images: ImageList,
    workers: int,
    hashed: frozenset[str],
    start: float,
) -> VerifyReport:
    problems: list[Problem] = []
    checker = _Checker(view, layout, problems, listed_only=True)
    checker.run(images)
    needed = sorted(h for h in checker.referenced if h in view.blob_sizes)
    items = [(h, view.paths.blob_data(h)) for h in needed if h not in hashed]
    found: list[Problem] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part, total in pool.map(_hash_slice, [items[i::workers] for i in range(workers)]):
            found += part
            view.bytes_hashed += total
    problems += sorted(found, key=lambda p: p.path)
    return _report(layout, problems, images, checker, len(needed), view, start)


def _report(
    layout: StorageLayout,
    problems: list[Problem],
    images: ImageList,
    checker: _Checker,
    blobs: int,
    view: _DirView,
    start: float,
) -> VerifyReport:
    return VerifyReport(
        str(layout.root),
        tuple(problems),
        len(images),
        len(checker.manifests),
        blobs,
        view.bytes_hashed,
        time.monotonic() - start,
    )


@dataclass(frozen=True)
class Declared:
    """One image as a delta's contents file lists it: its manifests and blobs ("sha256:<hex>")."""

    manifests: tuple[str, ...]
    blobs: tuple[str, ...]


@dataclass(frozen=True)
class Claims:
    """What a package's contents file adds to a check against an images.list."""

    images: ImageList  # the listed images plus the attached artifacts the package records
    attached: int = 0  # how many of `images` are those artifacts
    # a delta: the blobs whose data it lacks by design (hex), each listed image's manifests and
    # blobs keyed by ImageRef.key (the walk cannot read below a manifest the base provides),
    # and the base's release
    assumed: frozenset[str] = frozenset()
    declared: Mapping[tuple[str, str | None, Digest | None], Declared] | None = None
    base: str = ""


# Builds the claims from the contents member's bytes (and where they came from, for messages);
# raises PackageError when the member cannot be read.
ClaimsReader = Callable[[bytes, str], Claims]


def verify_tarball(
    path: Path, images: ImageList, *, workers: int = 4, claims: ClaimsReader | None = None
) -> VerifyReport:
    """`workers` is accepted for symmetry: a tar stream is read and hashed sequentially.
    `claims`: how to read the contents member (without it, the list alone is checked)."""
    del workers
    start = time.monotonic()
    try:
        view = _TarView(path)
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:  # truncated/corrupt
        raise StorageError(str(path), f"cannot read the tarball ({e}); rebuild it") from None
    problems = list(view.problems)
    found: Claims | None = None
    if view.contents is not None and claims is not None:
        try:
            found = claims(view.contents, f"{path}:{CONTENTS_MEMBER}")
        except PackageError as e:
            problems.append(Problem(ProblemKind.BAD_CONTENTS, CONTENTS_MEMBER, None, str(e)))
    return _finish(str(path), view, StorageLayout(Path(".")), images, problems, start, found)


# --- the checks, shared by both views -----------------------------------------------------
def _finish(
    source: str,
    view: _View,
    layout: StorageLayout,
    images: ImageList,
    problems: list[Problem],
    start: float,
    claims: Claims | None = None,
) -> VerifyReport:
    checked = claims.images if claims is not None else images
    delta = claims if claims is not None and claims.declared is not None else None
    checker = _Checker(view, layout, problems, delta=delta)
    checker.run(checked)
    return VerifyReport(
        source,
        tuple(problems),
        len(checked),
        len(checker.manifests),
        len(view.blob_sizes),
        view.bytes_hashed,
        time.monotonic() - start,
        attached=claims.attached if claims is not None else 0,
        kind="delta" if delta is not None else "full",
        assumed=len(delta.assumed) if delta is not None else 0,
        base=delta.base if delta is not None else "",
    )


class _Checker:
    def __init__(
        self,
        view: _View,
        layout: StorageLayout,
        problems: list[Problem],
        *,
        listed_only: bool = False,
        delta: Claims | None = None,
    ) -> None:
        self.listed_only = listed_only
        # a delta: blobs whose data may be absent, and each image's manifests and blobs as its
        # contents file lists them (the walk cannot read below a manifest the delta lacks)
        self.assumed = delta.assumed if delta is not None else frozenset()
        self.declared = dict(delta.declared or {}) if delta is not None else {}
        self.view = view
        self.layout = layout
        self.paths = layout.strings()
        self.problems = problems
        self.referenced: set[str] = set()
        self.manifests: set[str] = set()
        self.walked: dict[str, set[str]] = {}  # repo -> manifests walked
        self.blobs_checked: dict[str, set[str]] = {}  # repo -> blobs whose link and data were checked
        self.foreign: set[str] = set()  # foreign layers: a link to one is allowed, not required
        self.current: dict[tuple[str, str], str] = {}  # (repo, listed tag) -> its current digest

    def add(self, kind: ProblemKind, path: object, repo: str | None, message: str) -> None:
        self.problems.append(Problem(kind, str(path), repo, message))

    def run(self, images: ImageList) -> None:
        paths, view = self.paths, self.view
        repos = set(_repositories(view, paths.repositories))
        listed_tags: dict[str, set[str]] = {}
        for ref in images.refs:
            repo = ref.repository
            tags = listed_tags.setdefault(repo, set())
            if repo not in repos:
                self.add(
                    ProblemKind.MISSING_REPOSITORY,
                    paths.repo(repo),
                    repo,
                    f"{ref}: repository {repo} is not in the package",
                )
                continue
            if ref.tag is None:
                assert ref.digest is not None  # the parser guarantees a tag or a digest
                self._walk(repo, ref.digest.hex, f"{ref}")
                self._declared(ref.key, repo, f"{ref}")
                continue
            tags.add(ref.tag)
            link = paths.tag_current_link(repo, ref.tag)
            hex_ = self._link(link, repo, f"{ref}: tag", ProblemKind.MISSING_TAG)
            if hex_ is None:
                continue
            self.current[(repo, ref.tag)] = hex_
            if ref.digest is not None and ref.digest.hex != hex_:
                self.add(
                    ProblemKind.TAG_MISMATCH,
                    link,
                    repo,
                    f"{ref}: tag points at sha256:{hex_}, the list pins {ref.digest}",
                )
            self._walk(repo, hex_, f"{ref}")
            self._declared(ref.key, repo, f"{ref}")
        if self.listed_only:
            return

        for repo in sorted(repos - set(listed_tags)):
            self.add(
                ProblemKind.EXTRA_REPOSITORY, paths.repo(repo), repo, f"repository {repo} is not in the list"
            )
        for repo in sorted(repos & set(listed_tags)):
            for tag in sorted(set(view.subdirs(paths.tags(repo))) - listed_tags[repo]):
                self.add(
                    ProblemKind.EXTRA_TAG,
                    paths.tag_dir(repo, tag),
                    repo,
                    f"tag {repo}:{tag} is not in the list",
                )
        for repo in sorted(repos & set(listed_tags)):
            walked = self.walked.get(repo, set())
            for hex_ in sorted(set(view.subdirs(paths.revisions(repo))) - walked):
                self.add(
                    ProblemKind.EXTRA_REVISION,
                    paths.revision_link(repo, hex_),
                    repo,
                    f"{repo} has revision sha256:{hex_} that no listed image reaches; run GC",
                )
            needed = self.blobs_checked.get(repo, set()) | self.foreign
            for hex_ in sorted(set(view.subdirs(paths.layers(repo))) - needed):
                self.add(
                    ProblemKind.EXTRA_LINK,
                    paths.layer_link(repo, hex_),
                    repo,
                    f"{repo} links blob sha256:{hex_} that no listed image needs; run GC",
                )
            for tag in sorted(listed_tags[repo]):
                current = self.current.get((repo, tag))
                if current is None:
                    continue  # the tag itself is missing or corrupt: reported already
                for hex_ in sorted(set(view.subdirs(paths.tag_index(repo, tag))) - {current}):
                    self.add(
                        ProblemKind.STALE_TAG_INDEX,
                        paths.tag_index_dir(repo, tag, hex_),
                        repo,
                        f"tag {repo}:{tag} keeps an old index entry sha256:{hex_}; run GC",
                    )
        for repo in sorted(repos):
            if view.is_dir(paths.uploads(repo)):
                self.add(
                    ProblemKind.UPLOADS,
                    paths.uploads(repo),
                    repo,
                    f"{repo} has upload sessions; run GC before packaging",
                )
        for hex_ in sorted(set(view.blob_sizes) - self.referenced):
            self.add(
                ProblemKind.UNREFERENCED_BLOB,
                paths.blob_data(hex_),
                None,
                f"blob sha256:{hex_} is not referenced by any listed image; run GC",
            )

    def _link(self, path: str, repo: str, what: str, missing: ProblemKind) -> str | None:
        raw = self.view.read_small(str(path))
        if raw is None:
            self.add(missing, path, repo, f"{what} link is missing")
            return None
        hex_ = parse_link(raw)
        if hex_ is None:
            self.add(ProblemKind.CORRUPT_LINK, path, repo, f"{what} link is corrupt: {raw[:80]!r}")
        return hex_

    def _walk(self, repo: str, root: str, what: str) -> None:
        paths, view = self.paths, self.view

        def load(hex_: str, named_by: str) -> Refs | None:
            self.referenced.add(hex_)
            rev = paths.revision_link(repo, hex_)
            got = self._link(
                rev, repo, f"{named_by}: manifest sha256:{hex_} revision", ProblemKind.MISSING_MANIFEST
            )
            if got is not None and got != hex_:
                self.add(
                    ProblemKind.CORRUPT_LINK,
                    rev,
                    repo,
                    f"revision link names sha256:{got}, not its directory",
                )
            data_path = paths.blob_data(hex_)
            data = view.manifest_bytes(hex_)
            if data is None and hex_ in self.assumed:
                return None  # its base provides it: _declared checks what lies below
            if data is None:
                self.add(
                    ProblemKind.MISSING_BLOB,
                    data_path,
                    repo,
                    f"{named_by}: manifest sha256:{hex_} has no data",
                )
                return None
            try:
                refs = Refs.of(parse_manifest(data, data_path))
            except StorageError as e:
                self.add(ProblemKind.BAD_MANIFEST, data_path, repo, f"{named_by}: {e.reason}")
                return None
            self.manifests.add(hex_)
            return refs

        reach = walk([(root, what)], load, seen=self.walked.setdefault(repo, set()))
        for hex_, named_by in reach.blobs.items():
            self._blob(repo, hex_, named_by)
        # A foreign layer's data may be absent; when present it is referenced, not stray.
        self.referenced.update(reach.foreign)
        self.foreign.update(reach.foreign)

    def _blob(self, repo: str, hex_: str, named_by: str) -> None:
        """A config or layer: its `_layers` link, and its data (or, in a delta, declared assumed)."""
        paths = self.paths
        self.referenced.add(hex_)
        checked = self.blobs_checked.setdefault(repo, set())
        if hex_ in checked:
            return
        checked.add(hex_)
        link = paths.layer_link(repo, hex_)
        got = self._link(link, repo, f"{named_by}: blob sha256:{hex_}", ProblemKind.MISSING_LINK)
        if got is not None and got != hex_:
            self.add(
                ProblemKind.CORRUPT_LINK, link, repo, f"layer link names sha256:{got}, not sha256:{hex_}"
            )
        if hex_ not in self.view.blob_sizes and hex_ not in self.assumed:
            what = "has no data" + (" and the delta does not declare it assumed" if self.declared else "")
            self.add(
                ProblemKind.MISSING_BLOB,
                paths.blob_data(hex_),
                repo,
                f"{named_by}: blob sha256:{hex_} {what}",
            )

    def _declared(self, key: tuple[str, str | None, Digest | None], repo: str, what: str) -> None:
        """A delta: the image's manifests and blobs as its contents file lists them, those the walk
        did not reach (below a manifest its base provides) checked the same way."""
        image = self.declared.get(key)
        if image is None:
            return
        walked = self.walked.setdefault(repo, set())
        for d in image.manifests:
            if d[7:] not in walked:
                self._walk(repo, d[7:], what)
        for d in image.blobs:
            self._blob(repo, d[7:], what)


def _repositories(view: _View, top: str) -> Iterable[str]:
    stack = [""]
    while stack:
        rel = stack.pop()
        children = view.subdirs(f"{top}/{rel}" if rel else top)
        if rel and any(c.startswith("_") for c in children):
            yield rel
        stack.extend(f"{rel}/{c}" if rel else c for c in children if not c.startswith("_"))


# --- views ------------------------------------------------------------------------------
class _View(Protocol):
    """Read-only access to a storage tree by the path strings StorageLayout builds."""

    blob_sizes: dict[str, int]  # hex -> size, for blob dirs that hold data
    bytes_hashed: int
    problems: list[Problem]

    def read_small(self, path: str) -> bytes | None: ...
    def subdirs(self, path: str) -> list[str]: ...
    def is_dir(self, path: str) -> bool: ...
    def manifest_bytes(self, hex_: str) -> bytes | None: ...


class _DirView(_View):
    def __init__(self, layout: StorageLayout) -> None:
        self.layout = layout
        self.paths = layout.strings()
        self.blob_sizes = {}
        self.bytes_hashed = 0
        self.problems = []
        top = self.paths.blobs
        for prefix in self.subdirs(top):
            pdir = f"{top}/{prefix}"
            with os.scandir(pdir) as it:
                for e in it:
                    if e.name[:2] != prefix or not HEX64.fullmatch(e.name) or not e.is_dir():
                        self.problems.append(Problem(ProblemKind.STRAY, e.path, None, "not a blob directory"))
                        continue
                    try:
                        self.blob_sizes[e.name] = os.stat(e.path + "/data").st_size
                    except FileNotFoundError:
                        self.problems.append(
                            Problem(ProblemKind.STRAY, e.path, None, "blob directory without data")
                        )

    def read_small(self, path: str) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.read(fd, _MAX_SMALL)
        except IsADirectoryError:
            return None
        finally:
            os.close(fd)

    def subdirs(self, path: str) -> list[str]:
        try:
            with os.scandir(path) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def manifest_bytes(self, hex_: str) -> bytes | None:
        if hex_ not in self.blob_sizes:
            return None
        with open(self.paths.blob_data(hex_), "rb") as f:
            return f.read(_MAX_MANIFEST + 1)


def _hash_slice(paths: list[tuple[str, str]]) -> tuple[list[Problem], int]:
    problems = []
    total = 0
    for hex_, path in paths:
        got, n = sha256_file(path)
        total += n
        if got != hex_:
            problems.append(
                Problem(
                    ProblemKind.DIGEST_MISMATCH,
                    path,
                    None,
                    f"content hashes to sha256:{got}, not its name; the blob is corrupt",
                    hex_,
                )
            )
    return problems, total


class _TarView(_View):
    """The tarball read once; member names are normalised to start at docker/registry/v2."""

    def __init__(self, path: Path) -> None:
        self.blob_sizes = {}
        self.bytes_hashed = 0
        self.problems = []
        self.files: dict[str, bytes | None] = {}
        self.dirs: dict[str, set[str]] = {}
        self.json_blobs: dict[str, bytes] = {}
        self.contents: bytes | None = None  # the contents file, when the tarball has one
        anchor = V2.as_posix()
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                name = member.name.removeprefix("./").strip("/")
                if name == CONTENTS_MEMBER and member.isreg():
                    f = tf.extractfile(member)
                    assert f is not None
                    self.contents = f.read(MAX_CONTENTS_BYTES + 1)
                    continue
                if name == DELTA_README and member.isreg():
                    continue
                cut = name.find(anchor)
                if cut < 0 or (cut > 0 and name[cut - 1] != "/"):
                    if member.isdir():  # the directories holding the tree
                        continue
                    self.problems.append(
                        Problem(ProblemKind.STRAY, member.name, None, "not under docker/registry/v2")
                    )
                    continue
                name = name[cut:]
                self._add_parents(name)
                if member.isdir():
                    self.dirs.setdefault(name, set())
                    continue
                if not member.isreg():
                    self.problems.append(
                        Problem(
                            ProblemKind.STRAY,
                            name,
                            None,
                            "not a regular file or directory (links do not belong in a package)",
                        )
                    )
                    continue
                rel = name[len(anchor) + 1 :]
                blob = blob_of_data_file(rel)
                f = tf.extractfile(member)
                assert f is not None
                if blob is not None:
                    self._blob(blob, name, f, member.size)
                elif member.size <= _MAX_SMALL:
                    self.files[name] = f.read()
                else:
                    self.files[name] = None
        top = StorageLayout(Path(".")).strings().blobs
        for prefix in self.subdirs(top):
            for entry in sorted(self.dirs[f"{top}/{prefix}"]):
                if entry[:2] != prefix or entry not in self.blob_sizes:
                    self.problems.append(
                        Problem(
                            ProblemKind.STRAY,
                            f"{top}/{prefix}/{entry}",
                            None,
                            "not a blob directory with data",
                        )
                    )

    def _add_parents(self, name: str) -> None:
        child = name
        parent = os.path.dirname(child)
        while parent:
            kids = self.dirs.setdefault(parent, set())
            base = os.path.basename(child)
            if base in kids:
                break
            kids.add(base)
            child, parent = parent, os.path.dirname(parent)

    def _blob(self, hex_: str, name: str, f, size: int) -> None:
        h = hashlib.sha256()
        keep: list[bytes] | None = [] if size <= _MAX_MANIFEST else None
        first = True
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if first:
                first = False
                if not chunk.lstrip().startswith(b"{"):
                    keep = None  # layers are not JSON: only manifests and configs are kept
            if keep is not None:
                keep.append(chunk)
        self.bytes_hashed += size
        self.blob_sizes[hex_] = size
        self.files[name] = None
        if keep is not None:
            self.json_blobs[hex_] = b"".join(keep)
        if h.hexdigest() != hex_:
            self.problems.append(
                Problem(
                    ProblemKind.DIGEST_MISMATCH,
                    name,
                    None,
                    f"content hashes to sha256:{h.hexdigest()}, not its name; the blob is corrupt",
                    hex_,
                )
            )

    def read_small(self, path: str) -> bytes | None:
        return self.files.get(path)

    def subdirs(self, path: str) -> list[str]:
        return sorted(c for c in self.dirs.get(path, ()) if f"{path}/{c}" in self.dirs)

    def is_dir(self, path: str) -> bool:
        return path in self.dirs

    def manifest_bytes(self, hex_: str) -> bytes | None:
        if hex_ not in self.blob_sizes:
            return None
        # A referenced manifest that is not JSON (or too big) still gets parsed, and fails.
        return self.json_blobs.get(hex_, b"<not JSON>")
