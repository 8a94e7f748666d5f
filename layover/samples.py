"""Deterministic sample images: a small but realistic release history, built as bytes.

Same bytes on every run (on one zlib build): every random choice comes from a `random.Random`
seeded with a string, tar members are sorted with fixed mtime/uid/gid/mode, gzip headers carry
mtime 0 and no file name, and JSON is dumped from dicts built in a fixed order.

    base layers (shared)     debian-ish, python-ish, java-ish   (a few hundred KiB each)
    every image              one base layer + 1-2 app layers + a config JSON blob

    release 1 (12 images)    base/*, platform/*, apps/team-a/*, apps/team-b/*
                             apps/team-a/lib and apps/team-a/lib/tools both exist (nested names)
                             platform/gateway  Docker manifest list, amd64 + arm64, untagged children
                             platform/metrics  OCI image index,     amd64 + arm64, untagged children
                             apps/team-a/web   OCI image manifest; the rest Docker v2 schema2
    release 2 (12 images)    web, auth, gateway get a new top layer and a new tag;
                             team-b/batch and team-b/legacy are dropped;
                             platform/search and apps/team-c/report are added;
                             everything else is byte-identical to release 1
    release 3 (11 images)    metrics (the OCI index) and team-a/worker get a new top layer
                             and tag; team-c/report is dropped; the rest is release 2's

The module is pure (no Prefect, Docker, subprocess or network). `python -m layover.samples push`
is the one entry point that talks to a registry, through layover.adapters.registry_api.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path  # noqa: TC003 - typer evaluates the CLI's annotations at run time
from types import MappingProxyType

from layover.reference import Digest, ImageRef

# --- media types ---------------------------------------------------------------------------
from layover.manifest import (  # noqa: E402 - grouped with their users below
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)

RELEASES = (1, 2, 3)

# Fixed timestamps: a real build would stamp "now" and break byte-for-byte reproducibility.
_MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z
_CREATED = "2023-11-14T22:13:20Z"
_PLATFORMS: dict[str, dict[str, str]] = {
    "amd64": {"architecture": "amd64", "os": "linux"},
    "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
}


def sha256(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


# --- values --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A gzip'd tar layer. `diff_id` is the digest of the uncompressed tar (config rootfs)."""

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
class Manifest:
    """One manifest document exactly as it is pushed (its digest is over these bytes)."""

    data: bytes
    media_type: str
    platform: str | None = None  # "amd64"/"arm64" for a child of an index, else None

    @property
    def digest(self) -> Digest:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def json(self) -> dict:
        return json.loads(self.data)


@dataclass(frozen=True)
class SampleImage:
    """One tagged image. For an index/list, `children` are the per-platform manifests (untagged:
    push them by digest before the index). `blobs` holds every config and layer the image and
    its children reference, digest -> bytes; manifests are not blobs here."""

    repository: str
    tag: str
    manifest: bytes
    media_type: str
    children: tuple[Manifest, ...]
    blobs: Mapping[Digest, bytes]

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
    def manifests(self) -> tuple[Manifest, ...]:
        """Children first, then the tagged manifest: the order a registry accepts them in."""
        return (*self.children, Manifest(self.manifest, self.media_type))

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}@{self.digest}"


@dataclass(frozen=True)
class Release:
    number: int
    scale: float
    images: tuple[SampleImage, ...]

    def image(self, repository: str) -> SampleImage:
        for img in self.images:
            if img.repository == repository:
                return img
        raise KeyError(f"release {self.number} has no image in repository {repository!r}")

    @property
    def blobs(self) -> Mapping[Digest, bytes]:
        """Every config and layer of the release; shared base layers appear once."""
        merged: dict[Digest, bytes] = {}
        for img in self.images:
            merged.update(img.blobs)
        return MappingProxyType(merged)

    def list_text(self, *, pin_digests: bool = False) -> str:
        """An images.list for this release, grouped by namespace, with comments.

        `pin_digests` writes `repo:tag@sha256:...` lines so a copy fails if a tag moved.
        """
        out = [
            f"# Layover sample release {self.number} (scale {self.scale:g}).",
            "# Generated by layover.samples: deterministic, the same digests on every run.",
            "",
        ]
        group = None
        for img in self.images:
            ns = _namespace(img.repository)
            if ns != group:
                if group is not None:
                    out.append("")
                out.append(f"# --- {ns} ---")
                group = ns
            line = f"{img.repository}:{img.tag}"
            if pin_digests:
                line += f"@{img.digest}"
            if img.is_index:
                kind = "Docker manifest list" if img.media_type == DOCKER_MANIFEST_LIST else "OCI index"
                line += f"  # {kind}: {', '.join(c.platform or '?' for c in img.children)}"
            out.append(line)
        return "\n".join(out) + "\n"


