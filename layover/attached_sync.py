"""Attached sync: what is attached to every listed image at the source, copied into the archive.

It runs for every listed image, copied or skipped: an image the archive already holds may have
been signed since the last release (its referrers tag-schema index is then rewritten too), and
only asking the source finds that. Discovery of the images archive sync's plan finds already
archived (`discover_each`) need not wait for archive sync: the flow starts it right after the
plan, so it runs while the other images copy, and the stage then discovers only what was copied
(`sync_attached(..., early=...)`).

    discover  at the source, for the digest the archive holds for the listed reference (so the
              attachments are those of exactly the image archived): one tag listing per
              repository, one referrers-API probe per run, and a GET per attachment tag. A
              manifest by digest that the archive already holds is read from its storage.
    require   `--attached require`: every listed image must carry a signature, else one
              MissingSignatureError names them all, before anything is copied.
    copy      what the archive lacks, over HTTP and byte for byte (docs/design.md §1): blobs
              (streamed, hashed on the way), then manifests children first (untagged ones by
              digest), then their tags; a referrers tag-schema index after its referrers.
              What the archive already holds (checked in its storage) costs no request.

The result is the run's record (layover.attached.AttachedRecord) and the package's list
(layover.attached.package_list): every later stage treats attached artifacts as images.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from layover.adapters.attachment_reader import SourceAttachmentReader
from layover.adapters.credential_helper import resolver
from layover.adapters.registry_client import DESTINATION, MONOLITHIC_LIMIT, SOURCE, Endpoint, RegistryClient
from layover.attached import (
    AttachedMode,
    AttachedRecord,
    ImageAttachments,
    ListedAttachments,
    discover,
    package_list,
)
from layover.attached_storage import StorageAttachmentReader
from layover.copy import Route
from layover.errors import (
    CopyError,
    LayoverError,
    RegistryError,
    RegistryHTTPError,
    StageFailed,
    Transient,
    TransientCopyError,
)
from layover.imagelist import ImageList
from layover.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor, ManifestKind, parse_manifest
from layover.reference import Digest, ImageRef
from layover.report import StageReport
from layover.storage.images import resolve
from layover.storage.layout import StorageLayout
from layover.storage.walk import Refs, walk

STAGE = "attached sync"


@dataclass(frozen=True)
class AttachedCopy:
    """What copying one image's attachments into the archive wrote."""

    image: str
    manifests: int  # manifest PUTs (by digest or by tag)
    blobs_copied: int
    bytes_copied: int
    blobs_reused: int  # already linked in the archive's repository


@dataclass(frozen=True)
class AttachedSync:
    """The stage's outcome: the record, the package's list and what it cost."""

    record: AttachedRecord
    images: ImageList  # what the package holds: listed images plus attached artifacts
    copies: tuple[AttachedCopy, ...] = ()
    requests: dict[str, int] = field(default_factory=dict)  # to the source, by kind (early + late)
    discovery_seconds: float = 0.0  # in the stage: waiting for the early part, then the rest
    copy_seconds: float = 0.0
    early_images: int = 0  # discovered while archive sync copied the others
    early_seconds: float = 0.0  # the early part's wall time (alongside archive sync)

    def stage(self, seconds: float) -> StageReport:
        if self.record.mode == "none":
            return StageReport(STAGE, seconds, detail="--attached none: not looked up, none shipped")
        n = len(self.record.images)
        asked = sum(self.requests.values())
        counts = self.record.counts
        parts = [
            f"{counts.total} attached ({counts})" if counts.total else "nothing attached",
            f"discovery {asked} request(s) ({asked / n if n else 0:.1f} per image) "
            f"in {self.discovery_seconds:.2f} s"
            + (
                f" ({self.early_images} image(s) in {self.early_seconds:.2f} s alongside archive sync)"
                if self.early_images
                else ""
            ),
        ]
        written = sum(c.manifests for c in self.copies)
        if written:
            parts.append(f"{written} manifest(s) written in {self.copy_seconds:.2f} s")
        unsigned = len(self.record.unsigned())
        if unsigned and counts.signatures:
            parts.append(f"{unsigned} image(s) unsigned")
        if self.record.problems:
            parts.append(f"{len(self.record.problems)} unreadable attachment(s) left out")
        return StageReport(
            STAGE,
            seconds,
            images=n,
            blobs_copied=sum(c.blobs_copied for c in self.copies),
            blobs_reused=sum(c.blobs_reused for c in self.copies),
            bytes_moved=sum(c.bytes_copied for c in self.copies),
            detail=", ".join(parts),
        )


