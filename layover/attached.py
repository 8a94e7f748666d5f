"""What is attached to a listed image: signatures, attestations, SBOMs and other OCI referrers.

Pure discovery over a small reader (`AttachmentReader`); the registry adapter is
layover.adapters.attachment_reader. Everything attached lives in the image's own repository:

    subjects      the image's digest, and every child digest when it is an index or manifest list
    cosign tags   sha256-<hex>.sig / .att / .sbom       -> one manifest each (tag convention)
    referrers     GET /v2/<repo>/referrers/<digest>      -> an index of descriptors (OCI 1.1 API)
                  else the tag schema sha256-<hex>       -> the same index, pushed by the client
                                                            (Distribution 2.8 and 3.x have no API)
    recursion     every artifact found is itself a subject: a signature of an SBOM is attached
                  to the SBOM, and so to the image

A tag that only looks like an attachment (its subject is not reachable from a listed image) is
never visited: discovery walks from the image outwards, so orphans stay out of the result.

Classification (first match wins), into signature / attestation / SBOM / other:
    1. the cosign tag suffix: .sig, .att, .sbom
    2. the artifact type: the manifest's `artifactType`, else the referrers descriptor's, else
       `config.mediaType` (distribution-spec's rule for referrers): cosign simple signing,
       Notary and sigstore bundles (a bundle's predicateType annotation tells a signature from an
       attestation) / DSSE and in-toto / SPDX, CycloneDX and Syft
    3. the layers' media types, when every layer says the same

What a release ships (`--attached copy|require|none`, docs/attached.md): the record of what was
attached at the source when the archive was synced (`AttachedRecord`), and from it the package's
list (`package_list`): the listed images plus every attached artifact, tagged ones as
`repo:tag@digest` and untagged referrers as `repo@digest`, so package sync, GC and verify treat
them as ordinary images of the package.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from layover.contents import Attached, Contents, assemble
from layover.errors import ImageNotFoundError, MissingSignatureError
from layover.imagelist import Entry, ImageList
from layover.manifest import (
    COSIGN_SIMPLESIGNING,
    CYCLONEDX,
    DSSE_ENVELOPE,
    IN_TOTO,
    NOTARY_SIGNATURE,
    SIGSTORE_BUNDLE,
    SPDX_JSON,
    SPDX_TEXT,
    SYFT_JSON,
    Descriptor,
    Manifest,
    ManifestKind,
    parse_manifest,
)
from layover.reference import Digest, ImageRef


class AttachmentKind(enum.Enum):
    SIGNATURE = "signature"
    ATTESTATION = "attestation"
    SBOM = "sbom"
    OTHER = "other"  # any other referrer (an unknown artifactType, a vendor's own format)


class FoundBy(enum.Enum):
    COSIGN_TAG = "cosign tag"
    REFERRERS_API = "referrers API"
    REFERRERS_TAG = "referrers tag schema"


COSIGN_SUFFIXES: dict[str, AttachmentKind] = {
    ".sig": AttachmentKind.SIGNATURE,
    ".att": AttachmentKind.ATTESTATION,
    ".sbom": AttachmentKind.SBOM,
}

# The predicateType cosign v3 writes on a sigstore bundle that signs an image (as opposed to one
# carrying an attestation); the same bundle media type holds both.
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
BUNDLE_PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"
BUNDLE_CONTENT_ANNOTATION = "dev.sigstore.bundle.content"


def referrers_tag(digest: Digest) -> str:
    """The referrers tag schema's tag for `digest` (sha256-<hex>; sha256 needs no truncation)."""
    return f"sha256-{digest.hex}"


def cosign_tag(digest: Digest, suffix: str) -> str:
    """`sha256-<hex>.sig` (or .att, .sbom): where cosign stores what it attaches to `digest`."""
    if suffix not in COSIGN_SUFFIXES:
        raise ValueError(f"cosign tag suffix must be one of {sorted(COSIGN_SUFFIXES)}, not {suffix!r}")
    return f"{referrers_tag(digest)}{suffix}"


def attachment_tag_subject(tag: str) -> tuple[Digest, str] | None:
    """(subject digest, suffix) for a cosign or referrers-schema tag; suffix "" for the latter.

    None for any other tag. Says nothing about whether the subject exists.
    """
    if not tag.startswith("sha256-"):
        return None
    hex_, dot, rest = tag[len("sha256-") :].partition(".")
    suffix = dot + rest
    if suffix and suffix not in COSIGN_SUFFIXES:
        return None
    text = f"sha256:{hex_}"
    return (Digest.parse(text), suffix) if Digest.is_valid(text) else None


