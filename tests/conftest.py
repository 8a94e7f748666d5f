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
    sample_images        factory .push(registry, "repo:tag", ...) -> layover.testing SampleImage,
                         pushed over the registry HTTP API (seeded content; no internet)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.adapters.registry_api import RegistryAPI
from layover.testing.images import SampleImage, seeded_image
from layover.testing.push import push_image

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
        manager.close()  # its registries' config files


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
            base / "upper",
            base / "work",
            base / "merged",
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
class SampleImages:
    """Pushes small seeded images (layover.testing.images.seeded_image) over the registry API.

    What the tests built on this prove is about copying images out of a registry, not about how
    they got in, so an HTTP push (no skopeo, no OCI layout on disk) is enough.
    """

    def push(
        self, registry, name_tag: str, *, layers: int = 2, platforms: int = 1, seed: str | None = None
    ) -> SampleImage:
        repository, _, tag = name_tag.rpartition(":")
        image = seeded_image(
            repository,
            tag,
            seed=seed if seed is not None else uuid.uuid4().hex,
            layers=layers,
            platforms=platforms,
        )
        with RegistryAPI(registry.host) as api:
            push_image(api, image)
        return image


@pytest.fixture
def sample_images() -> SampleImages:
    return SampleImages()