def skipped(images: ImageList) -> AttachedSync:
    """`--attached none`: nothing looked up, the package holds exactly the list."""
    return AttachedSync(AttachedRecord("none"), images)


class _ArchiveFirst:
    """Discovery's reader: tags and referrers from the source (they change), a manifest by
    digest from the archive's storage when it holds it (content-addressed: the same bytes)."""

    def __init__(self, archive: StorageAttachmentReader, source: SourceAttachmentReader) -> None:
        self.archive = archive
        self.source = source

    def tags(self, repository: str) -> Sequence[str]:
        return self.source.tags(repository)

    def manifest(self, repository: str, ref: str | Digest) -> tuple[bytes, str, Digest] | None:
        if isinstance(ref, Digest):
            got = self.archive.manifest(repository, ref)
            if got is not None:
                return got
        return self.source.manifest(repository, ref)

    def referrers(self, repository: str, digest: Digest) -> Sequence[Descriptor] | None:
        return self.source.referrers(repository, digest)


class AttachedSyncer:
    """Discovers at the source and copies into the archive; thread-safe (clients handed in)."""

    def __init__(self, source: RegistryClient, archive: RegistryClient, layout: StorageLayout) -> None:
        self.source = source
        self.archive = archive
        self.layout = layout
        self.paths = layout.strings()
        self.stored = StorageAttachmentReader(layout)
        self.reader = SourceAttachmentReader(source)
        self.discovery = _ArchiveFirst(self.stored, self.reader)

    @classmethod
    @contextmanager
    def open(cls, route: Route) -> Iterator[AttachedSyncer]:
        """Clients for the route's source (its TLS setting and credentials, found where skopeo
        finds them) and its archive (127.0.0.1, plain HTTP), closed on leaving."""
        source = RegistryClient(
            Endpoint(route.src_host, tls_verify=route.src_tls_verify, flags=SOURCE),
            resolver(route.src_authfile, SOURCE.authfile),
            timeout=min(route.timeout, 60),
        )
        try:
            archive = RegistryClient(
                Endpoint(route.dst_host, tls_verify=False, loopback_only=True, flags=DESTINATION),
                timeout=min(route.timeout, 300),
            )
            try:
                yield cls(source, archive, route.destination)
            finally:
                archive.close()
        finally:
            source.close()

    # --- discovery -------------------------------------------------------------------------
    def discover(self, ref: ImageRef) -> ImageAttachments:
        """What is attached to the image the archive holds for `ref` (by its tag at the source
        if the archive does not hold it)."""
        archived = resolve(self.layout, ref)
        return discover(self.discovery, ImageRef(ref.repository, ref.tag, archived) if archived else ref)

    # --- copy ------------------------------------------------------------------------------
    def copy(self, entry: ListedAttachments) -> AttachedCopy:
        """Copy what the archive lacks of one image's attachments; CopyError names the image."""
        found = entry.found
        try:
            return self._copy(entry.ref, found)
        except RegistryHTTPError as e:
            kind = TransientCopyError if isinstance(e, Transient) or e.status >= 500 else CopyError
            raise kind(f"{entry.ref}: copying its attached artifacts into the archive: {e}") from None
        except RegistryError as e:
            if isinstance(e, Transient):
                raise TransientCopyError(f"{entry.ref}: copying its attached artifacts: {e}") from None
            raise CopyError(f"{entry.ref}: copying its attached artifacts: {e}") from None

    def _copy(self, ref: ImageRef, found: ImageAttachments) -> AttachedCopy:
        repo = found.repository
        docs: dict[str, tuple[bytes, str]] = {}
        sizes: dict[str, int] = {}

        def load(hex_: str, label: str) -> Refs:
            got = self.discovery.manifest(repo, Digest(hex_))
            if got is None:
                raise CopyError(f"{label}: the source no longer has it; run the release again")
            data, media_type, _ = got
            manifest = parse_manifest(data, f"{self.source.host}/{repo}@sha256:{hex_}")
            docs[hex_] = (data, media_type or _media_type(manifest.kind))
            sizes.update(_blob_sizes(data))
            return Refs.of(manifest)

        roots = [*(a.digest for a in found.artifacts), *(r.digest for r in found.referrers_indexes)]
        reach = walk([(d.hex, f"{ref}: attached {d}") for d in roots], load)
        copied = reused = size = 0
        for hex_ in reach.blobs:
            if self._linked(repo, hex_):
                reused += 1
                continue
            size += self._copy_blob(repo, Digest(hex_), sizes.get(hex_))
            copied += 1
        tags: dict[Digest, list[str]] = {}
        for tag, digest in found.tags.items():
            tags.setdefault(digest, []).append(tag)
        written = 0
        for hex_ in reach.manifests:  # post-order: an index after its children
            digest = Digest(hex_)
            targets: list[str | Digest] = [
                t for t in tags.get(digest, []) if _at(self.stored.manifest(repo, t)) != digest
            ]
            if not targets and self.stored.manifest(repo, digest) is None:
                targets = [digest]
            data, media_type = docs[hex_]
            for target in targets:
                self.archive.put_manifest(repo, target, data, media_type)
                written += 1
        return AttachedCopy(str(ref), written, copied, size, reused)

    def _linked(self, repo: str, hex_: str) -> bool:
        return os.path.isfile(self.paths.layer_link(repo, hex_)) and os.path.isfile(
            self.paths.blob_data(hex_)
        )

    def _copy_blob(self, repo: str, digest: Digest, size: int | None) -> int:
        """Source -> archive, verified on the way (RegistryClient hashes both directions). The
        manifest's descriptor gives the size; only without one is the source asked."""
        if size is None:
            size = self.source.blob_size(repo, digest)
        if size is None:
            raise CopyError(f"{repo}@{digest}: an attached artifact's blob is missing at the source")
        if size <= MONOLITHIC_LIMIT:
            self.archive.upload_blob(repo, digest, self.source.get_blob(repo, digest))
        else:
            self.archive.upload_blob(repo, digest, self.source.iter_blob(repo, digest), size=size)
        return size