# --- an attachment tag the target already holds (layover push, docs/attached.md) -----------
class TagMerge(enum.Enum):
    """How a target's attachment tag at another digest relates to the package's."""

    COVERED = "covered"  # the package's holds everything the target's does: moving it loses nothing
    MERGED = "merged"  # a referrers index listing referrers the package's lacks: write the union
    CONFLICT = "conflict"  # moving the tag would drop something only the target has


@dataclass(frozen=True)
class MergedTag:
    outcome: TagMerge
    data: bytes  # what to write under the tag: the package's bytes, or the union (MERGED)


def merge_attachment_tag(tag: str, package: bytes, target: bytes) -> MergedTag:
    """What pushing the package's manifest `package` onto the target's tag, which holds `target`,
    must write (docs/attached.md, "At the customer site"). Pure; both are manifest bytes.

    A referrers tag-schema index (`sha256-<hex>`) is a list a client rewrites whenever it adds a
    referrer: the result is the package's index with the target's referrers it lacks appended,
    what cosign and oras do when they add one. A cosign tag (`.sig`, `.att`, `.sbom`) is one
    manifest whose layers are the signatures (cosign appends a layer to sign again): covered when
    every layer descriptor of the target's, annotations included (cosign keeps the signature
    there), is in the package's; otherwise a conflict. Any other tag, or a tag whose content is not
    the shape its name promises, is a conflict."""
    found = attachment_tag_subject(tag)
    if found is None:
        return MergedTag(TagMerge.CONFLICT, package)
    ours, theirs = _json(package), _json(target)
    if ours is None or theirs is None:
        return MergedTag(TagMerge.CONFLICT, package)
    if found[1] == "":
        mine, other = ours.get("manifests"), theirs.get("manifests")
        if not isinstance(mine, list) or not isinstance(other, list) or "layers" in theirs:
            return MergedTag(TagMerge.CONFLICT, package)
        have = {d.get("digest") for d in mine if isinstance(d, dict)}
        extra = [d for d in other if isinstance(d, dict) and d.get("digest") not in have]
        if not extra:
            return MergedTag(TagMerge.COVERED, package)
        union = {**ours, "manifests": [*mine, *extra]}
        return MergedTag(TagMerge.MERGED, json.dumps(union, separators=(",", ":")).encode())
    mine_layers, their_layers = ours.get("layers"), theirs.get("layers")
    if not isinstance(mine_layers, list) or not isinstance(their_layers, list):
        return MergedTag(TagMerge.CONFLICT, package)
    covered = {_canonical(d) for d in their_layers} <= {_canonical(d) for d in mine_layers}
    return MergedTag(TagMerge.COVERED if covered else TagMerge.CONFLICT, package)


def _json(data: bytes) -> dict | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- the reader ----------------------------------------------------------------------------
class AttachmentReader(Protocol):
    """What discovery needs from a registry. Every call is about one repository."""

    def tags(self, repository: str) -> Sequence[str]:
        """Every tag of the repository (empty for an unknown repository)."""
        ...

    def manifest(self, repository: str, ref: str | Digest) -> tuple[bytes, str, Digest] | None:
        """(exact bytes, media type, digest of the bytes) of a manifest by tag or digest; None if absent."""
        ...

    def referrers(self, repository: str, digest: Digest) -> Sequence[Descriptor] | None:
        """The referrers API's descriptors for `digest`; None when the registry has no referrers API."""
        ...


# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttachedArtifact:
    """One manifest attached (directly or through other artifacts) to a listed image."""

    repository: str
    digest: Digest
    subject: Digest  # what it is attached to: the image, an index child, or another artifact
    kind: AttachmentKind
    found_by: FoundBy
    media_type: str | None  # of the manifest itself (OCI image manifest, or an index)
    artifact_type: str | None  # artifactType, else the descriptor's, else config.mediaType
    tag: str | None  # the tag that carries it: its cosign tag, or the referrers-schema index tag
    children: tuple[Digest, ...] = ()  # when the artifact is itself an index: copy these first


@dataclass(frozen=True)
class ReferrersIndex:
    """A referrers tag-schema index (`sha256-<hex>` tag): copied by tag, its digest preserved.

    A client rewrites it whenever it adds a referrer, so its digest changes when something new is
    attached to an unchanged image.
    """

    repository: str
    subject: Digest
    tag: str
    digest: Digest
    referrers: tuple[Digest, ...]  # its manifests, in document order


