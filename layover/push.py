"""`layover push`: every image of a package into an existing registry, digests preserved.

The tarball is read in place (layover/tarindex.py): indexed once, then each blob streams out of
its byte range into the upload. No extraction, no temporary registry, no disk beyond the
package itself (docs/customer.md says why; docs/benchmarks.md has the numbers).

    images   the contents file's images (layover/contents.py); a package made before contents
             files existed: its tags and untagged root manifests (digest-pinned listed images)
    check    nothing is written yet. Every tag is looked up in the target and --on-existing-tag
             decides (fail: one conflict refuses the whole push). An attachment tag the target
             holds at another digest is a conflict only when moving it would drop something the
             target has (docs/attached.md, "At the customer site"); a referrers tag-schema index
             is merged instead, whatever the policy. A delta: every blob and
             manifest it leaves out must be in the target already (in the image's repository or
             another of the package's), or the push is refused naming them and the base package
    plan     each image walked with the one reachability walk: its manifests children first,
             the config and layer blobs its repository needs; every (repository, blob) pair
             HEADed, so a blob the target has anywhere among them is mounted, not sent
    push     images in parallel: each blob is present, mounted from a repository of the target
             that holds it, or uploaded once from the tarball (later users mount it); then the
             image's manifests by digest, index children first
    tags     last, once every image has landed: a refused or failed push tags nothing new. A
             merged referrers index is read from the target again just before it is written,
             so a referrer added there meanwhile is kept too

Retries: each unit (one blob, one manifest, one tag, one HEAD) is retried on Transient errors
here, with tenacity, because no Prefect task wraps a push: retries stay one layer deep
(docs/design.md §5), and for push this is that layer. A killed push leaves only whole blobs and
manifests behind (a registry commits an upload at its final PUT); a re-run finds them with HEAD
and uploads nothing twice.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from layover.attached import TagMerge, attachment_tag_subject, merge_attachment_tag
from layover.contents import CONTENTS_MEMBER, MAX_CONTENTS_BYTES, Contents
from layover.contents import Image as ContentsImage
from layover.contents import parse as parse_contents
from layover.errors import (
    ImageNotFoundError,
    LayoverError,
    PackageError,
    ReferenceError_,
    StageFailed,
    TagConflictError,
    Transient,
    UsageError,
)
from layover.manifest import DOCKER_SCHEMA1_SIGNED, media_type_of, parse_manifest
from layover.progress import NULL, Progress
from layover.reference import HEX64, Digest, ImageRef
from layover.storage.hashing import sha256_file
from layover.storage.layout import LINK_SIZE, StorageLayout, parse_link
from layover.storage.walk import Refs, walk
from layover.tarindex import RangeReader, TarIndex
from layover.units import human_bytes

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20  # what a registry accepts
STAGE = "push"
T = TypeVar("T")
R = TypeVar("R")


class OnExistingTag(enum.Enum):
    """What to do when the target's tag already points at another digest."""

    FAIL = "fail"  # refuse the whole push before anything is written
    SKIP = "skip"  # leave that image alone, push the others
    OVERWRITE = "overwrite"  # move the tag to the package's digest


# --- what the push talks to --------------------------------------------------------------------
class TargetRegistry(Protocol):
    """The registry calls a push needs (layover.adapters.registry_client.RegistryClient)."""

    @property
    def host(self) -> str: ...

    def head_manifest(self, repository: str, ref: str | Digest) -> _Head: ...

    def get_manifest(self, repository: str, ref: str | Digest) -> _Fetched: ...

    def put_manifest(self, repository: str, ref: str | Digest, data: bytes, media_type: str) -> Digest: ...

    def blob_size(self, repository: str, digest: Digest, *, for_push: bool = False) -> int | None: ...

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool: ...

    def upload_blob(
        self,
        repository: str,
        digest: Digest,
        data: Iterable[bytes],
        *,
        size: int | None = None,
        mount_from: str | None = None,
    ) -> str: ...


class _Head(Protocol):
    @property
    def digest(self) -> Digest | None: ...


