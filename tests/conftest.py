"""Shared fixtures for services: Docker engine, registry containers, skopeo, overlay mounts.

A missing service skips the test locally but FAILS it when CI=true: in CI a quietly skipped
integration test would hide a broken environment.

    docker_client        (session) Docker SDK client
    registry_image       (session) image name from ensure_registry_image
    registries           RegistryManager with a unique label scope; .start(role, storage,
                         read_only=False) -> Registry; every container removed at teardown
    skopeo_bin           (session) path of skopeo
    require_root_overlay (session) root + a working kernel overlayfs
    mounted_overlay      factory(lower=None) -> OverlayDirs, mounted; unmounted at teardown
    sample_images        factory .push(registry, "repo:tag", ...) -> SampleImage (skopeo from
                         an OCI layout built in tmp_path; no internet)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.reference import Digest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (CI=true) the current test when a service is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a required service is missing: {reason}", pytrace=False)
    pytest.skip(reason)


# --- Docker and registries ------------------------------------------------------------------
@pytest.fixture(scope="session")
def docker_client():
    from layover.adapters.registry import docker_client as make_client
    from layover.errors import RegistryError

    try:
        client = make_client()
    except RegistryError as e:
        require(False, str(e))
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry_image(docker_client) -> str:
    from layover.adapters.registry_image import ensure_registry_image
    from layover.errors import RegistryError

    try:
        return ensure_registry_image(docker_client)
    except RegistryError as e:
        require(False, str(e))
        raise  # unreachable: require() skips or fails


@pytest.fixture
def registries(docker_client, registry_image, request):
    """A RegistryManager for this test only: `registries.start(role, storage, read_only=False)`."""
    from layover.adapters.registry import RegistryManager

    scope = f"test-{uuid.uuid4().hex[:10]}"
    manager = RegistryManager(docker_client, registry_image, scope)
    try:
        yield manager
    finally:
        manager.remove_scope()


# --- skopeo ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def skopeo_bin() -> str:
    path = shutil.which("skopeo")
    require(path is not None, "skopeo is not installed (scripts/setup.sh installs it)")
    assert path is not None
    return path


# --- overlayfs ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def require_root_overlay() -> None:
    """Root and a kernel overlayfs that really mounts (probed once on empty dirs)."""
    require(os.geteuid() == 0, "overlay tests need root (mount -t overlay)")
    from layover.adapters import overlay
    from layover.errors import MountError

    probe = Path(tempfile.mkdtemp(prefix="layover-overlay-probe-"))
    dirs = [probe / n for n in ("lower", "upper", "work", "merged")]
    for d in dirs:
        d.mkdir()
    try:
        overlay.mount(*dirs)
        ok, why = True, ""
    except MountError as e:
        ok, why = False, str(e)
    finally:
        overlay.unmount(dirs[3])
        if not overlay.is_mounted(dirs[3]):
            shutil.rmtree(probe)
    require(ok, f"kernel overlayfs does not mount here: {why}")


@dataclass(frozen=True)
class OverlayDirs:
    lower: Path
    upper: Path
    work: Path
    merged: Path


@pytest.fixture
def mounted_overlay(require_root_overlay, tmp_path) -> Iterator:
    """Factory: mounted_overlay(lower=None) -> OverlayDirs (dirs under tmp_path, mounted)."""
    from layover.adapters import overlay

    made: list[OverlayDirs] = []

    def make(lower: Path | None = None) -> OverlayDirs:
        base = tmp_path / f"overlay-{len(made)}"
        dirs = OverlayDirs(
            Path(lower) if lower is not None else base / "lower",
            base / "upper", base / "work", base / "merged",
        )
        made.append(dirs)
        dirs.lower.mkdir(parents=True, exist_ok=True)
        overlay.reset(dirs.lower, dirs.upper, dirs.work, dirs.merged)
        return dirs

    try:
        yield make
    finally:
        for dirs in made:
            overlay.unmount(dirs.merged)


# --- sample images --------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleImage:
    reference: str  # HOST/REPO:TAG it was pushed to
    manifest: Digest  # the top-level digest (index digest when platforms > 1)
    blobs: frozenset[Digest]  # every config and layer blob
    children: tuple[Digest, ...]  # per-platform manifests of an index; () for a single image


class SampleImages:
    """Builds small random OCI images in tmp_path and pushes them with skopeo."""

    def __init__(self, tmp_path: Path, skopeo: str) -> None:
        self.tmp_path = tmp_path
        self.skopeo = skopeo
        self.count = 0

    def push(self, registry, name_tag: str, *, layers: int = 2, platforms: int = 1,
             seed: str | None = None) -> SampleImage:
        self.count += 1
        layout = self.tmp_path / f"oci-{self.count}"
        seed = seed if seed is not None else uuid.uuid4().hex
        top, blobs, children = write_oci_layout(layout, "t", seed=seed, layers=layers,
                                                platforms=platforms)
        ref = f"{registry.host}/{name_tag}"
        subprocess.run(
            [self.skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
             f"oci:{layout}:t", f"docker://{ref}"],
            check=True, capture_output=True, timeout=120,
        )
        return SampleImage(ref, top, blobs, children)


@pytest.fixture
def sample_images(skopeo_bin, tmp_path) -> SampleImages:
    return SampleImages(tmp_path, skopeo_bin)


def write_oci_layout(root: Path, tag: str, *, seed: str, layers: int = 2, platforms: int = 1
                     ) -> tuple[Digest, frozenset[Digest], tuple[Digest, ...]]:
    """An OCI image layout with one image (or an index of `platforms` images) tagged `tag`.

    Content is derived from `seed`, so different seeds never share blobs. Returns
    (top-level digest, config+layer blobs, child manifests).
    """
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict:
        hex_ = hashlib.sha256(data).hexdigest()
        (blob_dir / hex_).write_bytes(data)
        return {"digest": f"sha256:{hex_}", "size": len(data)}

    arches = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
    blobs: set[Digest] = set()
    manifests = []
    for p in range(platforms):
        layer_descs, diff_ids = [], []
        for i in range(layers):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                content = f"{seed}/{p}/{i}\n".encode()
                info = tarfile.TarInfo(f"layer{i}.txt")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            raw = buf.getvalue()
            layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                **put(gzip.compress(raw, mtime=0))})
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        arch = arches[p % len(arches)]
        config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)}
        manifest = json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config_desc, "layers": layer_descs}).encode()
        desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(manifest),
                "platform": {"architecture": arch, "os": "linux"}}
        manifests.append(desc)
        blobs |= {Digest.parse(d["digest"]) for d in [config_desc, *layer_descs]}
    if platforms == 1:
        top = {k: v for k, v in manifests[0].items() if k != "platform"}
        children: tuple[Digest, ...] = ()
    else:
        index = json.dumps({"schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": manifests}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", **put(index)}
        children = tuple(Digest.parse(m["digest"]) for m in manifests)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return Digest.parse(top["digest"]), frozenset(blobs), children
