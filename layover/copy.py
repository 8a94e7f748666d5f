"""Copying one image between registries: the copiers the sync stages use.

    NativeCopier    archive sync: CI registry -> archive, in process (the default). Asks the
                    source for the tag's digest first (one HEAD); an image the archive already
                    holds whole is not copied. Otherwise manifests byte for byte and only the
                    blobs the archive lacks: mounted from another archive repository when one
                    holds it, else streamed and verified (layover/adapters/registry_copy.py).
                    Schema 1 images go to skopeo.
    SkopeoCopier    the same with `skopeo copy --all --preserve-digests` for every image
                    (`copier: skopeo`), which moves the new blobs.
    ManifestCopier  package sync: archive -> package, manifests only, in process. After pruning
                    the package registry already holds every blob and link, so an image costs a
                    few PUTs of milliseconds (a skopeo process costs ~0.1 s before it moves a
                    byte).

Clients and the failure guard are handed in: the flow owns them (layover/registries.py), and the
copiers stay testable with any registry. Retries are not here: archive sync's are in
layover/converge.py, package sync's are its Prefect task's; one layer each (docs/design.md §5).
An attempt records what it landed in a `Landed`, also when it fails, so the retry layer can
tell an attempt that made progress from one that did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from layover.adapters import skopeo
from layover.adapters.manifest_copy import copy_manifests
from layover.adapters.registry_api import RegistryAPI
from layover.adapters.registry_client import RegistryClient
from layover.adapters.registry_copy import Landed, NeedsSkopeo, copy_image
from layover.errors import CommandError, CopyError, LayoverError, Transient
from layover.reference import Digest, ImageRef
from layover.report import ImageCopy
from layover.sources import SourceMap
from layover.storage.holders import BlobHolders
from layover.storage.images import image_complete, resolve
from layover.storage.layout import StorageLayout


@dataclass(frozen=True)
class Route:
    """Where one stage copies from and to. `sources` picks each image's source registry (its
    own host, --source, --registry-map: layover/sources.py); without it, `src_host` for all."""

    src_host: str
    dst_host: str
    dst_storage: Path  # the destination registry's root dir: to size what moved, to check wholeness
    src_tls_verify: bool = True
    src_authfile: Path | None = None
    timeout: float = 900  # one attempt of one image, seconds
    sources: SourceMap | None = None
    src_cert_dir: Path | None = None

    def src_for(self, ref: ImageRef) -> str:
        return self.sources.host_for(ref) if self.sources is not None else self.src_host

    @property
    def destination(self) -> StorageLayout:
        return StorageLayout(self.dst_storage)


class Probe(Protocol):
    """Which digest a tag has at its source now (SourceProbe, or one per source registry)."""

    def digest(self, ref: ImageRef) -> Digest | None:
        """None when it cannot tell: the copy then runs for real."""


class Guard(Protocol):
    """What a failed copy may ask of the registries it talked to."""

    def explain(self, ref: ImageRef, error: LayoverError) -> LayoverError | None:
        """A better error than a bare HTTP 500 (a full disk, a damaged file), or None."""

    def revive(self) -> None:
        """Bring back registries of ours that stopped answering, before a retry."""


class _Copier:
    def __init__(self, route: Route, guard: Guard | None) -> None:
        self.route = route
        self.guard = guard

    def copy(self, ref: ImageRef, landed: Landed | None = None) -> ImageCopy:
        """Copy `ref`; a failure comes out as the most telling error of the tree. `landed`
        (filled in as the copy goes) says what an attempt moved, also when it failed."""
        try:
            return self._copy(ref, landed if landed is not None else Landed())
        except (CommandError, CopyError) as e:
            if self.guard is not None:
                better = self.guard.explain(ref, e)
                if better is not None:
                    raise better from e
                if isinstance(e, Transient):
                    self.guard.revive()
            raise

    def _copy(self, ref: ImageRef, landed: Landed) -> ImageCopy:
        raise NotImplementedError


class SkopeoCopier(_Copier):
    def __init__(
        self,
        route: Route,
        probe: Probe,
        guard: Guard | None = None,
        source_ok: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(route, guard)
        self.probe = probe
        self.source_ok = source_ok  # called when the source answered well (the stage's watch)

    def already_there(self, ref: ImageRef) -> ImageCopy | None:
        """The copy's result without copying, if the archive already holds, whole, the digest
        the source's tag has now (one HEAD request, none when the archive does not have the
        tag at all); None means a real copy must run."""
        started = time.monotonic()
        layout = self.route.destination
        archived = resolve(layout, ref)
        if archived is None:
            return None
        digest = self.probe.digest(ref)
        if digest is not None and ref.tag is not None:
            self.source_ok()
        if digest != archived:
            return None
        blobs = image_complete(layout, ref.repository, digest)
        if blobs is None:
            return None
        return ImageCopy(str(ref), str(digest), 0, blobs, 0, time.monotonic() - started)

    def copy_order(self, refs: Sequence[ImageRef]) -> list[ImageRef]:
        """`refs` in the order to copy them: images of repositories the archive holds no layer of
        first (they move every layer, the others mostly one), else as listed. Started last, the
        largest copy alone would decide when the stage ends (docs/benchmarks.md)."""
        layout = self.route.destination
        return sorted(refs, key=lambda ref: layout.layers(ref.repository).is_dir())

    def _copy(self, ref: ImageRef, landed: Landed) -> ImageCopy:
        started = time.monotonic()
        route = self.route
        try:
            result = skopeo.copy(
                f"docker://{ref.at(route.src_for(ref))}",
                f"docker://{route.dst_host}/{ref.destination_suffix}",
                src_tls_verify=route.src_tls_verify,
                dest_tls_verify=False,  # our registries listen on 127.0.0.1, plain HTTP
                src_authfile=route.src_authfile,
                src_cert_dir=route.src_cert_dir,
                timeout=route.timeout,
            )
        except CommandError as e:
            # what landed before it failed: the blobs skopeo reported complete
            uploaded, _ = skopeo.parse_debug(e.stderr)
            landed.uploaded.extend((d, 0) for d in sorted(uploaded))
            raise
        self.source_ok()
        layout = route.destination
        copied = tuple(sorted((d.hex, _size(layout, d)) for d in result.copied))
        return ImageCopy(
            image=str(ref),
            manifest_digest=str(result.manifest_digest) if result.manifest_digest else None,
            blobs_copied=len(result.copied),
            blobs_reused=len(result.skipped),
            bytes_copied=sum(size for _, size in copied),
            seconds=time.monotonic() - started,
            copied=copied,
        )


class NativeCopier(SkopeoCopier):
    """Archive sync in process; skopeo (the parent's copy) only for what this does not handle."""

    def __init__(
        self,
        route: Route,
        probe: Probe,
        src: RegistryClient | Mapping[str, RegistryClient],
        dst: RegistryClient,
        guard: Guard | None = None,
        source_ok: Callable[[], None] = lambda: None,
    ) -> None:
        """`src`: the source's client, or one per source host (`route.src_for` picks)."""
        super().__init__(route, probe, guard, source_ok)
        self.src = src
        self.dst = dst
        self.holders = BlobHolders(route.destination)

    def _copy(self, ref: ImageRef, landed: Landed) -> ImageCopy:
        started = time.monotonic()
        try:
            digest = copy_image(
                self.src if isinstance(self.src, RegistryClient) else self.src[self.route.src_for(ref)],
                self.dst,
                ref.repository,
                ref.tag,
                ref.digest,
                self.holders,
                landed=landed,
                source_ok=self.source_ok,
            )
        except NeedsSkopeo:
            return super()._copy(ref, landed)
        uploaded = tuple(sorted((d.hex, size) for d, size in landed.uploaded))
        return ImageCopy(
            image=str(ref),
            manifest_digest=str(digest),
            blobs_copied=len(uploaded),
            # a mounted blob moved no byte: reused, as skopeo's report counts its mounts
            blobs_reused=len(landed.present) + len(landed.mounted),
            bytes_copied=sum(size for _, size in uploaded),
            seconds=time.monotonic() - started,
            copied=uploaded,
        )


class ManifestCopier(_Copier):
    def __init__(self, route: Route, src: RegistryAPI, dst: RegistryAPI, guard: Guard | None = None) -> None:
        super().__init__(route, guard)
        self.src = src
        self.dst = dst

    def _copy(self, ref: ImageRef, landed: Landed) -> ImageCopy:
        started = time.monotonic()
        digest, _ = copy_manifests(self.src, self.dst, ref)
        blobs = image_complete(self.route.destination, ref.repository, digest)
        if blobs is None:
            raise CopyError(f"{ref}: written, but the package does not hold it whole")
        return ImageCopy(str(ref), str(digest), 0, blobs, 0, time.monotonic() - started)


def _size(layout: StorageLayout, digest: Digest) -> int:
    try:
        return layout.blob_data(digest).stat().st_size
    except FileNotFoundError:
        return 0  # a foreign layer has no data; nothing moved