class _Fetched(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def digest(self) -> Digest: ...


# --- values ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    """`--to HOST[:PORT][/PREFIX]`: the registry, and the path put before every repository."""

    host: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Destination:
        host, _, prefix = text.strip().partition("/")
        prefix = prefix.strip("/")
        if not host or "://" in text:
            raise UsageError(
                f"--to {text!r}: give HOST[:PORT][/PREFIX] without a scheme, e.g. registry.example.com/mirror"
            )
        if prefix:
            try:  # a host in front makes every component parse as a path component
                ImageRef.parse(f"registry.invalid/{prefix}/x:t")
            except ReferenceError_ as e:
                raise UsageError(
                    f"--to {text!r}: the prefix {prefix!r} is not a repository path ({e.reason})"
                ) from None
        return cls(host, prefix)

    def repository(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return f"{self.host}/{self.prefix}" if self.prefix else self.host


@dataclass(frozen=True)
class Root:
    """One image of the package: a tag, or an untagged manifest kept by digest."""

    repository: str
    tag: str | None
    digest: Digest

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag is not None else f"{self.repository}@{self.digest}"

    @property
    def key(self) -> tuple[str, str, str]:
        """Sort order: by repository, tagged before digest-only, then tag and digest."""
        return (self.repository, "1" if self.tag is None else f"0{self.tag}", self.digest.hex)


@dataclass(frozen=True)
class PlannedManifest:
    digest: Digest
    media_type: str
    carried: bool  # its bytes are in the tarball (a delta may leave them to its base)


@dataclass(frozen=True)
class PlannedImage:
    root: Root
    manifests: tuple[PlannedManifest, ...]  # children first, the image's own manifest last
    blobs: tuple[Digest, ...]  # config and layers, in the order the manifests name them

    @property
    def top(self) -> PlannedManifest:
        return self.manifests[-1]


@dataclass(frozen=True)
class Plan:
    images: tuple[PlannedImage, ...]
    sizes: dict[Digest, int]  # every carried blob's size
    missing_manifests: tuple[tuple[Root, Digest], ...] = ()  # neither carried nor in the target


class Action(enum.Enum):
    PUSH = "push"  # the tag (or digest) is not in the target
    PRESENT = "present"  # the target's tag already is the package's digest: nothing to do
    SKIP = "skip"  # conflict, --on-existing-tag skip
    OVERWRITE = "overwrite"  # conflict, --on-existing-tag overwrite
    MERGE = "merge"  # an attachment tag at another digest that loses nothing: no conflict


@dataclass(frozen=True)
class ImageResult:
    image: str  # as in the package: repo:tag or repo@digest
    target: str  # where it went: PREFIX/repo:tag
    digest: str
    action: str
    previous: str | None = None  # what a conflicting (or merged) tag pointed at
    written: str | None = None  # what the tag points at now, when not `digest`: a merged index


@dataclass
class PushReport:
    package: str
    target: str
    images: list[ImageResult] = field(default_factory=list)
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    tags_written: int = 0
    uploaded: list[str] = field(default_factory=list)  # digests sent as bytes, sorted
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def count(self, action: Action) -> int:
        return sum(1 for i in self.images if i.action == action.value)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def to_text(self) -> str:
        total = sum(self.seconds.values())
        lines = [
            f"pushed {self.package} to {self.target} in {total:.2f} s",
            f"images: {len(self.images)} ({self.count(Action.PUSH)} pushed, {self.count(Action.PRESENT)} "
            f"already there, {self.count(Action.OVERWRITE)} overwritten, {self.count(Action.SKIP)} skipped, "
            f"{self.count(Action.MERGE)} attachment tag(s) merged)",
            f"blobs: {self.blobs_uploaded} uploaded ({human_bytes(self.bytes_uploaded)}), "
            f"{self.blobs_mounted} mounted, {self.blobs_present} already there",
            f"manifests: {self.manifests_pushed} pushed, {self.manifests_present} already there; "
            f"tags written: {self.tags_written}",
            "seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()),
        ]
        lines += [
            f"skipped {i.target}: the target's tag is {i.previous}, the package's {i.digest}"
            for i in self.images
            if i.action == Action.SKIP.value
        ]
        return "\n".join(lines)


# --- the package -------------------------------------------------------------------------------
class Package:
    """A package tarball, indexed: its contents file (layover/contents.py: which images, and for
    a delta which base and which blobs it leaves out) and its storage tree, read through
    StorageLayout's paths. A package made before Layover wrote contents files is read from its
    tree alone: its images are its tags and untagged root manifests."""

    def __init__(self, index: TarIndex) -> None:
        self.index = index
        self.contents: Contents | None = None
        if index.member(CONTENTS_MEMBER) is not None:
            data = index.read(CONTENTS_MEMBER, limit=MAX_CONTENTS_BYTES)
            self.contents = parse_contents(data, f"{index.path}:{CONTENTS_MEMBER}")
        self._images = (
            {(i.repository, i.tag, i.digest): i for i in self.contents.images} if self.contents else {}
        )
        self.root = self.contents.storage_root if self.contents is not None else ""
        self.paths = StorageLayout(Path(self.root)).strings()
        if not index.is_dir(self.paths.repositories):
            raise PackageError(
                f"{index.path}: no {self.paths.repositories} inside; this is not a Layover package"
            )

    def image(self, root: Root) -> ContentsImage:
        """The contents file's entry for one of its roots."""
        return self._images[(root.repository, root.tag, str(root.digest))]

    @property
    def provider(self) -> str:
        """Who provides the blobs a delta leaves out, for messages."""
        if self.contents is None or self.contents.delta is None:
            return ""
        base = self.contents.delta.base
        return f"its base package ({base.release}, sha256 {base.sha256})"

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.index.path.name

    def carries(self, digest: Digest) -> bool:
        return self.index.member(self.paths.blob_data(digest.hex)) is not None

    def size(self, digest: Digest) -> int:
        m = self.index.member(self.paths.blob_data(digest.hex))
        if m is None:
            raise PackageError(f"{self.index.path}: blob {digest} is not in the package")
        return m.size

    def blob(self, digest: Digest) -> RangeReader:
        return self.index.reader(self.paths.blob_data(digest.hex))

    def manifest_bytes(self, digest: Digest) -> bytes | None:
        name = self.paths.blob_data(digest.hex)
        if self.index.member(name) is None:
            return None
        data = self.index.read(name, limit=MAX_MANIFEST_BYTES)
        if hashlib.sha256(data).hexdigest() != digest.hex:
            raise PackageError(
                f"{self.index.path}: manifest {name} does not hash to its name; the package is damaged"
            )
        return data

    def roots(self) -> list[Root]:
        """The contents file's images; without one, every tag, then every manifest revision no
        tag and no other manifest reaches (a digest-pinned listed image)."""
        if self.contents is not None:
            return [Root(i.repository, i.tag, Digest.parse(i.digest)) for i in self.contents.images]
        idx, paths = self.index, self.paths
        roots: list[Root] = []
        for repo in self._tree_repositories():
            tagged: list[Root] = []
            for tag in idx.subdirs(paths.tags(repo)):
                link = paths.tag_current_link(repo, tag)
                hex_ = parse_link(idx.read(link, limit=LINK_SIZE)) if idx.member(link) else None
                if hex_ is None:
                    raise PackageError(
                        f"{idx.path}: tag link {link} is missing or corrupt; the package is damaged"
                    )
                tagged.append(Root(repo, tag, Digest(hex_)))
            revisions = [Digest(h) for h in idx.subdirs(paths.revisions(repo)) if HEX64.fullmatch(h)]
            reached: set[str] = set()
            for r in tagged:
                reached.add(r.digest.hex)
            for d in revisions:  # children of any revision are not roots of their own
                data = self.manifest_bytes(d)
                if data is not None:
                    reached |= {c.hex for c in parse_manifest(data, self.paths.blob_data(d.hex)).children}
            roots += tagged
            roots += [Root(repo, None, d) for d in revisions if d.hex not in reached]
        return roots

    def repositories(self) -> list[str]:
        """Every repository of the package, sorted."""
        if self.contents is not None:
            return sorted({i.repository for i in self.contents.images})
        return self._tree_repositories()

    def _tree_repositories(self) -> list[str]:
        """Every directory below repositories/ that holds an `_` internal directory."""
        top = self.paths.repositories
        names: list[str] = []
        stack = [""]
        while stack:
            rel = stack.pop()
            children = self.index.subdirs(f"{top}/{rel}" if rel else top)
            if rel and any(c.startswith("_") for c in children):
                names.append(rel)
            stack.extend(f"{rel}/{c}" if rel else c for c in children if not c.startswith("_"))
        return sorted(names)


# --- planning (pure: the package and a fetch for manifests it does not carry) -----------------
def plan(package: Package, roots: Iterable[Root], fetch: Callable[[str, Digest], bytes | None]) -> Plan:
    """Each image's manifests (children first) and blobs. `fetch(repository, digest)` supplies a
    manifest the package does not carry (a delta's, from the target), or None."""
    docs: dict[str, bytes] = {}
    missing: list[tuple[Root, Digest]] = []
    images: list[PlannedImage] = []
    sizes: dict[Digest, int] = {}
    carried: dict[str, bool] = {}

    for root in sorted(set(roots), key=lambda r: r.key):

        def load(hex_: str, label: str, root: Root = root) -> Refs | None:
            if hex_ not in docs:
                digest = Digest(hex_)
                data = package.manifest_bytes(digest)
                carried[hex_] = data is not None
                if data is None:
                    data = fetch(root.repository, digest)
                    if data is None:
                        missing.append((root, digest))
                        return None
                docs[hex_] = data
            return Refs.of(parse_manifest(docs[hex_], f"{package.name}: {label}"))

        reach = walk([(root.digest.hex, str(root))], load)
        if root.digest.hex not in docs:
            continue  # missing: reported by the check
        manifests = tuple(
            PlannedManifest(Digest(h), media_type_of(parse_manifest(docs[h], h)), carried[h])
            for h in reach.manifests
        )
        blobs = [Digest(h) for h in reach.blobs]
        # foreign layers need not be pushed; the package's own copy goes along when it has one
        blobs += [Digest(h) for h in sorted(reach.foreign) if package.carries(Digest(h))]
        for d in blobs:
            if d not in sizes and package.carries(d):
                sizes[d] = package.size(d)
        images.append(PlannedImage(root, manifests, tuple(blobs)))
    return Plan(tuple(images), sizes, tuple(missing))


def _check_schema1(plan_: Plan) -> None:
    for img in plan_.images:
        for m in img.manifests:
            if m.media_type == DOCKER_SCHEMA1_SIGNED:
                raise PackageError(
                    f"{img.root}: manifest {m.digest} is Docker schema 1, which registries no longer accept; "
                    "rebuild the image"
                )


# --- checksum ----------------------------------------------------------------------------------
def check_sha256(package: Path, expected: str) -> None:
    got, _ = sha256_file(package)
    if got != expected:
        raise PackageError(
            f"{package}: sha256 is {got}, expected {expected}; the package is damaged or not the one "
            "shipped, nothing was pushed"
        )


# --- the push ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    destination: Destination
    on_existing_tag: OnExistingTag = OnExistingTag.FAIL
    concurrency: int = 4
    attempts: int = 4  # per unit, Transient errors only
    wait_max: float = 8.0  # seconds between attempts, at most
    provider: str = ""  # for a delta: the package that provides the blobs it leaves out


def push(
    package: Package,
    client: TargetRegistry,
    options: Options,
    *,
    progress: Progress | None = None,
    roots: Iterable[Root] | None = None,
) -> PushReport:
    """Push every image of `package` (or `roots`) to `client`'s registry under options.destination."""
    return _Push(package, client, options, progress or NULL).run(roots)


class _Push:
    def __init__(
        self, package: Package, client: TargetRegistry, options: Options, progress: Progress
    ) -> None:
        self.pkg = package
        self.client = client
        self.opt = options
        self.dest = options.destination
        self.progress = progress
        self.report = PushReport(package.name, f"{client.host}/{self.dest.prefix}".rstrip("/"))
        self._present: dict[Digest, set[str]] = {}  # blob -> target repositories known to hold it
        self._locks: dict[Digest, threading.Lock] = {}
        self._fetched: dict[Digest, bytes] = {}  # manifests read from the target (deltas)
        self._written: dict[Root, Digest] = {}  # tags set to a merged manifest, not the package's
        self._mutex = threading.Lock()

    # --- retries -----------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception_type(Transient),
            stop=stop_after_attempt(self.opt.attempts),
            wait=wait_exponential(multiplier=0.5, max=self.opt.wait_max),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "push: %s; attempt %d of %d",
                rs.outcome.exception() if rs.outcome else "?",
                rs.attempt_number,
                self.opt.attempts,
            ),
        )
        return retrying(fn)

    def _map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        items = list(items)
        if not items:
            return []
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.opt.concurrency, len(items))))
        try:
            return list(pool.map(fn, items))
        except BaseException:
            # Ctrl-C or a failure: start nothing new; requests in flight end on their own
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)

    def _timed(self, phase: str, started: float) -> float:
        now = time.monotonic()
        self.report.seconds[phase] = round(now - started, 3)
        return now

    # --- the phases --------------------------------------------------------------------------
    def run(self, roots: Iterable[Root] | None) -> PushReport:
        t = time.monotonic()
        roots = sorted(set(self.pkg.roots() if roots is None else roots), key=lambda r: r.key)
        if not roots:
            raise PackageError(f"{self.pkg.index.path}: the package holds no image; nothing to push")
        for r in roots:
            self._target_ref(r)  # every name fits the target's grammar, before any request
        actions = self._check_tags(roots)
        work_roots = [r for r in roots if actions[r][0] in (Action.PUSH, Action.OVERWRITE, Action.MERGE)]
        self._check_assumed(work_roots)
        t = self._timed("check", t)

        the_plan = plan(self.pkg, work_roots, self._fetch_from_target)
        _check_schema1(the_plan)
        work = list(the_plan.images)
        self._check_blobs(the_plan, work)
        t = self._timed("plan", t)

        to_send = sum(
            the_plan.sizes.get(d, 0)
            for d in {d for img in work for d in img.blobs}
            if not self._present.get(d)
        )
        self.progress.stage_started(STAGE, images=len(work), bytes_total=to_send)
        ok = False
        try:
            failures: list[tuple[str, BaseException]] = []

            def one(img: PlannedImage) -> None:
                try:
                    self._image(img, the_plan)
                except LayoverError as e:
                    failures.append((str(img.root), e))
                    self.progress.image_done(STAGE, str(img.root), ok=False)

            self._map(one, work)
            if failures:
                failures.sort(key=lambda f: f[0])
                name, first = failures[0]
                raise StageFailed(
                    f"push to {self.report.target}: {len(failures)} of {len(work)} image(s) failed, "
                    f"nothing was tagged; first: {name}: {first}",
                    failures,
                )
            t = self._timed("push", t)
            self._map(lambda img: self._tag(img, actions[img.root][0]), work)
            t = self._timed("tags", t)
            ok = True
        finally:
            self.progress.stage_finished(STAGE, ok=ok)
        for root in roots:
            action, previous = actions[root]
            self.report.images.append(
                ImageResult(
                    str(root),
                    self._target_ref(root),
                    str(root.digest),
                    action.value,
                    str(previous) if previous else None,
                    str(self._written[root]) if root in self._written else None,
                )
            )
        self.report.uploaded.sort()
        return self.report

    def _target_ref(self, root: Root) -> str:
        repo = self.dest.repository(root.repository)
        ref = f"{repo}:{root.tag}" if root.tag is not None else f"{repo}@{root.digest}"
        try:
            ImageRef.parse(f"{self.client.host}/{ref}")
        except ReferenceError_ as e:
            raise UsageError(
                f"--to {self.dest}: {root} would be {ref} there, which is not a valid name ({e.reason})"
            ) from None
        return ref

    # --- check: nothing is written -----------------------------------------------------------
    def _fetch_from_target(self, repository: str, digest: Digest) -> bytes | None:
        """A manifest the package leaves to its base: from the target, where the base went."""
        for repo in self._candidates(repository):
            try:
                got = self._retry(partial(self.client.get_manifest, repo, digest))
            except ImageNotFoundError:
                continue
            self._fetched[digest] = got.data
            return got.data
        return None

    def _candidates(self, repository: str) -> list[str]:
        own = self.dest.repository(repository)
        others = sorted({self.dest.repository(r) for r in self.pkg.repositories()} - {own})
        return [own, *others]

    def _check_tags(self, roots: list[Root]) -> dict[Root, tuple[Action, Digest | None]]:
        """Every tag looked up before anything is written; with FAIL, any conflict refuses the
        push, naming the conflicts."""

        def look(root: Root) -> tuple[Root, Digest | None, bool]:
            repo = self.dest.repository(root.repository)
            try:
                if root.tag is None:
                    self._retry(lambda: self.client.head_manifest(repo, root.digest))
                    return root, root.digest, True
                head = self._retry(lambda: self.client.head_manifest(repo, root.tag or ""))
                current = head.digest
                if current is None:  # a registry that sends no Docker-Content-Digest
                    current = self._retry(lambda: self.client.get_manifest(repo, root.tag or "")).digest
                return root, current, True
            except ImageNotFoundError:
                return root, None, False

        found = {r: (cur, exists) for r, cur, exists in self._map(look, roots)}
        actions: dict[Root, tuple[Action, Digest | None]] = {}
        conflicts: list[tuple[Root, Digest]] = []
        for root in roots:
            current, exists = found[root]
            if not exists:
                actions[root] = (Action.PUSH, None)
            elif current == root.digest:
                actions[root] = (Action.PRESENT, None)
            elif self._merges(root, current):
                actions[root] = (Action.MERGE, current)
            else:
                assert current is not None
                conflicts.append((root, current))
                policy = self.opt.on_existing_tag
                actions[root] = (
                    Action.SKIP if policy is OnExistingTag.SKIP else Action.OVERWRITE,
                    current,
                )
        if conflicts and self.opt.on_existing_tag is OnExistingTag.FAIL:
            named = ", ".join(
                f"{self._target_ref(r)} is {d}, the package has {r.digest}" for r, d in conflicts[:3]
            )
            more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
            raise TagConflictError(
                f"{self.report.target}: {len(conflicts)} tag(s) already point elsewhere ({named}{more}); "
                "nothing was pushed. Pass --on-existing-tag skip to leave them, or overwrite to move them"
            )
        return actions

    def _merges(self, root: Root, current: Digest | None) -> bool:
        """An attachment tag of the target at another digest that the package's can replace or
        be united with, losing nothing the target has (layover.attached.merge_attachment_tag)."""
        if root.tag is None or current is None or attachment_tag_subject(root.tag) is None:
            return False
        ours = self._root_manifest(root)
        if ours is None:
            return False
        repo = self.dest.repository(root.repository)
        theirs = self._retry(lambda: self.client.get_manifest(repo, current)).data
        return merge_attachment_tag(root.tag, ours, theirs).outcome is not TagMerge.CONFLICT

    def _root_manifest(self, root: Root) -> bytes | None:
        """The package's manifest for `root`; a delta that leaves it to its base: from the target."""
        return self.pkg.manifest_bytes(root.digest) or self._fetch_from_target(root.repository, root.digest)

    def _check_assumed(self, roots: list[Root]) -> None:
        """A delta: every blob and manifest it leaves out, that the images to push use, must be
        in the target (HEAD, in the image's repository or another of the package's); all of
        them are looked for, and the missing ones named, before anything is written."""
        contents = self.pkg.contents
        if contents is None or contents.delta is None:
            return
        assumed = contents.assumed
        wanted: dict[tuple[str, str], tuple[Root, bool]] = {}  # (repository, hex) -> (user, manifest?)
        for root in roots:
            img = self.pkg.image(root)
            for d in img.manifests:
                if d[7:] in assumed:
                    wanted.setdefault((root.repository, d[7:]), (root, True))
            for d in img.blobs:
                if d[7:] in assumed:
                    wanted.setdefault((root.repository, d[7:]), (root, False))

        def find(key: tuple[str, str]) -> tuple[tuple[str, str], str | None]:
            repository, hex_ = key
            d, is_manifest = Digest(hex_), wanted[key][1]
            for repo in self._candidates(repository):
                try:
                    if is_manifest:
                        self._retry(partial(self.client.head_manifest, repo, d))
                        return key, repo
                    if self._retry(partial(self.client.blob_size, repo, d)) is not None:
                        return key, repo
                except ImageNotFoundError:
                    continue
            return key, None

        missing: list[tuple[str, Digest]] = []
        for key, holder in self._map(find, sorted(wanted)):
            if holder is None:
                missing.append((str(wanted[key][0]), Digest(key[1])))
            elif not wanted[key][1]:
                self._present.setdefault(Digest(key[1]), set()).add(holder)
        self._refuse_missing(missing)

    def _refuse_missing(self, missing: list[tuple[str, Digest]]) -> None:
        if not missing:
            return
        first_user: dict[Digest, str] = {}
        for who, d in sorted(missing, key=lambda m: (m[1], m[0])):
            first_user.setdefault(d, who)
        missing = [(who, d) for d, who in first_user.items()]
        shown = ", ".join(f"{d} (used by {who})" for who, d in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        if self.pkg.contents is not None and self.pkg.contents.delta is not None:
            what = f"{len(missing)} blob(s) it does not carry are not in {self.report.target}"
            fix = f"push {self._provider()} there first"
        else:
            what = f"{len(missing)} blob(s) are neither in the package nor in {self.report.target}"
            fix = "the package is incomplete: check it against its .sha256, or rebuild it"
        raise PackageError(f"{self.pkg.index.path}: {what}: {shown}{more}; {fix}. Nothing was pushed")

    def _check_blobs(self, the_plan: Plan, work: list[PlannedImage]) -> None:
        """HEAD every (repository, blob) pair the work needs; a blob the package does not carry
        must be somewhere in the target, or the push is refused naming it."""
        pairs = sorted({(self.dest.repository(img.root.repository), d) for img in work for d in img.blobs})

        def head(pair: tuple[str, Digest]) -> tuple[str, Digest, bool]:
            repo, d = pair
            return repo, d, self._retry(lambda: self.client.blob_size(repo, d, for_push=True)) is not None

        for repo, d, there in self._map(head, pairs):
            self._locks.setdefault(d, threading.Lock())
            if there:
                self._present.setdefault(d, set()).add(repo)
        users: dict[Digest, list[Root]] = {}
        for img in work:
            for d in img.blobs:
                users.setdefault(d, []).append(img.root)
        lacking = [d for d in sorted(users) if d not in the_plan.sizes and not self._present.get(d)]

        def search(d: Digest) -> tuple[Digest, str | None]:
            for repo in self._candidates(users[d][0].repository):
                if self._retry(partial(self.client.blob_size, repo, d)) is not None:
                    return d, repo
            return d, None

        missing: list[tuple[str, Digest]] = [(str(r), d) for r, d in the_plan.missing_manifests]
        for d, holder in self._map(search, lacking):
            if holder is None:
                missing.append((str(users[d][0]), d))
            else:
                self._present.setdefault(d, set()).add(holder)
        self._refuse_missing(missing)

    # --- images --------------------------------------------------------------------------------
    def _image(self, img: PlannedImage, the_plan: Plan) -> None:
        label = str(img.root)
        self.progress.image_started(STAGE, label)
        repo = self.dest.repository(img.root.repository)
        sent = 0
        for d in img.blobs:
            sent += self._blob(repo, d, the_plan)
        for m in img.manifests:
            self._manifest(repo, m)
        self.progress.image_done(STAGE, label, bytes_copied=sent)

    def _blob(self, repo: str, d: Digest, the_plan: Plan) -> int:
        """Present, mounted or uploaded; returns the bytes sent. One upload per blob per push:
        whoever holds the blob's lock uploads, later users mount."""
        with self._locks.setdefault(d, threading.Lock()):
            have = self._present.setdefault(d, set())
            if repo in have:
                self._add(blobs_present=1)
                return 0
            sources = sorted(have)
            if d in the_plan.sizes:
                size = the_plan.sizes[d]
                outcome = self._retry(
                    lambda: self.client.upload_blob(
                        repo, d, self.pkg.blob(d), size=size, mount_from=sources[0] if sources else None
                    )
                )
            else:
                outcome = next((o for o in (self._mount(repo, d, s) for s in sources) if o), "")
                if not outcome:
                    raise PackageError(
                        f"{repo}: blob {d} is not carried by the package and {self.client.host} declined to "
                        f"mount it from {', '.join(sources)}; push {self._provider()} first"
                    )
            have.add(repo)
        if outcome == "uploaded":
            self._add(blobs_uploaded=1, bytes_uploaded=the_plan.sizes[d])
            with self._mutex:
                self.report.uploaded.append(str(d))
            return the_plan.sizes[d]
        self._add(**{"blobs_mounted" if outcome == "mounted" else "blobs_present": 1})
        return 0

    def _mount(self, repo: str, d: Digest, source: str) -> str:
        return "mounted" if self._retry(lambda: self.client.mount_blob(repo, d, source)) else ""

    def _manifest(self, repo: str, m: PlannedManifest) -> None:
        try:
            self._retry(lambda: self.client.head_manifest(repo, m.digest))
            self._add(manifests_present=1)
            return
        except ImageNotFoundError:
            pass
        data = self.pkg.manifest_bytes(m.digest) if m.carried else self._fetched.get(m.digest)
        if data is None:
            raise PackageError(
                f"{repo}: manifest {m.digest} is neither in the package nor readable in the target"
            )
        self._retry(lambda: self.client.put_manifest(repo, m.digest, data, m.media_type))
        self._add(manifests_pushed=1)

    def _tag(self, img: PlannedImage, action: Action) -> None:
        if img.root.tag is None:
            return
        repo, tag = self.dest.repository(img.root.repository), img.root.tag
        top = img.top
        data = self.pkg.manifest_bytes(top.digest) if top.carried else self._fetched.get(top.digest)
        assert data is not None  # _manifest had it
        if action is Action.MERGE:
            data = self._merged(repo, tag, data)
        written = self._retry(lambda: self.client.put_manifest(repo, tag, data, top.media_type))
        if written != top.digest:
            with self._mutex:
                self._written[img.root] = written
        self._add(tags_written=1)
        if action is Action.OVERWRITE:
            log.warning("push: moved %s/%s:%s to %s", self.client.host, repo, img.root.tag, top.digest)

    def _merged(self, repo: str, tag: str, ours: bytes) -> bytes:
        """The target's tag read again right before the write (a client may have added a referrer
        since the check) and united with the package's; a tag gone meanwhile gets the package's."""
        try:
            theirs = self._retry(lambda: self.client.get_manifest(repo, tag)).data
        except ImageNotFoundError:
            return ours
        merged = merge_attachment_tag(tag, ours, theirs)
        if merged.outcome is TagMerge.CONFLICT:
            raise TagConflictError(
                f"{self.client.host}/{repo}:{tag} changed during the push into something the package's cannot be "
                "merged with; run the push again to re-check the tags"
            )
        return merged.data

    def _provider(self) -> str:
        return self.opt.provider or self.pkg.provider or "the package this one was made from"

    def _add(self, **counts: int) -> None:
        with self._mutex:
            for k, v in counts.items():
                setattr(self.report, k, getattr(self.report, k) + v)


def open_package(path: Path) -> Package:
    """Index the tarball once; PackageError if it is not a readable Layover package."""
    index = TarIndex.open(path)
    try:
        return Package(index)
    except BaseException:
        index.close()
        raise


__all__ = [
    "Action",
    "Destination",
    "ImageResult",
    "OnExistingTag",
    "Options",
    "Package",
    "Plan",
    "PushReport",
    "Root",
    "check_sha256",
    "open_package",
    "plan",
    "push",
]