def _namespace(repository: str) -> str:
    parts = repository.split("/")
    return "/".join(parts[:2]) if parts[0] == "apps" else parts[0]


# --- content -------------------------------------------------------------------------------
_WORDS = (
    "alpha beta gamma delta config server client request response handler buffer cache "
    "index layer image manifest digest registry storage volume socket thread worker queue "
    "event logger metric value result error retry timeout module package install build "
    "release version update debug trace enable disable default option path file user group"
).split()


def _text(rng: random.Random, size: int) -> bytes:
    """Source/config-like lines: compress about 4-6x, as real text files in images do."""
    lines: list[str] = []
    total = 0
    while total < size:
        kind = rng.randrange(4)
        w = rng.choices(_WORDS, k=4)
        if kind == 0:
            line = f"def {w[0]}_{w[1]}({w[2]}, {w[3]}={rng.randrange(1000)}):"
        elif kind == 1:
            line = f"    return {w[0]}.{w[1]}({w[2]}) + {rng.randrange(100000)}"
        elif kind == 2:
            line = f"{w[0]}.{w[1]} = {w[2]}-{w[3]}-{rng.randrange(65536):04x}"
        else:
            line = f"# {' '.join(rng.choices(_WORDS, k=rng.randrange(3, 12)))}"
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:size]


