"""The one generator of container images as bytes: layers, configs, manifests, indexes.

    layer_from_files / LayerWriter   files -> gzip'd tar (in memory, or streamed to a file)
    image_config                     platform + diff_ids + run settings -> config JSON
    image_manifest / index_manifest  descriptors -> Docker v2 schema2 / OCI documents
    PlatformImage, SampleImage       one platform's manifest + blobs; what a tag points at
    seeded_image                     a small image whose every blob derives from a seed (tests)

Reproducible by construction: tar members carry fixed metadata chosen by the caller
(FIXED_MTIME, root owner), the gzip header carries mtime 0 and no file name, and JSON is dumped
from dicts built in a fixed order, so the same inputs give the same digests on every run (with
one zlib build). The sample releases (releases.py), the tests and the benchmark fixture
(bench/fixture.py, which streams Debian package contents through LayerWriter) all build their
images here. Pure: no network, Docker or subprocess.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from layover.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)
from layover.reference import Digest, ImageRef

# Fixed timestamps: a real build stamps "now" and breaks byte-for-byte reproducibility.
FIXED_MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z, for tar members
CREATED = "2023-11-14T22:13:20Z"  # for configs
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
DOCKER_INDENT = 3  # `docker push` writes 3-space indented manifests; OCI tools often compact ones


def sha256(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


# --- values --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str = "linux"
    variant: str | None = None

    def json(self) -> dict[str, str]:
        """As in an index descriptor and at the top of a config: architecture, os[, variant]."""
        doc = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            doc["variant"] = self.variant
        return doc


@dataclass(frozen=True)
class ImageFormat:
    """The media types of one manifest family."""

    manifest: str
    config: str
    layer: str
    index: str


DOCKER = ImageFormat(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST_LIST)
OCI = ImageFormat(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX)


@dataclass(frozen=True)
class SampleDescriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None

    @classmethod
    def of(cls, media_type: str, data: bytes, platform: Platform | None = None) -> SampleDescriptor:
        return cls(media_type, sha256(data), len(data), platform)

    def json(self) -> dict:
        doc: dict = {"mediaType": self.media_type, "size": self.size, "digest": str(self.digest)}
        if self.platform is not None:
            doc["platform"] = self.platform.json()
        return doc


@dataclass(frozen=True)
class SampleLayer:
    """A gzip'd tar layer in memory. `diff_id` is the digest of the uncompressed tar (config rootfs)."""

    name: str
    data: bytes
    diff_id: Digest

    @property
    def digest(self) -> Digest:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class SampleManifest:
    """One manifest document exactly as it is pushed (its digest is over these bytes)."""

    data: bytes
    media_type: str
    platform: Platform | None = None  # set on the per-platform children of an index

    @property
    def digest(self) -> Digest:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def json(self) -> dict:
        return json.loads(self.data)

    def descriptor(self) -> SampleDescriptor:
        return SampleDescriptor(self.media_type, self.digest, self.size, self.platform)


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image manifest and the config and layers it references."""

    manifest: SampleManifest
    blobs: Mapping[Digest, bytes]


@dataclass(frozen=True)
class SampleImage:
    """One tagged image. For an index/list, `children` are the per-platform manifests (untagged:
    push them by digest before the index). `blobs` holds every config and layer the image and
    its children reference, digest -> bytes; manifests are not blobs here."""

    repository: str
    tag: str
    manifest: bytes
    media_type: str
    children: tuple[SampleManifest, ...]
    blobs: Mapping[Digest, bytes]

    @classmethod
    def of(
        cls,
        repository: str,
        tag: str,
        fmt: ImageFormat,
        parts: Sequence[PlatformImage],
        *,
        indent: int | None,
    ) -> SampleImage:
        """One part: its image manifest is tagged. Several: an index of them (in `fmt`, each
        part's manifest carrying its platform) is tagged and the parts become its children."""
        blobs: dict[Digest, bytes] = {}
        for part in parts:
            blobs |= part.blobs
        children: tuple[SampleManifest, ...] = ()
        if len(parts) == 1:
            top = parts[0].manifest
        else:
            children = tuple(part.manifest for part in parts)
            top = index_manifest(fmt, children, indent=indent)
        return cls(repository, tag, top.data, top.media_type, children, MappingProxyType(blobs))

    @property
    def digest(self) -> Digest:
        return sha256(self.manifest)

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.repository, self.tag)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def manifests(self) -> tuple[SampleManifest, ...]:
        """Children first, then the tagged manifest: the order a registry accepts them in."""
        return (*self.children, SampleManifest(self.manifest, self.media_type))

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}@{self.digest}"


# --- layers --------------------------------------------------------------------------------
class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


class _Hashing:
    """A write-only file object that hashes and counts what passes through to `raw`."""

    def __init__(self, raw: _Sink) -> None:
        self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class LayerWriter:
    """Streams one layer, a gzip'd tar, into `out` and hashes both the tar and the gzip.

        with LayerWriter(out) as tar:      # a tarfile.TarFile in stream mode ("w|")
            tar.addfile(info, fileobj)     # members as given: the caller fixes their metadata
        writer.digest, writer.size, writer.diff_id

    `tar_format` is part of the bytes: PAX for the samples, GNU for the bench's deb contents.
    """

    def __init__(self, out: _Sink, *, tar_format: int = tarfile.PAX_FORMAT) -> None:
        self._outer = _Hashing(out)
        self._tar_format = tar_format
        self._gzip: gzip.GzipFile | None = None
        self._inner: _Hashing | None = None
        self._tar: tarfile.TarFile | None = None
        self.digest: Digest | None = None
        self.size = 0
        self.diff_id: Digest | None = None

    def __enter__(self) -> tarfile.TarFile:
        # filename="" and mtime=0 keep the gzip header free of anything run-specific.
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._outer, mtime=0, compresslevel=6)
        self._inner = _Hashing(self._gzip)
        # Stream mode only ever writes; typeshed's file object type also wants read/seek/tell.
        self._tar = tarfile.open(fileobj=self._inner, mode="w|", format=self._tar_format)  # type: ignore[call-overload]
        return self._tar

    def __exit__(self, *exc: object) -> None:
        assert self._tar is not None and self._gzip is not None and self._inner is not None
        self._tar.close()
        self._gzip.close()
        self.diff_id = Digest(self._inner.hash.hexdigest())
        self.digest = Digest(self._outer.hash.hexdigest())
        self.size = self._outer.size