def _blob_sizes(data: bytes) -> dict[str, int]:
    """hex -> size of a manifest's config and layers, as its descriptors declare them."""
    doc = json.loads(data)
    out = {}
    for d in [doc.get("config"), *(doc.get("layers") or [])]:
        if isinstance(d, dict) and isinstance(d.get("size"), int) and Digest.is_valid(str(d.get("digest"))):
            out[str(d["digest"])[7:]] = d["size"]
    return out


def _at(got: tuple[bytes, str, Digest] | None) -> Digest | None:
    return got[2] if got is not None else None


def _media_type(kind: ManifestKind) -> str:
    # mediaType is optional in OCI documents; the shape decides (Docker's always carry one)
    return OCI_INDEX if kind is ManifestKind.INDEX else OCI_MANIFEST


@dataclass(frozen=True)
class Discovered:
    """Discovery's outcome for some listed images, each found or failed (after its retries);
    an image it did not get to (stopped) is absent."""

    found: Mapping[ImageRef, ImageAttachments | LayoverError]
    seconds: float = 0.0


def discover_each(
    refs: Sequence[ImageRef],
    syncer: AttachedSyncer,
    *,
    concurrency: int,
    retries: int = 3,
    log: Callable[[str], None] = lambda _: None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], object] | None = None,
) -> Discovered:
    """Discover for `refs` on `concurrency` threads, transient failures retried per image; a
    failure is kept, not raised: the stage that uses the outcome names it with the others.
    `stop` set: no image is started any more, and a retry's wait (by default) ends."""
    stop = stop or threading.Event()
    started = time.monotonic()
    wait = sleep or stop.wait
    outcomes = _outcomes(refs, syncer.discover, str, max(1, concurrency), retries, wait, log, stop=stop)
    found = {r: o for r, o in zip(refs, outcomes, strict=True) if o is not None}
    return Discovered(found, time.monotonic() - started)


