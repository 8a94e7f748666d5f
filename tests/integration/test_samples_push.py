"""Sample releases pushed into real registries (layover.testing), read back with our client and skopeo."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from layover.adapters.registry_api import RegistryAPI
from layover.adapters.run import run
from layover.imagelist import load
from layover.testing.push import push_release
from layover.testing.releases import Release, release

pytestmark = pytest.mark.integration

StartRegistry = Callable[[str], str]  # role -> "127.0.0.1:PORT"


@pytest.fixture
def start_registry(registries, tmp_path: Path) -> StartRegistry:
    """Start an empty registry container (tests/conftest.py removes it at teardown)."""

    def start(role: str) -> str:
        storage = tmp_path / role
        storage.mkdir()
        return registries.start(role, storage).host

    return start


def assert_registry_serves(host: str, rel: Release) -> None:
    """Every image of `rel` is served byte-identical by `host`: manifests, children, blobs."""
    with RegistryAPI(host) as api:
        for img in rel.images:
            got = api.manifest(img.repository, img.tag)
            assert (got.digest, got.media_type) == (img.digest, img.media_type), str(img)
            assert got.data == img.manifest
            for child in img.children:
                c = api.manifest(img.repository, child.digest)
                assert (c.data, c.media_type) == (child.data, child.media_type)
            for digest, data in img.blobs.items():
                assert api.get_blob(img.repository, digest) == data  # get_blob verifies the digest too


def test_cli_push_then_read_back_with_client_and_skopeo(
    start_registry: StartRegistry, skopeo_bin: str, tmp_path: Path
) -> None:
    host = start_registry("ci")
    list_file = tmp_path / "images.list"
    t0 = time.monotonic()
    out = run(
        [
            sys.executable,
            "-m",
            "layover.testing",
            "push",
            "--registry",
            host,
            "--release",
            "1",
            "--list-out",
            str(list_file),
        ],
        timeout=120,
    )
    seconds = time.monotonic() - t0
    rel = release(1)
    assert "pushed release 1: 12 images" in out.text, out.text
    assert [r.source_suffix for r in load(list_file).refs] == [f"{i.repository}:{i.tag}" for i in rel.images]
    assert seconds < 60, f"pushing ~2 MiB took {seconds:.1f}s"

    assert_registry_serves(host, rel)
    with RegistryAPI(host) as api:
        assert set(api.catalog()) == {i.repository for i in rel.images}
        for img in rel.images:
            assert api.tags(img.repository) == (img.tag,), "index children are pushed untagged"
        assert api.tags("no/such/repo") == ()
    for img in rel.images:
        raw = run(
            [
                skopeo_bin,
                "inspect",
                "--raw",
                "--tls-verify=false",
                f"docker://{host}/{img.repository}:{img.tag}",
            ],
            timeout=60,
        )
        assert raw.stdout == img.manifest, f"skopeo sees different bytes for {img}"


def test_skopeo_copy_all_preserve_digests_keeps_every_digest(
    start_registry: StartRegistry, skopeo_bin: str
) -> None:
    src, dst = start_registry("src"), start_registry("dst")
    rel = release(1)
    push_release(src, rel)
    for img in rel.images:
        ref = f"{img.repository}:{img.tag}"
        run(
            [
                skopeo_bin,
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{src}/{ref}",
                f"docker://{dst}/{ref}",
            ],
            timeout=120,
        )
    assert_registry_serves(dst, rel)
    with RegistryAPI(src) as a, RegistryAPI(dst) as b:
        assert sorted(b.catalog()) == sorted(a.catalog())


def test_release_2_on_top_of_1_sends_only_new_blobs_and_keeps_history(start_registry: StartRegistry) -> None:
    host = start_registry("ci")
    one, two = release(1), release(2)
    first = push_release(host, one)
    # Shared base layers are uploaded once and mounted into the other repositories.
    assert sum(r.blobs_uploaded for r in first) == len(one.blobs)
    assert sum(r.blobs_mounted for r in first) > 0

    second = {r.image: r for r in push_release(host, two)}
    assert sum(r.blobs_uploaded for r in second.values()) == len(set(two.blobs) - set(one.blobs))
    unchanged = {str(i) for i in two.images} & {str(i) for i in one.images}
    assert len(unchanged) >= 6
    for name in unchanged:
        assert (second[name].blobs_uploaded, second[name].blobs_mounted) == (0, 0), name

    assert_registry_serves(host, two)
    assert_registry_serves(host, one)  # history: nothing of release 1 is lost
    with RegistryAPI(host) as api:
        assert api.tags("apps/team-a/web") == ("1.0.0", "1.1.0")
        assert "apps/team-b/legacy" in api.catalog()

    again = push_release(host, two)
    assert sum(r.blobs_uploaded + r.blobs_mounted for r in again) == 0, "a re-push sends nothing"