@dataclass(frozen=True)
class AttachmentProblem:
    """Something that looks attached but cannot be used; left out of the result, reported."""

    repository: str
    ref: str  # the tag or digest that failed
    subject: Digest
    reason: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.ref} (attached to {self.subject}): {self.reason}"


@dataclass(frozen=True)
class AttachmentCounts:
    signatures: int = 0
    attestations: int = 0
    sboms: int = 0
    other: int = 0

    @classmethod
    def of(cls, artifacts: Iterable[AttachedArtifact]) -> AttachmentCounts:
        kinds = [a.kind for a in artifacts]
        return cls(
            kinds.count(AttachmentKind.SIGNATURE),
            kinds.count(AttachmentKind.ATTESTATION),
            kinds.count(AttachmentKind.SBOM),
            kinds.count(AttachmentKind.OTHER),
        )

    @property
    def total(self) -> int:
        return self.signatures + self.attestations + self.sboms + self.other

    def __add__(self, other: AttachmentCounts) -> AttachmentCounts:
        return AttachmentCounts(
            self.signatures + other.signatures,
            self.attestations + other.attestations,
            self.sboms + other.sboms,
            self.other + other.other,
        )

    def __str__(self) -> str:
        return (
            f"{self.signatures} signature(s), {self.attestations} attestation(s), "
            f"{self.sboms} SBOM(s), {self.other} other referrer(s)"
        )


@dataclass(frozen=True)
class ImageAttachments:
    """Everything attached to one listed image, in discovery order (breadth first)."""

    repository: str
    digest: Digest  # the listed image's manifest
    subjects: tuple[Digest, ...]  # the image's digest, then its index children
    artifacts: tuple[AttachedArtifact, ...]
    referrers_indexes: tuple[ReferrersIndex, ...]
    problems: tuple[AttachmentProblem, ...] = ()

    @property
    def counts(self) -> AttachmentCounts:
        return AttachmentCounts.of(self.artifacts)

    @property
    def signed(self) -> bool:
        """At least one signature attached to the image itself (not only to a child or an SBOM)."""
        return any(a.kind is AttachmentKind.SIGNATURE and a.subject == self.digest for a in self.artifacts)

    @property
    def digests(self) -> frozenset[Digest]:
        """Every manifest discovery added to the image: artifacts, their children, referrers indexes."""
        out = {a.digest for a in self.artifacts}
        out.update(c for a in self.artifacts for c in a.children)
        out.update(r.digest for r in self.referrers_indexes)
        return frozenset(out)

    @property
    def tags(self) -> dict[str, Digest]:
        """tag -> digest of every attachment tag to copy: cosign tags and referrers-schema tags."""
        out = {a.tag: a.digest for a in self.artifacts if a.found_by is FoundBy.COSIGN_TAG and a.tag}
        out.update((r.tag, r.digest) for r in self.referrers_indexes)
        return out


# --- classification ------------------------------------------------------------------------
def effective_artifact_type(manifest: Manifest, descriptor: Descriptor | None = None) -> str | None:
    """distribution-spec's artifactType of a referrer: its own, else the descriptor's, else config's."""
    from_descriptor = descriptor.artifact_type if descriptor else None
    return manifest.artifact_type or from_descriptor or manifest.config_media_type


def classify(
    manifest: Manifest, *, descriptor: Descriptor | None = None, cosign_suffix: str | None = None
) -> AttachmentKind:
    """Signature, attestation, SBOM or other: see the module docstring for the order of the rules."""
    if cosign_suffix is not None:
        return COSIGN_SUFFIXES[cosign_suffix]
    annotations = dict(descriptor.annotations if descriptor else ())
    annotations.update(manifest.annotations)  # the manifest's own win: a fallback index may drop them
    for media_type in (
        manifest.artifact_type,
        descriptor.artifact_type if descriptor else None,
        manifest.config_media_type,
    ):
        kind = _kind_of_type(media_type, annotations)
        if kind is not None:
            return kind
    layer_kinds = {_kind_of_type(layer.media_type, annotations) for layer in manifest.layers}
    if len(layer_kinds) == 1 and None not in layer_kinds:
        return layer_kinds.pop()  # type: ignore[return-value]  # None was excluded just above
    return AttachmentKind.OTHER