def _tar_gz(files: Mapping[str, bytes]) -> tuple[bytes, Digest]:
    """A gzip'd tar of `files` with their parent dirs; returns (tar.gz bytes, diff_id)."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | set(files)):
            info = tarfile.TarInfo(name)
            info.mtime = _MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if name in files:
                info.mode = 0o755 if name.endswith((".so", "/run")) else 0o644
                info.size = len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
    tar_bytes = raw.getvalue()
    out = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything run-specific.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(tar_bytes)
    return out.getvalue(), sha256(tar_bytes)


@functools.lru_cache(maxsize=256)
def _layer(name: str, root: str, kib: int, random_fraction: float, scale: float) -> Layer:
    """A layer of generated files under `root`; mostly text, `random_fraction` incompressible."""
    rng = random.Random(f"layover-samples/layer/{name}")
    budget = max(256, int(kib * 1024 * scale))
    random_budget = int(budget * random_fraction)
    files: dict[str, bytes] = {}
    n = 0
    remaining = budget - random_budget
    while remaining > 0:  # text files of 2-24 KiB (scaled), at least one
        size = min(remaining, max(64, int(rng.randrange(2048, 24576) * scale)))
        files[f"{root}/share/{rng.choice(_WORDS)}-{n:03d}.{rng.choice(('py', 'conf', 'txt'))}"] = _text(rng, size)
        remaining -= size
        n += 1
    while random_budget > 0:  # "binaries": incompressible
        size = min(random_budget, max(64, int(rng.randrange(8192, 65536) * scale)))
        files[f"{root}/lib/lib{rng.choice(_WORDS)}-{n:03d}.so"] = rng.randbytes(size)
        random_budget -= size
        n += 1
    files[f"{root}/VERSION"] = f"{name}\n".encode()
    data, diff_id = _tar_gz(files)
    return Layer(name, data, diff_id)


# The three shared bases: (name, root dir, raw KiB, share of incompressible bytes).
_BASES: dict[str, tuple[str, int, float]] = {
    "debian": ("usr", 640, 0.35),
    "python": ("usr/local/lib/python3.11", 512, 0.40),
    "java": ("opt/java", 768, 0.35),
}


def _base_layer(base: str, scale: float) -> Layer:
    root, kib, frac = _BASES[base]
    return _layer(f"base/{base}-ish", root, kib, frac, scale)


def _app_layer(repository: str, label: str, kib: int, scale: float) -> Layer:
    # `label` makes a new top layer a different layer; the repo keeps names apart across images.
    leaf = repository.rsplit("/", 1)[-1]
    return _layer(f"{repository}/{label}", f"opt/{leaf}", kib, 0.30, scale)


# --- manifests -----------------------------------------------------------------------------
def _dump(obj: object, oci: bool) -> bytes:
    # Docker writes 3-space indented manifests, OCI tools often compact ones: keep both shapes.
    if oci:
        return json.dumps(obj, separators=(",", ":")).encode()
    return json.dumps(obj, indent=3).encode()


def _descriptor(media_type: str, data: bytes, platform: str | None = None) -> dict:
    d: dict = {"mediaType": media_type, "size": len(data), "digest": str(sha256(data))}
    if platform is not None:
        d["platform"] = dict(_PLATFORMS[platform])
    return d


@dataclass(frozen=True)
class _Spec:
    repository: str
    tag: str
    kind: str  # "docker" | "oci" | "docker-list" | "oci-index"
    base: str
    apps: tuple[tuple[str, int], ...]  # (label, raw KiB) per app layer, bottom to top


def _single(spec: _Spec, arch: str, oci: bool, scale: float) -> tuple[Manifest, dict[Digest, bytes]]:
    suffix = "" if arch == "amd64" else f"-{arch}"
    layers = [_base_layer(spec.base, scale)] + [
        _app_layer(spec.repository, label + suffix, kib, scale) for label, kib in spec.apps
    ]
    leaf = spec.repository.rsplit("/", 1)[-1]
    plat = _PLATFORMS[arch]
    config: dict = {"architecture": plat["architecture"], "os": plat["os"]}
    if "variant" in plat:
        config["variant"] = plat["variant"]
    config.update({
        "created": _CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": [f"/opt/{leaf}/run"],
            "Labels": {
                "org.opencontainers.image.title": spec.repository,
                "org.opencontainers.image.version": spec.tag,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in layers]},
        "history": [{"created": _CREATED, "created_by": f"layover-samples: {layer.name}"} for layer in layers],
    })
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest_type, config_type, layer_type = (
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER) if oci else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    )
    doc = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": _descriptor(config_type, config_bytes),
        "layers": [_descriptor(layer_type, layer.data) for layer in layers],
    }
    blobs = {sha256(config_bytes): config_bytes} | {layer.digest: layer.data for layer in layers}
    return Manifest(_dump(doc, oci), manifest_type), blobs


def _build(spec: _Spec, scale: float) -> SampleImage:
    if spec.kind in ("docker", "oci"):
        m, blobs = _single(spec, "amd64", spec.kind == "oci", scale)
        return SampleImage(spec.repository, spec.tag, m.data, m.media_type, (), MappingProxyType(blobs))
    oci = spec.kind == "oci-index"
    children: list[Manifest] = []
    blobs = {}
    for arch in _PLATFORMS:
        m, b = _single(spec, arch, oci, scale)
        children.append(Manifest(m.data, m.media_type, arch))
        blobs |= b
    index_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    doc = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [_descriptor(c.media_type, c.data, c.platform) for c in children],
    }
    return SampleImage(
        spec.repository, spec.tag, _dump(doc, oci), index_type, tuple(children), MappingProxyType(blobs)
    )


# The release history. Order here is the order of images.list and of pushes.
_RELEASE_1 = (
    _Spec("base/debian", "12.4", "docker", "debian", (("certs", 48),)),
    _Spec("base/python", "3.11", "docker", "python", (("pip", 96),)),
    _Spec("base/java", "21", "docker", "java", (("jre-tools", 64),)),
    _Spec("platform/gateway", "1.4.0", "docker-list", "java", (("deps", 128), ("app-1.4.0", 64))),
    _Spec("platform/auth", "2.0.1", "docker", "python", (("app-2.0.1", 80),)),
    _Spec("platform/metrics", "0.9.0", "oci-index", "debian", (("exporter", 96),)),
    _Spec("apps/team-a/web", "1.0.0", "oci", "python", (("deps", 160), ("app-1.0.0", 72))),
    _Spec("apps/team-a/worker", "1.0.0", "docker", "python", (("app", 56),)),
    _Spec("apps/team-a/lib", "1.0.0", "docker", "debian", (("lib", 40),)),
    _Spec("apps/team-a/lib/tools", "1.0.0", "docker", "debian", (("tools", 44),)),
    _Spec("apps/team-b/batch", "3.2.0", "docker", "java", (("app", 88),)),
    _Spec("apps/team-b/legacy", "0.1.0", "docker", "debian", (("app", 36),)),
)
_CHANGED = {  # repository -> (new tag, new top-layer label); the lower layers stay the same
    "platform/gateway": ("1.5.0", "app-1.5.0"),
    "platform/auth": ("2.1.0", "app-2.1.0"),
    "apps/team-a/web": ("1.1.0", "app-1.1.0"),
}
_DROPPED = frozenset({"apps/team-b/batch", "apps/team-b/legacy"})
_ADDED = (
    _Spec("platform/search", "1.0.0", "docker", "java", (("deps", 112), ("app-1.0.0", 60))),
    _Spec("apps/team-c/report", "1.0.0", "docker", "python", (("app", 52),)),
)


def _evolve(specs: tuple[_Spec, ...], changed: dict[str, tuple[str, str]], dropped: frozenset[str]
            ) -> list[_Spec]:
    """The next release's specs: `changed` repositories get a new tag and top layer, the lower
    layers stay the same; `dropped` ones go."""
    out = []
    for s in specs:
        if s.repository in dropped:
            continue
        if s.repository in changed:
            tag, label = changed[s.repository]
            s = _Spec(s.repository, tag, s.kind, s.base, (*s.apps[:-1], (label, s.apps[-1][1])))
        out.append(s)
    return out


def _release_2() -> tuple[_Spec, ...]:
    specs = _evolve(_RELEASE_1, _CHANGED, _DROPPED)
    # Keep namespaces grouped: platform/search after the other platform images.
    specs.insert(max(i for i, s in enumerate(specs) if s.repository.startswith("platform/")) + 1, _ADDED[0])
    specs.append(_ADDED[1])
    return tuple(specs)


# Release 3: a third step of history, so retention can keep "the last two" and drop the first.
_CHANGED_3 = {
    "platform/metrics": ("1.0.0", "exporter-1.0.0"),
    "apps/team-a/worker": ("1.1.0", "app-1.1.0"),
}
_DROPPED_3 = frozenset({"apps/team-c/report"})


def _release_3() -> tuple[_Spec, ...]:
    return tuple(_evolve(_release_2(), _CHANGED_3, _DROPPED_3))


@functools.lru_cache(maxsize=8)
def release(n: int, scale: float = 1.0) -> Release:
    """Release `n` (1, 2 or 3) of the sample history; `scale` multiplies every layer's size."""
    if n not in RELEASES:
        raise ValueError(f"sample release {n} does not exist; choose one of {RELEASES}")
    if not 0 < scale <= 100:
        raise ValueError(f"scale {scale} is out of range; use a factor in (0, 100], 1.0 is a few MiB")
    specs = _RELEASE_1 if n == 1 else _release_2() if n == 2 else _release_3()
    return Release(n, float(scale), tuple(_build(s, float(scale)) for s in specs))