def sync_attached(
    images: ImageList,
    syncer: AttachedSyncer,
    mode: AttachedMode,
    *,
    concurrency: int,
    retries: int = 3,
    log: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    early: Discovered | None = None,
) -> AttachedSync:
    """Discover for every listed image `early` has no outcome for, check `require`, copy what
    the archive lacks.

    Transient failures (a dropped connection, a 5xx) are retried per image, `retries` times with
    a backoff of 2, 4, 8 s: the one retry layer of this stage (docs/design.md §5). Retrying the
    whole stage instead would repeat every image's lookups for one lost request, and on a flaky
    source a release of hundreds of images would rarely get through. Every image that still
    fails, early or now, is named in one StageFailed."""
    if mode == "none":
        return skipped(images)
    refs = images.refs
    workers = max(1, concurrency)
    started = time.monotonic()
    before = dict(early.found) if early is not None else {}
    rest = [r for r in refs if r not in before]
    now = _outcomes(rest, syncer.discover, str, workers, retries, sleep, log)
    outcome = {**before, **dict(zip(rest, now, strict=True))}
    found = _raise_failures(refs, [outcome[r] for r in refs], str)
    record = AttachedRecord(mode, tuple(ListedAttachments(r, f) for r, f in zip(refs, found, strict=True)))
    discovery_seconds = time.monotonic() - started
    for problem in record.problems:
        log(f"attachment left out: {problem}")
    if mode == "require":
        record.require_signed()
    # One copy per (repository, image digest): a digest listed under two tags has one set. The
    # copies into one repository run one after another: two uploads of one blob into one
    # repository at once (every SBOM's empty config) race in Distribution, whose link writes are
    # not atomic, and a manifest PUT then fails with MANIFEST_BLOB_UNKNOWN.
    distinct = list(
        {(e.found.repository, e.found.digest): e for e in record.images if e.found.digests}.values()
    )
    started = time.monotonic()
    copies = _raise_failures(
        distinct,
        _outcomes(
            distinct,
            syncer.copy,
            lambda e: str(e.ref),
            workers,
            retries,
            sleep,
            log,
            serial=lambda e: e.found.repository,
        ),
        lambda e: str(e.ref),
    )
    return AttachedSync(
        record,
        package_list(images, record),
        tuple(copies),
        dict(Counter(syncer.reader.requests)),
        discovery_seconds,
        time.monotonic() - started,
        early_images=len(refs) - len(rest),
        early_seconds=early.seconds if early is not None else 0.0,
    )


_T = TypeVar("_T")
_R = TypeVar("_R")


def _raise_failures(
    items: Sequence[_T], outcomes: Sequence[_R | LayoverError | None], label: Callable[[_T], str]
) -> list[_R]:
    """The results, in order; StageFailed names every item that failed, in order."""
    failures = [(label(i), o) for i, o in zip(items, outcomes, strict=True) if isinstance(o, LayoverError)]
    if failures:
        named = "; ".join(f"{image}: {err}" for image, err in failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise StageFailed(f"{STAGE}: {len(failures)} image(s) failed: {named}{more}", failures)
    return [o for o in outcomes if o is not None and not isinstance(o, LayoverError)]


def _outcomes(
    items: Sequence[_T],
    fn: Callable[[_T], _R],
    label: Callable[[_T], str],
    workers: int,
    retries: int,
    sleep: Callable[[float], object],
    log: Callable[[str], None],
    *,
    serial: Callable[[_T], str] | None = None,
    stop: threading.Event | None = None,
) -> list[_R | LayoverError | None]:
    """fn over items on `workers` threads, each retried on Transient; items with the same
    `serial` key run one after another. Per item its result, the error it ended with, or None
    if `stop` was set before it started."""

    def attempt(item: _T) -> _R | LayoverError:
        for n in range(retries + 1):
            try:
                return fn(item)
            except Transient as e:
                if n == retries:
                    return e
                delay = min(8.0, 2.0 ** (n + 1)) * random.uniform(0.5, 1.5)
                log(f"{label(item)}: {e}; retrying in {delay:.1f} s")
                sleep(delay)
                if stop is not None and stop.is_set():
                    return e
            except LayoverError as e:
                return e
        raise AssertionError("unreachable")

    outcomes: list[_R | LayoverError | None] = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(serial(item) if serial is not None else str(i), []).append(i)

    def run(indexes: list[int]) -> None:
        for i in indexes:
            if stop is not None and stop.is_set():
                return
            outcomes[i] = attempt(items[i])

    if items:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, groups.values()))
    return outcomes
