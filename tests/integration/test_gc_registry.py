"""GC against a real registry: what survives pulls, what was deleted is 404.

And the negative control for docs/design.md §3's stale blob-descriptor cache: GC under a *running*
registry that caches descriptors, then a push, gives a package `layover verify` rejects; the
same steps with the cache off give one it accepts. That is why the pipeline stops the package
registry before GC and runs registries without that cache.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from layover import imagelist
from layover.adapters.registry import RegistryManager
from layover.adapters.registry_api import RegistryAPI
from layover.storage.gc import plan_gc
from layover.storage.layout import StorageLayout
from layover.storage.vacuum import apply_gc
from layover.storage.verify import ProblemKind, verify_storage
from layover.testing.push import push_release
from layover.testing.releases import Release, release

pytestmark = pytest.mark.integration


def _all_digests(rel: Release) -> set[str]:
    out = {d.hex for d in rel.blobs}
    out |= {m.digest.hex for img in rel.images for m in img.manifests}
    return out


def _blob_dirs(layout: StorageLayout) -> set[str]:
    return {d.hex for d in layout.blob_digests()}


def _pull(host: str, repo: str, tag: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{host}/{repo}:{tag}",
            f"dir:{dest}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_gc_keeps_every_tag_pullable_and_deletes_the_rest(registries, tmp_path):
    storage = tmp_path / "reg"
    storage.mkdir()
    rel1, rel2 = release(1), release(2)
    reg = registries.start("gc", storage)
    push_release(reg.host, rel1)
    push_release(reg.host, rel2)
    registries.stop(reg)  # never delete under a running registry

    layout = StorageLayout(storage)
    keep = {(img.repository, img.tag) for img in rel2.images}
    for img in rel1.images:
        if (img.repository, img.tag) not in keep:
            shutil.rmtree(layout.tag_dir(img.repository, img.tag))
    before = _blob_dirs(layout)
    plan = plan_gc(layout)
    apply_gc(plan)
    after = _blob_dirs(layout)

    # exactly release 2's blobs and manifests survive (index children included) ...
    assert after == _all_digests(rel2)
    deleted = before - after
    assert deleted == _all_digests(rel1) - _all_digests(rel2)
    # ... GC is a fixed point ...
    assert plan_gc(layout).empty
    # ... and the tree is exactly the release.
    assert verify_storage(layout, imagelist.parse_text(rel2.list_text())).ok

    reg = registries.start("gc", storage)  # a fresh process: no cache from before the GC
    api = RegistryAPI(reg.host)
    assert set(api.catalog()) == {img.repository for img in rel2.images}
    for img in rel2.images:
        _pull(reg.host, img.repository, img.tag, tmp_path / "pull" / img.repository.replace("/", "_"))
        assert api.manifest(img.repository, img.tag).digest == img.digest
    for img in rel1.images:
        for digest in img.blobs:
            if digest.hex in deleted:
                assert not api.blob_exists(img.repository, digest), (img.repository, digest)


@pytest.mark.parametrize("blob_cache", [True, False], ids=["cache-on-stale", "cache-off-control"])
def test_deleting_under_a_running_registry(docker_client, registry_image, tmp_path, blob_cache):
    storage = tmp_path / "reg"
    storage.mkdir()
    rel1, rel2 = release(1), release(2)
    mgr = RegistryManager(
        docker_client, registry_image, f"test-{uuid.uuid4().hex[:10]}", blob_cache=blob_cache
    )
    try:
        reg = mgr.start("stale", storage)
        push_release(reg.host, rel1)
        push_release(reg.host, rel2)
        api = RegistryAPI(reg.host)
        dropped = [img for img in rel1.images if img.repository not in {i.repository for i in rel2.images}]
        assert dropped
        for img in dropped:  # warm the cache the way a pull would
            for digest in img.blobs:
                assert api.blob_exists(img.repository, digest)
        layout = StorageLayout(storage)
        for img in dropped:
            shutil.rmtree(layout.tags(img.repository))
        apply_gc(plan_gc(layout))  # WRONG on purpose: the registry is still running
        push_release(reg.host, rel1)  # the dropped images come back in a later release
    finally:
        mgr.remove_scope()
        mgr.close()
    both = imagelist.parse_text(rel1.list_text() + rel2.list_text())
    report = verify_storage(StorageLayout(storage), both)
    # upload sessions are normal in a live registry's tree (GC removes them from a package)
    problems = [p for p in report.problems if p.kind is not ProblemKind.UPLOADS]
    if blob_cache:
        # the stale cache said "present": blobs were skipped, manifests point at nothing
        assert {p.kind for p in problems} & {ProblemKind.MISSING_BLOB, ProblemKind.MISSING_LINK}
        assert any(img.repository in str(p) for p in problems for img in dropped)
    else:
        assert problems == [], report.summary()
