"""What a package holds, as one schema-versioned document: the contents file.

Every package carries it twice: as the tarball's first member `layover/contents.json` (so an
installer or verifier knows what is inside before it reaches any blob), and under the `contents`
key of the `.json` sidecar. `layover contents`, `layover diff`, `layover install` and `layover
delta` read it; `docs/contents.schema.json` is its JSON Schema, generated from these models.

    schema      "layover.contents/1"
    kind        "full", or "delta" (only the blob data its base lacks is carried)
    list_source, list_commit    which images.list, at which git commit (file lists: the name)
    images      every listed reference -> manifest digest and media type, an index's platforms,
                every manifest it reaches and every config/layer blob its repository links
    blobs       every blob the installed package consists of (manifests included): digest,
                size, and which listed images use it
    totals      counts and bytes; `carried_*` is what the tarball itself holds
    delta       (deltas only) the base package (sha256, release) and every blob assumed present

Deterministic: lists are sorted (platforms keep the index's order), the JSON is dumped with
sorted keys, so equal packages have byte-equal contents files. Pure: reads a storage tree
through StorageLayout and the one reachability walk (storage/walk.py), writes nothing.

A contents file handed to `layover install` is untrusted input: every reference is parsed with
the Distribution grammar, every digest is checked, and the document must be self-consistent
before anything derives a path from it.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from layover.errors import PackageError, ReferenceError_, StorageError
from layover.imagelist import ImageList
from layover.manifest import OCI_INDEX, OCI_MANIFEST, ManifestKind, parse_manifest
from layover.reference import ImageRef
from layover.storage.images import resolve
from layover.storage.layout import LINK_SIZE, StorageLayout, StrPaths
from layover.storage.walk import Refs, walk
from layover.tarball import (  # noqa: F401 - the package format's paths and limit, re-exported
    CONTENTS_MEMBER,
    DELTA_README,
    DELTA_ROOT,
    MAX_CONTENTS_BYTES,
)
from layover.units import human_bytes

SCHEMA: Final = "layover.contents/1"

_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"

DigestStr = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Size = Annotated[int, Field(ge=0, le=1 << 50)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Platform(_Model):
    """One entry of an index or manifest list, in the index's order."""

    digest: DigestStr
    media_type: str | None = None
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p) or "?"


class Attached(_Model):
    """An artifact attached to a listed image: a signature, an SBOM, an attestation."""

    reference: str = Field(description="The tag or digest it is stored under, in the image's repository.")
    digest: DigestStr
    artifact_type: str | None = None


class Image(_Model):
    reference: str = Field(description="As listed: repo:tag, repo@sha256:..., or repo:tag@sha256:...")
    repository: str
    tag: str | None = None
    digest: DigestStr = Field(description="The manifest the reference resolves to.")
    media_type: str | None = Field(
        description="The manifest's mediaType (inferred from its shape when the document has none)."
    )
    platforms: tuple[Platform, ...] = Field(default=(), description="An index's children, in index order.")
    manifests: tuple[DigestStr, ...] = Field(description="Every manifest the image reaches, sorted.")
    blobs: tuple[DigestStr, ...] = Field(description="Config and layer blobs its repository links, sorted.")
    attached: tuple[Attached, ...] = ()

    @property
    def ref(self) -> ImageRef:
        return ImageRef.parse(self.reference)


class Blob(_Model):
    digest: DigestStr
    size: Size
    images: tuple[str, ...] = Field(description="References of the listed images that use it, sorted.")


class AssumedBlob(_Model):
    digest: DigestStr
    size: Size


class Base(_Model):
    """The package a delta was made against: what must be installed before the delta."""

    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    release: str = Field(description="The base's release, for people: its list and commit.")
    kind: Literal["full", "delta"] = "full"


class Delta(_Model):
    base: Base
    assumed: tuple[AssumedBlob, ...] = Field(
        description="Blobs the delta does not carry: they must already be in the storage dir."
    )


class Totals(_Model):
    images: int
    manifests: int
    blobs: int  # every blob of the installed package, manifests included
    bytes: int
    carried_blobs: int  # blob data inside this tarball (== blobs for a full package)
    carried_bytes: int
    attached: int = 0


