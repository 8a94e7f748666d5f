"""The I/O adapters against the real thing: registry containers, skopeo, kernel overlayfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from layover.adapters import overlay, skopeo
from layover.adapters.registry import RegistryManager, free_port
from layover.errors import (
    CommandError,
    ImageNotFoundError,
    MountError,
    RegistryError,
    TransientCommandError,
)
from layover.storage.layout import StorageLayout

pytestmark = pytest.mark.integration


def _uploads(access_log: str) -> int:
    """Blob upload sessions started (POST .../blobs/uploads/), mounts included."""
    return sum(1 for line in access_log.splitlines() if '"POST /v2/' in line and "/blobs/uploads/" in line)


def _tree(root) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


# --- registries + skopeo ------------------------------------------------------------------
def test_copy_uploads_blobs_once_then_skips_them(registries, sample_images, skopeo_bin, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "p").mkdir()
    archive = registries.start("archive", tmp_path / "a")
    package = registries.start("package", tmp_path / "p")
    image = sample_images.push(archive, "lib/hello:v1", layers=2)
    blobs = frozenset(image.blobs)
    assert len(blobs) == 3  # two layers and a config

    first = skopeo.copy(f"{archive.host}/lib/hello:v1", f"{package.host}/lib/hello:v1", src_tls_verify=False)
    assert first.copied == blobs
    assert first.skipped == frozenset()
    assert first.manifest_digest == image.digest
    assert _uploads(registries.access_log(package)) == 3

    second = skopeo.copy(f"{archive.host}/lib/hello:v1", f"{package.host}/lib/hello:v1", src_tls_verify=False)
    assert second.copied == frozenset()
    assert second.skipped == blobs
    assert second.manifest_digest == image.digest
    assert _uploads(registries.access_log(package)) == 3  # nothing new was uploaded
    assert skopeo.inspect_digest(f"{package.host}/lib/hello:v1", tls_verify=False) == image.digest
    # What the registry wrote is where layout.py says it is.
    layout = StorageLayout(tmp_path / "p")
    for blob in blobs:
        assert layout.blob_data(blob).is_file()
        assert layout.layer_link("lib/hello", blob).is_file()
    assert layout.tag_current_link("lib/hello", "v1").read_text() == str(image.digest)


def test_copy_all_keeps_index_digest_and_every_platform(registries, sample_images, skopeo_bin, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "p").mkdir()
    archive = registries.start("archive", tmp_path / "a")
    package = registries.start("package", tmp_path / "p")
    image = sample_images.push(archive, "multi/arch:1.0", platforms=2)

    result = skopeo.copy(
        f"{archive.host}/multi/arch:1.0", f"{package.host}/multi/arch:1.0", src_tls_verify=False
    )
    assert result.manifest_digest == image.digest
    assert result.copied == frozenset(image.blobs) and len(image.blobs) == 6
    layout = StorageLayout(tmp_path / "p")
    assert len(image.children) == 2
    for child in image.children:
        assert layout.revision_link("multi/arch", child.digest).is_file()


def test_read_only_registry_serves_but_rejects_push_and_writes_nothing(
    registries, sample_images, skopeo_bin, tmp_path
):
    storage = tmp_path / "lower"
    storage.mkdir()
    writer = registries.start("writer", storage)
    image = sample_images.push(writer, "lib/ro:v1")
    registries.stop(writer)
    before = _tree(storage)

    ro = registries.start("archive-ro", storage, read_only=True)
    assert ro.read_only
    mounts = registries.client.containers.get(ro.container_id).attrs["Mounts"]
    assert {m["Destination"]: m["RW"] for m in mounts}["/var/lib/registry"] is False
    assert skopeo.inspect_digest(f"{ro.host}/lib/ro:v1", tls_verify=False) == image.digest

    (tmp_path / "src").mkdir()
    src = registries.start("src", tmp_path / "src")
    sample_images.push(src, "lib/new:v1")
    with pytest.raises(CommandError) as info:
        skopeo.copy(f"{src.host}/lib/new:v1", f"{ro.host}/lib/new:v1", src_tls_verify=False)
    assert type(info.value) is CommandError  # neither transient nor "not found"
    assert "read-only" in str(info.value)
    assert _tree(storage) == before


def test_health_restart_and_stop(registries, sample_images, skopeo_bin, tmp_path):
    registry = registries.start("archive", tmp_path)
    assert httpx.get(f"{registry.url}/v2/").status_code == 200
    image = sample_images.push(registry, "lib/keep:v1")

    again = registries.restart(registry)
    assert again == registry
    assert httpx.get(f"{registry.url}/v2/").status_code == 200
    assert skopeo.inspect_digest(f"{registry.host}/lib/keep:v1", tls_verify=False) == image.digest

    registries.stop(registry)
    with pytest.raises(RegistryError, match=r"exited|dead|did not answer"):
        registries.wait_healthy(registry, timeout=2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry.url}/v2/", timeout=2)


def test_remove_scope_clears_stale_containers_of_a_crashed_run(
    docker_client, registry_image, registries, tmp_path
):
    # A "crashed run": a manager that started containers and never cleaned up.
    crashed = RegistryManager(docker_client, registry_image, registries.label_scope + "-crashed")
    try:
        a = crashed.start("archive", tmp_path)
        crashed.start("package", tmp_path)
        # Starting the same role again replaces the stale container instead of clashing.
        a2 = crashed.start("archive", tmp_path)
        assert a2.container_id != a.container_id
        recovered = RegistryManager(docker_client, registry_image, crashed.label_scope)
        removed = recovered.remove_scope()
        assert sorted(removed) == sorted(
            [crashed.container_name("archive"), crashed.container_name("package")]
        )
        left = docker_client.containers.list(
            all=True, filters={"label": [f"layover.scope={crashed.label_scope}"]}
        )
        assert left == []
    finally:
        crashed.remove_scope()
        crashed.close()


def test_container_labels_and_host_networking(registries, tmp_path):
    registry = registries.start("package", tmp_path)
    attrs = registries.client.containers.get(registry.container_id).attrs
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    labels = attrs["Config"]["Labels"]
    assert labels["layover"] == "1"
    assert labels["layover.scope"] == registries.label_scope
    assert labels["layover.role"] == "package"
    assert f"REGISTRY_HTTP_ADDR={registry.host}" in attrs["Config"]["Env"]
    assert registry.host.startswith("127.0.0.1:")


def test_copy_of_missing_image_is_image_not_found(registries, sample_images, skopeo_bin, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "p").mkdir()
    archive = registries.start("archive", tmp_path / "a")
    package = registries.start("package", tmp_path / "p")
    sample_images.push(archive, "lib/there:v1")
    for missing in ("lib/absent:v1", "lib/there:v2", "lib/there@sha256:" + "0" * 64):
        with pytest.raises(ImageNotFoundError, match="no such image"):
            skopeo.copy(f"{archive.host}/{missing}", f"{package.host}/lib/x:v1", src_tls_verify=False)


def test_copy_from_closed_port_is_transient(registries, tmp_path):
    package = registries.start("package", tmp_path)
    closed = free_port()  # nothing listens there
    with pytest.raises(TransientCommandError, match="connection refused"):
        skopeo.copy(
            f"127.0.0.1:{closed}/lib/x:v1", f"{package.host}/lib/x:v1", src_tls_verify=False, timeout=60
        )


# --- overlay ------------------------------------------------------------------------------
def test_overlay_shows_lower_and_deletes_only_in_upper(mounted_overlay, tmp_path):
    lower = tmp_path / "lower"
    (lower / "repo" / "_manifests").mkdir(parents=True)
    (lower / "repo" / "_manifests" / "link").write_text("sha256:abc")
    (lower / "keep.txt").write_text("kept")
    dirs = mounted_overlay(lower)
    assert overlay.is_mounted(dirs.merged)
    assert (dirs.merged / "repo" / "_manifests" / "link").read_text() == "sha256:abc"

    import shutil

    shutil.rmtree(dirs.merged / "repo" / "_manifests")
    (dirs.merged / "new.txt").write_text("new")
    assert not (dirs.merged / "repo" / "_manifests").exists()
    assert (lower / "repo" / "_manifests" / "link").read_text() == "sha256:abc"  # lower intact
    assert not (lower / "new.txt").exists()
    whiteout = os.lstat(dirs.upper / "repo" / "_manifests")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0  # overlayfs whiteout

    overlay.reset(dirs.lower, dirs.upper, dirs.work, dirs.merged)
    assert overlay.is_mounted(dirs.merged)
    assert (dirs.merged / "repo" / "_manifests" / "link").exists()
    assert not (dirs.merged / "new.txt").exists()
    assert os.listdir(dirs.upper) == []

    overlay.unmount(dirs.merged)
    assert not overlay.is_mounted(dirs.merged)
    overlay.unmount(dirs.merged)  # unmounting twice is fine


def test_reset_puts_the_old_upper_aside_and_deletes_it_off_the_critical_path(mounted_overlay, tmp_path):
    import time

    dirs = mounted_overlay()
    for i in range(200):
        (dirs.merged / f"f{i}").write_text("x")
    dead = dirs.upper.with_name(f".{dirs.upper.name}.discarded-killedrun")  # a killed run's leftover
    (dead / "deep").mkdir(parents=True)
    overlay.reset(dirs.lower, dirs.upper, dirs.work, dirs.merged)
    assert overlay.is_mounted(dirs.merged)
    assert os.listdir(dirs.upper) == [] and os.listdir(dirs.merged) == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and list(dirs.upper.parent.glob(".*.discarded-*")):
        time.sleep(0.05)
    assert list(dirs.upper.parent.glob(".*.discarded-*")) == []


def _view(root) -> dict[str, tuple[int, int, int, bytes | None]]:
    """What a reader of the merged view sees: every path's mode, owner and file content."""
    out = {}
    for d, dirnames, files in os.walk(root):
        for name in dirnames + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            data = Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def test_hiding_in_upper_gives_the_view_deleting_in_merged_gives(mounted_overlay, tmp_path):
    lower = tmp_path / "lower"
    for repo in ("a", "ns/b", "ns/deep/c"):
        for rel in (
            "_manifests/tags/1/current/link",
            "_manifests/revisions/sha256/ab/link",
            "_layers/sha256/cd/link",
        ):
            f = lower / "repositories" / repo / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"{repo}:{rel}")
    os.chmod(lower / "repositories" / "ns", 0o750)  # an unusual mode must show through
    os.chown(lower / "repositories" / "ns" / "deep", 1234, 5678)
    hide = [f"repositories/{r}/_manifests" for r in ("a", "ns/b", "ns/deep/c")]

    deleted = mounted_overlay(lower)
    import shutil

    for rel in hide:
        shutil.rmtree(deleted.merged / rel)
    hidden = mounted_overlay(lower)
    assert overlay.can_hide(hidden.merged)
    assert overlay.hide_in_upper(hidden.lower, hidden.upper, hidden.work, hidden.merged, hide) == 3
    assert overlay.is_mounted(hidden.merged)

    assert _view(hidden.merged) == _view(deleted.merged)
    assert not any("_manifests" in p for p in _view(hidden.merged))
    assert (hidden.merged / "repositories/ns/deep/c/_layers/sha256/cd/link").exists()
    # the registry can write where a hidden tree was: it gets a fresh (opaque) directory
    (hidden.merged / "repositories/a/_manifests/tags/2").mkdir(parents=True)
    assert os.listdir(hidden.merged / "repositories/a/_manifests/tags") == ["2"]
    assert (lower / "repositories/a/_manifests/tags/1/current/link").exists()  # lower intact
    # hiding again (a retried stage) changes nothing; upper content that is not a whiteout is refused
    assert overlay.hide_in_upper(hidden.lower, hidden.upper, hidden.work, hidden.merged, hide[1:]) == 0
    with pytest.raises(MountError, match="not a whiteout"):
        overlay.hide_in_upper(hidden.lower, hidden.upper, hidden.work, hidden.merged, hide[:1])
    with pytest.raises(MountError, match="relative to the lower dir"):
        overlay.hide_in_upper(hidden.lower, hidden.upper, hidden.work, hidden.merged, ["../x"])