def _kind_of_type(media_type: str | None, annotations: dict[str, str]) -> AttachmentKind | None:
    if not media_type:
        return None
    mt = media_type.split(";")[0].strip().lower()
    if mt == COSIGN_SIMPLESIGNING or mt.startswith(NOTARY_SIGNATURE):
        return AttachmentKind.SIGNATURE
    if mt.startswith(SIGSTORE_BUNDLE):
        predicate = annotations.get(BUNDLE_PREDICATE_ANNOTATION)
        content = annotations.get(BUNDLE_CONTENT_ANNOTATION)
        if predicate == COSIGN_SIGN_PREDICATE or content == "message-signature":
            return AttachmentKind.SIGNATURE
        return AttachmentKind.ATTESTATION if predicate else None
    if mt in (DSSE_ENVELOPE, IN_TOTO) or mt.startswith("application/vnd.in-toto."):
        return AttachmentKind.ATTESTATION
    if (
        mt in (SPDX_JSON, SYFT_JSON)
        or mt.startswith(SPDX_TEXT)
        or mt.startswith(CYCLONEDX)
        or mt.startswith("application/spdx")
    ):
        return AttachmentKind.SBOM
    return None


# --- discovery -----------------------------------------------------------------------------
def discover(reader: AttachmentReader, image: ImageRef) -> ImageAttachments:
    """Everything attached to `image` (by its digest if pinned, else its tag) in its repository.

    ImageNotFoundError if the image itself is not there; an attachment that cannot be read is
    reported in `problems`, not raised.
    """
    repository = image.repository
    ref: str | Digest = image.digest if image.digest is not None else image.tag or ""
    fetched = reader.manifest(repository, ref)
    if fetched is None:
        raise ImageNotFoundError(
            f"{image}: not found in the source registry, so its signatures and SBOMs "
            "cannot be looked up; check the tag or digest in the images list"
        )
    data, _media_type, digest = fetched
    root = parse_manifest(data, f"{repository}@{digest}")
    subjects = (digest, *root.children) if root.kind is ManifestKind.INDEX else (digest,)
    walk = _Walk(reader, repository, frozenset(reader.tags(repository)))
    for subject in subjects:
        walk.queue.append(subject)
    walk.run()
    return ImageAttachments(
        repository,
        digest,
        subjects,
        tuple(walk.artifacts.values()),
        tuple(walk.indexes),
        tuple(walk.problems),
    )


class _Walk:
    """Breadth-first over subjects; every artifact found becomes a subject in turn."""

    def __init__(self, reader: AttachmentReader, repository: str, tags: frozenset[str]) -> None:
        self.reader = reader
        self.repository = repository
        self.tags = tags
        self.queue: deque[Digest] = deque()
        self.visited: set[Digest] = set()
        self.artifacts: dict[Digest, AttachedArtifact] = {}
        self.indexes: list[ReferrersIndex] = []
        self.problems: list[AttachmentProblem] = []

    def run(self) -> None:
        while self.queue:
            subject = self.queue.popleft()
            if subject in self.visited:
                continue
            self.visited.add(subject)
            self._cosign_tags(subject)
            self._referrers(subject)

    def _problem(self, ref: str | Digest, subject: Digest, reason: str) -> None:
        self.problems.append(AttachmentProblem(self.repository, str(ref), subject, reason))

    def _read(self, ref: str | Digest, subject: Digest) -> tuple[Manifest, str, Digest] | None:
        fetched = self.reader.manifest(self.repository, ref)
        if fetched is None:
            what = "tag is listed" if isinstance(ref, str) else "listed as a referrer"
            self._problem(ref, subject, f"{what} but the registry has no such manifest")
            return None
        data, media_type, digest = fetched
        return parse_manifest(data, f"{self.repository}@{digest}"), media_type, digest

    def _add(self, artifact: AttachedArtifact) -> None:
        if artifact.digest not in self.artifacts:  # one artifact may be both tagged and a referrer
            self.artifacts[artifact.digest] = artifact
        self.queue.append(artifact.digest)

    def _cosign_tags(self, subject: Digest) -> None:
        for suffix in COSIGN_SUFFIXES:
            tag = cosign_tag(subject, suffix)
            if tag not in self.tags:
                continue
            read = self._read(tag, subject)
            if read is None:
                continue
            manifest, media_type, digest = read
            kind = classify(manifest, cosign_suffix=suffix)
            self._add(
                AttachedArtifact(
                    self.repository,
                    digest,
                    subject,
                    kind,
                    FoundBy.COSIGN_TAG,
                    manifest.media_type or media_type,
                    effective_artifact_type(manifest),
                    tag,
                    manifest.children,
                )
            )

    def _referrers(self, subject: Digest) -> None:
        descriptors = self.reader.referrers(self.repository, subject)
        found_by, tag = FoundBy.REFERRERS_API, None
        if descriptors is None:  # no referrers API: the tag schema, if a client maintained one
            found_by, tag = FoundBy.REFERRERS_TAG, referrers_tag(subject)
            if tag not in self.tags:
                return
            read = self._read(tag, subject)
            if read is None:
                return
            index, _, index_digest = read
            if index.kind is not ManifestKind.INDEX:
                # distribution-spec: a tag that is not a valid index means "no referrers".
                self._problem(
                    tag,
                    subject,
                    f"referrers tag holds a {index.kind.value} manifest, not an image index; ignored",
                )
                return
            descriptors = index.descriptors
            self.indexes.append(ReferrersIndex(self.repository, subject, tag, index_digest, index.children))
        for descriptor in descriptors:
            read = self._read(descriptor.digest, subject)
            if read is None:
                continue
            manifest, media_type, digest = read
            if manifest.subject is not None and manifest.subject != subject:
                self._problem(digest, subject, f"listed as a referrer but its subject is {manifest.subject}")
            self._add(
                AttachedArtifact(
                    self.repository,
                    digest,
                    subject,
                    classify(manifest, descriptor=descriptor),
                    found_by,
                    manifest.media_type or descriptor.media_type or media_type,
                    effective_artifact_type(manifest, descriptor),
                    tag,
                    manifest.children,
                )
            )


