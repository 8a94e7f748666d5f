"""Package sync without a registry (`package_sync: files`) gives the package a registry gives.

Every history is built twice, on two work dirs, through the whole flow: once with manifests PUT
through a package registry, once with links written from the archive's records. The tarball is
a deterministic function of the package tree (every path, every byte), so equal sha256s mean
equal packages; verify passes on both. Histories: sample release 1, then release 2 on top
(changed, dropped and added images, a manifest list and an OCI index with untagged children,
nested names), release 2 with every line pinned (`repo:tag@sha256:`), and a list of digest-only
lines.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from layover import imagelist
from layover.storage.verify import verify_tarball
from tests.integration.flow_requests import release_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_files_and_registry_give_the_same_package_on_every_history(
    prefect_harness, ci_site, module_registries
):
    from flows.release import release as release_flow
    from layover.testing.push import push_release
    from layover.testing.releases import release

    site = ci_site("publish", scale=0.3)
    rel2 = release(2, scale=0.3)
    push_release(site.ci_host, rel2)
    lists = {"r1": site.images}
    lists["r2"] = site.base / "r2.list"
    lists["r2"].write_text(rel2.list_text())
    lists["r2-pinned"] = site.base / "r2-pinned.list"
    lists["r2-pinned"].write_text(rel2.list_text(pin_digests=True))
    lists["digests"] = site.base / "digests.list"
    lists["digests"].write_text("".join(f"{img.repository}@{img.digest}\n" for img in rel2.images[::3]))
    sums: dict[str, dict[str, str]] = {"files": {}, "registry": {}}
    trees: dict[str, str] = {}
    for mode in sums:
        work = site.base / f"work-{mode}"
        for name, lst in lists.items():
            out = site.base / "out" / mode / f"{name}.tar"
            report = release_flow(release_request(site.ci_host, lst, work, out, package_sync=mode))
            assert verify_tarball(out, imagelist.load(lst)).ok, (mode, name)
            sums[mode][name] = report.sha256
            trees[f"{mode}/{name}"] = _storage_digest(out)
    assert sums["files"] == sums["registry"]
    # pinning changes nothing in the registry storage: release 2 by tag and by tag@digest serve
    # one set of files (the contents member differs: it records the list's lines and its name)
    assert trees["files/r2"] == trees["files/r2-pinned"]
    assert len({sums["files"][n] for n in ("r1", "r2", "digests")}) == 3


def _storage_digest(tar: Path) -> str:
    """sha256 over the names and bytes of every member under docker/ (the registry's storage)."""
    h = hashlib.sha256()
    with tarfile.open(tar) as tf:
        for member in tf:
            if not member.name.startswith("docker/"):
                continue
            h.update(member.name.encode() + b"\0")
            f = tf.extractfile(member) if member.isfile() else None
            h.update(f.read() if f is not None else b"dir")
    return h.hexdigest()