# --- CLI -----------------------------------------------------------------------------------
def _main() -> None:
    # Imported here so that importing layover.samples stays pure (no network client, no CLI).
    import typer

    from layover.adapters.registry_api import push_release
    from layover.errors import LayoverError
    # Under `python -m` this file runs as __main__; use the real module so there is one copy of
    # each class (registry_api and callers compare against layover.samples' types).
    from layover.samples import release

    app = typer.Typer(add_completion=False, help="Deterministic sample images for Layover.")

    @app.command()
    def push(
        registry: str = typer.Option(..., help="Registry to push to, 127.0.0.1:PORT (plain HTTP)."),
        release_number: int = typer.Option(1, "--release", help="Sample release: 1, 2 or 3."),
        list_out: Path | None = typer.Option(None, help="Write the release's images.list here."),
        scale: float = typer.Option(1.0, help="Multiply every layer's size by this factor."),
        pin_digests: bool = typer.Option(False, help="Write repo:tag@digest lines in the list."),
        wait: float = typer.Option(30.0, help="Seconds to wait for the registry to answer /v2/."),
    ) -> None:
        """Push a sample release into a registry and write its images.list."""
        rel = release(release_number, scale)
        try:
            results = push_release(registry, rel, ready_timeout=wait)
        except LayoverError as e:  # a clear one-line message, not a traceback
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        uploaded = sum(r.blobs_uploaded for r in results)
        mounted = sum(r.blobs_mounted for r in results)
        present = sum(r.blobs_present for r in results)
        typer.echo(
            f"pushed release {rel.number}: {len(results)} images to {registry} "
            f"(blobs: {uploaded} uploaded, {mounted} mounted from another repository, "
            f"{present} already present)"
        )
        if list_out is not None:
            list_out.write_text(rel.list_text(pin_digests=pin_digests))
            typer.echo(f"wrote {list_out}")

    @app.command("list")
    def list_(
        release_number: int = typer.Option(1, "--release", help="Sample release: 1, 2 or 3."),
        scale: float = typer.Option(1.0, help="Multiply every layer's size by this factor."),
        pin_digests: bool = typer.Option(False, help="Write repo:tag@digest lines."),
    ) -> None:
        """Print a sample release's images.list."""
        typer.echo(release(release_number, scale).list_text(pin_digests=pin_digests), nl=False)

    app()


if __name__ == "__main__":
    _main()