# --- what a release ships ------------------------------------------------------------------
AttachedMode = Literal["copy", "require", "none"]


@dataclass(frozen=True)
class ListedAttachments:
    """What was attached to one listed image at the source when the archive was synced."""

    ref: ImageRef  # as listed
    found: ImageAttachments


@dataclass(frozen=True)
class AttachedRecord:
    """The run's record of attachments, one entry per listed image in list order (none when
    the mode is `none`): what package sync writes and verify compares the package with."""

    mode: AttachedMode = "copy"
    images: tuple[ListedAttachments, ...] = ()

    @property
    def counts(self) -> AttachmentCounts:
        """Over distinct (repository, artifact): two tags of one image do not count it twice."""
        seen: dict[tuple[str, Digest], AttachedArtifact] = {}
        for entry in self.images:
            for a in entry.found.artifacts:
                seen.setdefault((a.repository, a.digest), a)
        return AttachmentCounts.of(seen.values())

    @property
    def problems(self) -> tuple[AttachmentProblem, ...]:
        out: dict[str, AttachmentProblem] = {}
        for entry in self.images:
            out.update((str(p), p) for p in entry.found.problems)
        return tuple(out.values())

    def unsigned(self) -> tuple[ImageRef, ...]:
        """Listed images with no signature on the image itself, in list order."""
        return tuple(e.ref for e in self.images if not e.found.signed)

    def require_signed(self) -> None:
        """`--attached require`: MissingSignatureError naming every listed image without one."""
        missing = self.unsigned()
        if missing:
            raise MissingSignatureError(
                [f"{ref} (sha256:{e.found.digest.hex[:12]})" for ref, e in self._of(missing)]
            )

    def _of(self, refs: Iterable[ImageRef]) -> list[tuple[ImageRef, ListedAttachments]]:
        by_ref = {e.ref: e for e in self.images}
        return [(r, by_ref[r]) for r in refs]


def attached_refs(found: ImageAttachments) -> tuple[ImageRef, ...]:
    """The package references of everything attached to one image, in discovery order: every
    attachment tag (cosign tags, referrers tag-schema indexes) as `repo:tag@digest`, then, as
    `repo@digest`, every artifact that nothing tagged reaches (a referrer the source's referrers
    API listed). Pinning the digest makes package sync copy exactly what was discovered, and
    verify check that each tag still points at it.

    A referrer in a tag-schema index is not listed again by digest: the index reaches it, and two
    image copies writing one manifest at once race in Distribution (a reader can see its revision
    link truncated by the other writer: 400 DIGEST_INVALID)."""
    tags = found.tags
    refs = [ImageRef(found.repository, tag, digest) for tag, digest in tags.items()]
    reached = set(tags.values())
    reached.update(d for r in found.referrers_indexes for d in r.referrers)
    reached.update(c for a in found.artifacts if a.digest in reached for c in a.children)
    refs += [ImageRef(found.repository, None, a.digest) for a in found.artifacts if a.digest not in reached]
    return tuple(refs)