def test_overlay_mounted_context_unmounts_on_failure(require_root_overlay, tmp_path):
    dirs = [tmp_path / n for n in ("lower", "upper", "work", "merged")]
    dirs[0].mkdir()
    (dirs[0] / "f").write_text("x")
    seen: list[str] = []

    def use_then_fail() -> None:
        with overlay.mounted(*dirs, fresh=True) as merged:
            seen.append((merged / "f").read_text())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_then_fail()
    assert seen == ["x"]
    assert not overlay.is_mounted(dirs[3])


def test_overlay_errors_are_mount_errors(require_root_overlay, tmp_path):
    lower = tmp_path / "lower"
    lower.mkdir()
    with pytest.raises(MountError, match="does not exist"):
        overlay.mount(lower, tmp_path / "nope", tmp_path / "work", tmp_path / "merged")
    with pytest.raises(MountError, match="overlaps the lower dir"):
        overlay.reset(lower, lower / "upper", tmp_path / "work", tmp_path / "merged")
    assert lower.is_dir()


# --- registry image -----------------------------------------------------------------------
def test_registry_image_is_runnable_and_labelled(docker_client, registry_image):
    import io
    import tarfile

    from layover.adapters import registry_image as ri

    attrs = docker_client.images.get(registry_image).attrs["Config"]
    if registry_image == ri.LOCAL_IMAGE:
        assert attrs["Entrypoint"] == ["/usr/bin/docker-registry"]
        assert attrs["Cmd"] == ["serve", "/etc/docker/registry/config.yml"]
        assert attrs["Labels"]["layover"] == "1"
    if not ri.REGISTRY_BIN.is_file():
        return
    with tarfile.open(fileobj=io.BytesIO(ri.rootfs_tarball())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["usr/bin/docker-registry"].mode == 0o755
    assert "etc/docker/registry/config.yml" in members and "etc/passwd" in members
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    for lib in ri.shared_libraries(ri.REGISTRY_BIN):
        assert str(lib).lstrip("/") in members