def layer_from_files(name: str, files: Mapping[str, bytes]) -> SampleLayer:
    """A layer of `files` (path -> content) and their parent dirs, sorted, root-owned,
    FIXED_MTIME; mode 0755 for dirs, `*.so` and `*/run`, else 0644. `name` labels it in history."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    out = io.BytesIO()
    writer = LayerWriter(out)
    with writer as tar:
        for member in sorted(dirs | set(files)):
            info = tarfile.TarInfo(member)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if member in files:
                info.mode = 0o755 if member.endswith((".so", "/run")) else 0o644
                info.size = len(files[member])
                tar.addfile(info, io.BytesIO(files[member]))
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
    assert writer.diff_id is not None
    return SampleLayer(name, out.getvalue(), writer.diff_id)


# --- documents -----------------------------------------------------------------------------
def _dump(doc: object, indent: int | None) -> bytes:
    if indent is None:
        return json.dumps(doc, separators=(",", ":")).encode()
    return json.dumps(doc, indent=indent).encode()


def image_config(
    platform: Platform,
    diff_ids: Sequence[Digest],
    *,
    cmd: Sequence[str],
    labels: Mapping[str, str],
    history: Sequence[str],
    created: str = CREATED,
    env: Sequence[str] = DEFAULT_ENV,
    sort_keys: bool = False,
) -> bytes:
    """A compact image config: platform, created, Env/Cmd/Labels, rootfs and one history entry
    per layer (`history` holds their created_by). `sort_keys` orders every key (the bench's
    configs are written that way)."""
    config: dict = platform.json()
    config.update(
        {
            "created": created,
            "config": {"Env": list(env), "Cmd": list(cmd), "Labels": dict(labels)},
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
            "history": [{"created": created, "created_by": by} for by in history],
        }
    )
    return json.dumps(config, sort_keys=sort_keys, separators=(",", ":")).encode()


def image_manifest(
    fmt: ImageFormat,
    config: SampleDescriptor,
    layers: Sequence[SampleDescriptor],
    *,
    indent: int | None,
    platform: Platform | None = None,
) -> SampleManifest:
    """A schema-2 image manifest in `fmt`. `indent` None is compact, DOCKER_INDENT as docker
    writes; `platform` is recorded for an index's descriptor, not written into the document."""
    doc = {
        "schemaVersion": 2,
        "mediaType": fmt.manifest,
        "config": config.json(),
        "layers": [layer.json() for layer in layers],
    }
    return SampleManifest(_dump(doc, indent), fmt.manifest, platform)


def index_manifest(
    fmt: ImageFormat, children: Sequence[SampleManifest], *, indent: int | None
) -> SampleManifest:
    """An OCI index or Docker manifest list over `children`, each with its platform."""
    doc = {
        "schemaVersion": 2,
        "mediaType": fmt.index,
        "manifests": [child.descriptor().json() for child in children],
    }
    return SampleManifest(_dump(doc, indent), fmt.index)


def platform_image(
    fmt: ImageFormat,
    config: bytes,
    layers: Sequence[SampleLayer],
    *,
    indent: int | None,
    platform: Platform | None = None,
) -> PlatformImage:
    """An image manifest over in-memory `config` and `layers`, with its blobs (config first)."""
    manifest = image_manifest(
        fmt,
        SampleDescriptor.of(fmt.config, config),
        [SampleDescriptor(fmt.layer, x.digest, x.size) for x in layers],
        indent=indent,
        platform=platform,
    )
    blobs = {sha256(config): config} | {layer.digest: layer.data for layer in layers}
    return PlatformImage(manifest, MappingProxyType(blobs))


# --- small seeded images for tests ---------------------------------------------------------
_SEEDED_PLATFORMS = (
    Platform("amd64"),
    Platform("arm64", variant="v8"),
    Platform("ppc64le"),
    Platform("s390x"),
    Platform("riscv64"),
)


def seeded_image(
    repository: str, tag: str, *, seed: str, layers: int = 2, platforms: int = 1, fmt: ImageFormat = OCI
) -> SampleImage:
    """A tiny image in `fmt` (an index of `platforms` images when more than one) whose every
    layer holds one file naming `seed`: images of different seeds share no blob."""
    if not 1 <= platforms <= len(_SEEDED_PLATFORMS):
        raise ValueError(f"platforms={platforms}: choose 1 to {len(_SEEDED_PLATFORMS)}")
    parts = []
    for p, platform in enumerate(_SEEDED_PLATFORMS[:platforms]):
        built = [
            layer_from_files(f"{seed}/{p}/{i}", {f"layer{i}.txt": f"{seed}/{p}/{i}\n".encode()})
            for i in range(layers)
        ]
        config = image_config(
            platform,
            [x.diff_id for x in built],
            cmd=["/bin/true"],
            labels={"org.opencontainers.image.title": repository},
            history=[f"seeded: {x.name}" for x in built],
        )
        parts.append(platform_image(fmt, config, built, indent=None, platform=platform))
    return SampleImage.of(repository, tag, fmt, parts, indent=None)