def package_list(images: ImageList, record: AttachedRecord) -> ImageList:
    """What the package holds: the listed images, then every attached artifact as an entry of
    its own (line 0: it was discovered, not listed). An artifact shared by two listed images
    (one digest under two tags) appears once; a tag the list already names is left to the list."""
    entries = list(images.entries)
    keys = {e.ref.key for e in entries}
    listed_tags = {(e.ref.repository, e.ref.tag) for e in entries if e.ref.tag is not None}
    for entry in record.images:
        for ref in attached_refs(entry.found):
            if ref.key in keys or (ref.tag is not None and (ref.repository, ref.tag) in listed_tags):
                continue
            keys.add(ref.key)
            entries.append(Entry(ref, 0))
    return ImageList(images.source, tuple(entries), images.duplicates)


def recorded_attachments(contents: Contents, images: ImageList) -> ImageList:
    """`images` plus every image of the package that its contents file records as attached to one
    of them (what `layover verify --images` accepts beyond the list; docs/attached.md): a tag or
    digest whose manifest is in a listed image's `attached`, or a referrers tag-schema index
    (`sha256-<hex>`) whose subject is a listed image, one of its platforms or one of those
    artifacts, all in the image's own repository. Anything else the package holds stays extra."""
    wanted = {ref.key for ref in images.refs}
    subjects: set[tuple[str, str]] = set()
    artifacts: set[tuple[str, str]] = set()
    for img in contents.images:
        if img.ref.key in wanted:
            subjects.add((img.repository, img.digest))
            subjects.update((img.repository, p.digest) for p in img.platforms)
            artifacts.update((img.repository, a.digest) for a in img.attached)
    entries = list(images.entries)
    for img in contents.images:
        key = (img.repository, img.digest)
        if img.ref.key in wanted:
            continue
        if img.tag is None:
            accepted = key in artifacts
        else:
            named = attachment_tag_subject(img.tag)
            about = (img.repository, str(named[0])) if named else None
            accepted = (
                named is not None
                and about in subjects | artifacts
                and (key in artifacts if named[1] else True)  # an index is not itself an artifact
            )
        if accepted:
            wanted.add(img.ref.key)
            entries.append(Entry(img.ref, 0))
    return ImageList(images.source, tuple(entries), images.duplicates)


@dataclass(frozen=True)
class AttachedRow:
    """One listed image's attachments, for the report and the contents file."""

    image: str
    digest: str
    counts: AttachmentCounts
    references: tuple[str, ...]  # attached_refs, as text: the record of what was shipped


def report_rows(record: AttachedRecord) -> tuple[AttachedRow, ...]:
    return tuple(
        AttachedRow(
            str(e.ref), str(e.found.digest), e.found.counts, tuple(str(r) for r in attached_refs(e.found))
        )
        for e in record.images
    )


# --- for the contents file (layover/contents.py) -----------------------------------------------
def contents_attached(record: AttachedRecord) -> dict[str, tuple[tuple[str, str, str | None], ...]]:
    """listed reference -> (reference, digest, artifact type) of each artifact attached to it, in
    discovery order: what contents.Image.attached holds. The reference is the artifact's own
    cosign tag, else its digest (a referrer's tag-schema tag names the index, not the artifact)."""
    out: dict[str, tuple[tuple[str, str, str | None], ...]] = {}
    for e in record.images:
        rows = tuple(
            (
                a.tag if a.found_by is FoundBy.COSIGN_TAG and a.tag else str(a.digest),
                str(a.digest),
                a.artifact_type,
            )
            for a in e.found.artifacts
        )
        if rows:
            out[str(e.ref)] = rows
    return out


def with_attached(contents: Contents, record: AttachedRecord) -> Contents:
    """The contents file with each listed image's attachments named (`attached`, and the total).

    `contents` is built over the package's list (`package_list`), so every attachment is also an
    image of its own there: install, push and deltas carry it like any image."""
    rows = contents_attached(record)
    if not rows:
        return contents
    images = [
        i.model_copy(
            update={
                "attached": tuple(
                    Attached(reference=r, digest=d, artifact_type=t) for r, d, t in rows.get(i.reference, ())
                )
            }
        )
        for i in contents.images
    ]
    return assemble(
        images,
        list_source=contents.list_source,
        list_commit=contents.list_commit,
        sizes={b.digest: b.size for b in contents.blobs},
        delta=contents.delta,
    )