class Contents(_Model):
    schema_: Literal["layover.contents/1"] = Field(default=SCHEMA, alias="schema")
    kind: Literal["full", "delta"] = "full"
    list_source: str
    list_commit: str | None = None
    images: tuple[Image, ...]
    blobs: tuple[Blob, ...]
    totals: Totals
    delta: Delta | None = None

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, title="Layover package contents"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Contents:
        problem = _first_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    # --- views -------------------------------------------------------------------------
    @property
    def release(self) -> str:
        """How people name this package's release: the list and, from git, its commit."""
        return self.list_source + (f" @ {self.list_commit[:12]}" if self.list_commit else "")

    @property
    def blob_sizes(self) -> dict[str, int]:
        """hex -> size of every blob of the installed package."""
        return {b.digest[7:]: b.size for b in self.blobs}

    @property
    def assumed(self) -> dict[str, int]:
        """hex -> size of the blobs a delta does not carry ({} for a full package)."""
        return {a.digest[7:]: a.size for a in self.delta.assumed} if self.delta else {}

    @property
    def storage_root(self) -> str:
        """Where the storage tree (`docker/registry/v2`) sits inside the tarball."""
        return DELTA_ROOT if self.kind == "delta" else ""

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_obj(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def to_obj(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _first_problem(c: Contents) -> str:
    """Why a contents document cannot be trusted, or "" if it is self-consistent."""
    refs = [i.reference for i in c.images]
    if refs != sorted(refs) or len(set(refs)) != len(refs):
        return "images are not sorted by reference, or one is listed twice"
    tags = [(i.repository, i.tag) for i in c.images if i.tag is not None]
    if len(set(tags)) != len(tags):
        return "one tag is listed twice"
    for img in c.images:
        try:
            ref = ImageRef.parse(img.reference)
        except ReferenceError_ as e:
            return f"image {img.reference!r}: {e.reason}"
        if ref.registry is not None or (ref.repository, ref.tag) != (img.repository, img.tag):
            return f"image {img.reference!r}: repository or tag does not match the reference"
        if ref.digest is not None and str(ref.digest) != img.digest:
            return f"image {img.reference!r}: the reference pins {ref.digest}, the image is {img.digest}"
        if list(img.manifests) != sorted(set(img.manifests)) or list(img.blobs) != sorted(set(img.blobs)):
            return f"image {img.reference!r}: manifests or blobs are not sorted and unique"
        if img.digest not in img.manifests or not {p.digest for p in img.platforms} <= set(img.manifests):
            return f"image {img.reference!r}: its digest or a platform is missing from its manifests"
    digests = [b.digest for b in c.blobs]
    if digests != sorted(set(digests)):
        return "blobs are not sorted by digest, or one is listed twice"
    users: dict[str, set[str]] = {d: set() for d in digests}
    for img in c.images:
        for d in (*img.manifests, *img.blobs):
            if d not in users:
                return f"image {img.reference!r} uses {d}, which is not in blobs"
            users[d].add(img.reference)
    for b in c.blobs:
        if list(b.images) != sorted(users[b.digest]):
            return f"blob {b.digest}: its images do not match the images that use it"
    if (c.kind == "delta") != (c.delta is not None):
        return "a delta must say its base and assumed blobs, and only a delta may"
    sizes = {b.digest: b.size for b in c.blobs}
    assumed: dict[str, int] = {}
    if c.delta is not None:
        assumed = {a.digest: a.size for a in c.delta.assumed}
        if [a.digest for a in c.delta.assumed] != sorted(assumed) or len(assumed) != len(c.delta.assumed):
            return "assumed blobs are not sorted by digest, or one is listed twice"
        if any(sizes.get(d) != s for d, s in assumed.items()):
            return "an assumed blob is not among the blobs, or has another size"
    manifests = {d for i in c.images for d in i.manifests}
    want = Totals(
        images=len(c.images),
        manifests=len(manifests),
        blobs=len(c.blobs),
        bytes=sum(sizes.values()),
        carried_blobs=len(c.blobs) - len(assumed),
        carried_bytes=sum(sizes.values()) - sum(assumed.values()),
        attached=sum(len(i.attached) for i in c.images),
    )
    if c.totals != want:
        return f"totals do not match the lists (expected {want.model_dump()})"
    return ""


# --- reading and writing ----------------------------------------------------------------------
def parse(data: bytes, where: str) -> Contents:
    """A contents document from bytes; PackageError naming `where` if it cannot be trusted."""
    if len(data) > MAX_CONTENTS_BYTES:
        raise PackageError(
            f"{where}: the contents file is {len(data)} bytes, more than any package needs; "
            "this is not a Layover package"
        )
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise PackageError(f"{where}: the contents file is not JSON ({e}); the package is damaged") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise PackageError(
            f"{where}: contents schema {found!r} is not {SCHEMA!r}; use the Layover "
            "version that made the package, or a newer one"
        )
    try:
        return Contents.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        why = f"{loc}: {err['msg']}" if loc else str(err["msg"]).removeprefix("Value error, ")
        raise PackageError(
            f"{where}: the contents file is invalid ({why}); the package is damaged or not made by Layover"
        ) from None


def schema_text() -> str:
    """The JSON Schema of the contents file, as published in docs/contents.schema.json."""
    schema = Contents.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


# --- building it from a storage tree ----------------------------------------------------------
def build(layout: StorageLayout, images: ImageList, *, list_source: str, list_commit: str | None) -> Contents:
    """The contents of the package `layout` holds for `images` (a verified package tree).

    Raises StorageError naming the file if the tree does not hold a listed image whole."""
    paths = layout.strings()
    docs: dict[str, bytes] = {}

    def load(repo: str) -> Callable[[str, str], Refs]:
        def loader(hex_: str, named_by: str) -> Refs:
            data_path = paths.blob_data(hex_)
            if not os.path.isfile(paths.revision_link(repo, hex_)):
                raise StorageError(paths.revision_link(repo, hex_), f"{named_by}: manifest revision missing")
            if hex_ not in docs:
                try:
                    with open(data_path, "rb") as f:
                        docs[hex_] = f.read()
                except OSError as e:
                    raise StorageError(
                        data_path, f"{named_by}: cannot read manifest ({e.strerror})"
                    ) from None
            return Refs.of(parse_manifest(docs[hex_], data_path))

        return loader

    built: list[Image] = []
    for ref in images.refs:
        digest = resolve(layout, ref)
        if digest is None:
            raise StorageError(paths.repo(ref.repository), f"{ref}: not in the package")
        reach = walk([(digest.hex, str(ref))], load(ref.repository))
        linked = set(reach.blobs) | {
            h
            for h in reach.foreign
            if os.path.isfile(paths.blob_data(h)) and os.path.isfile(paths.layer_link(ref.repository, h))
        }
        top = parse_manifest(docs[digest.hex], paths.blob_data(digest.hex))
        built.append(
            Image(
                reference=str(ref),
                repository=ref.repository,
                tag=ref.tag,
                digest=str(digest),
                media_type=top.media_type or _inferred_media_type(top.kind),
                platforms=_platforms(docs[digest.hex]) if top.kind is ManifestKind.INDEX else (),
                manifests=tuple(sorted(f"sha256:{h}" for h in reach.manifests)),
                blobs=tuple(sorted(f"sha256:{h}" for h in linked)),
            )
        )
    built.sort(key=lambda i: i.reference)
    return assemble(built, list_source=list_source, list_commit=list_commit, sizes=_sizes(paths, built))


def assemble(
    images: Iterable[Image],
    *,
    list_source: str,
    list_commit: str | None,
    sizes: dict[str, int],
    delta: Delta | None = None,
) -> Contents:
    """A consistent document from its images and blob sizes (sha256:<hex> -> bytes)."""
    images = sorted(images, key=lambda i: i.reference)
    users: dict[str, list[str]] = {}
    for img in images:
        for d in sorted({*img.manifests, *img.blobs}):
            users.setdefault(d, []).append(img.reference)
    blobs = tuple(Blob(digest=d, size=sizes[d], images=tuple(sorted(users[d]))) for d in sorted(users))
    total = sum(b.size for b in blobs)
    assumed = delta.assumed if delta else ()
    return Contents(
        kind="delta" if delta else "full",
        list_source=list_source,
        list_commit=list_commit,
        images=tuple(images),
        blobs=blobs,
        delta=delta,
        totals=Totals(
            images=len(images),
            manifests=len({d for i in images for d in i.manifests}),
            blobs=len(blobs),
            bytes=total,
            carried_blobs=len(blobs) - len(assumed),
            carried_bytes=total - sum(a.size for a in assumed),
            attached=sum(len(i.attached) for i in images),
        ),
    )


def _sizes(paths: StrPaths, images: list[Image]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for d in sorted({d for i in images for d in (*i.manifests, *i.blobs)}):
        path = paths.blob_data(d[7:])
        try:
            sizes[d] = os.stat(path).st_size
        except OSError as e:
            raise StorageError(path, f"cannot read blob ({e.strerror})") from None
    return sizes


def _inferred_media_type(kind: ManifestKind) -> str:
    # mediaType is optional in OCI documents (Docker's always carry it), so the shape decides
    return {ManifestKind.INDEX: OCI_INDEX, ManifestKind.IMAGE: OCI_MANIFEST}.get(kind, _SCHEMA1)


def _platforms(index: bytes) -> tuple[Platform, ...]:
    out = []
    for m in json.loads(index).get("manifests", []):
        p = m.get("platform") if isinstance(m.get("platform"), dict) else {}
        out.append(
            Platform(
                digest=m["digest"],
                media_type=_str(m.get("mediaType")),
                os=_str(p.get("os")),
                architecture=_str(p.get("architecture")),
                variant=_str(p.get("variant")),
            )
        )
    return tuple(out)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# --- the storage tree a contents document describes ------------------------------------------
class FileKind(enum.Enum):
    # Declaration order is install order (docs/customer.md): a registry serving the storage dir
    # during an install then never sees a tag whose manifest, links or data are missing.
    BLOB = "blob"
    LAYER_LINK = "layer-link"
    REVISION = "revision"
    TAG_INDEX = "tag-index"
    TAG = "tag"


@dataclass(frozen=True)
class ExpectedFile:
    kind: FileKind
    digest: str  # hex: the blob's name, or what the link must say
    size: int
    repository: str | None = None


def expected_tree(contents: Contents, root: str = ".") -> tuple[dict[str, ExpectedFile], set[str]]:
    """Every file (path -> what it must be) and directory of the storage tree the contents
    describe, with paths as StorageLayout builds them below `root` (the tarball's storage root,
    or a storage dir). Assumed blobs of a delta are included: the caller knows they are not
    carried."""
    paths = StorageLayout(Path(root)).strings()
    files: dict[str, ExpectedFile] = {}
    internal: set[str] = set()
    for b in contents.blobs:
        files[paths.blob_data(b.digest[7:])] = ExpectedFile(FileKind.BLOB, b.digest[7:], b.size)
    for img in contents.images:
        repo = img.repository
        for d in img.blobs:
            files[paths.layer_link(repo, d[7:])] = ExpectedFile(FileKind.LAYER_LINK, d[7:], LINK_SIZE, repo)
        for d in img.manifests:
            files[paths.revision_link(repo, d[7:])] = ExpectedFile(FileKind.REVISION, d[7:], LINK_SIZE, repo)
        if img.tag is not None:
            hex_ = img.digest[7:]
            files[paths.tag_index_link(repo, img.tag, hex_)] = ExpectedFile(
                FileKind.TAG_INDEX, hex_, LINK_SIZE, repo
            )
            files[paths.tag_current_link(repo, img.tag)] = ExpectedFile(FileKind.TAG, hex_, LINK_SIZE, repo)
        # a repository keeps these even when empty (the catalog lists a repository by `_layers`)
        internal |= {paths.layers(repo), paths.revisions(repo), paths.tags(repo)}
    dirs: set[str] = set(internal)
    for path in [*files, *internal]:
        parent = os.path.dirname(path)
        while parent and parent not in dirs and parent != root:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return files, dirs


def portable_list_source(source: str, commit: str | None) -> str:
    """How the contents file names the list: a file by its name only (the contents file is
    inside the tarball, and the build host's directories must not change the package's bytes);
    a list read from git by its repository, path and ref, as the report does."""
    return source if commit is not None else Path(source).name


_SHORT_TYPES = {
    "application/vnd.docker.distribution.manifest.v2+json": "docker image",
    "application/vnd.docker.distribution.manifest.list.v2+json": "docker list",
    "application/vnd.oci.image.manifest.v1+json": "oci image",
    "application/vnd.oci.image.index.v1+json": "oci index",
    _SCHEMA1: "docker schema 1",
}


def describe(contents: Contents, name: str = "") -> str:
    """The contents for people: what kind of package, from which list, every image."""
    c, t = contents, contents.totals
    lines = [f"package: {name} ({c.kind})" if name else f"kind: {c.kind}", f"images.list: {c.release}"]
    if c.delta is not None:
        lines.append(f"delta from: {c.delta.base.release} (package sha256 {c.delta.base.sha256})")
        lines.append(
            f"carries {t.carried_blobs} blobs ({human_bytes(t.carried_bytes)}); assumes "
            f"{len(c.delta.assumed)} blobs ({human_bytes(t.bytes - t.carried_bytes)}) already installed"
        )
    lines.append(f"images: {t.images}, manifests: {t.manifests}, blobs: {t.blobs} ({human_bytes(t.bytes)})")
    rows = [("image", "digest", "type", "platforms")]
    for img in c.images:
        mt = img.media_type or "?"
        rows.append(
            (
                img.reference,
                img.digest[:19],
                _SHORT_TYPES.get(mt, mt),
                ", ".join(str(p) for p in img.platforms),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
