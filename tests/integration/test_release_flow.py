"""The release flow end to end, twice, on real registries, skopeo, overlayfs and Prefect.

One CI registry holds sample releases 1 and 2; one work dir carries the archive from release 1
into release 2, as on a build host. The scenario runs once per module (it is the expensive part)
and each test checks one promise against what it left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover import imagelist
from layover.adapters.registry_api import RegistryAPI
from layover.errors import ImageListError, LayoverError
from layover.storage.layout import StorageLayout
from layover.storage.verify import verify_tarball
from layover.testing.push import push_release
from layover.testing.releases import Release, release
from tests.integration.flow_requests import release_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tree_hash(root: Path) -> dict[str, str]:
    """Path -> sha256 of content (dirs marked), for byte-identity checks of the archive."""
    out: dict[str, str] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@dataclass
class Scenario:
    ci_host: str
    work: Path
    out: Path
    rel: dict[int, Release]
    lists: dict[int, Path]
    reports: dict[str, object]
    lower_after: dict[str, dict[str, str]]
    upper_blob_files: dict[int, set[str]]


def _upper_blob_files(work: Path) -> set[str]:
    blobs = StorageLayout(work / "upper").blobs
    return {p.parent.name for p in blobs.rglob("data")} if blobs.exists() else set()


@pytest.fixture(scope="module")
def scenario(prefect_harness, module_registries, tmp_path_factory) -> Scenario:
    from flows.release import release as release_flow

    base = tmp_path_factory.mktemp("release-flow")
    (base / "ci").mkdir()
    ci = module_registries.start("ci", base / "ci")
    rel = {n: release(n) for n in (1, 2)}
    lists = {}
    for n in (1, 2):
        push_release(ci.host, rel[n])
        lists[n] = base / f"release-{n}.list"
        lists[n].write_text(rel[n].list_text())
    sc = Scenario(ci.host, base / "work", base / "out", rel, lists, {}, {}, {})
    for name, n in (("r1", 1), ("r2", 2), ("r2-again", 2)):
        out = sc.out / f"{name}.tar"
        sc.reports[name] = release_flow(release_request(ci.host, lists[n], sc.work, out))
        sc.lower_after[name] = tree_hash(sc.work / "lower")
        sc.upper_blob_files[name] = _upper_blob_files(sc.work)
    return sc


def _new_blobs(sc: Scenario) -> set[str]:
    one = {d.hex for d in sc.rel[1].blobs}
    return {d.hex for d in sc.rel[2].blobs} - one


def _stage(report, name):
    return next(s for s in report.stages if s.name == name)


def test_release_2_copies_only_new_blobs_into_the_archive(scenario):
    r1, r2 = scenario.reports["r1"], scenario.reports["r2"]
    # skopeo's view: release 1 copies everything that is a blob (configs and layers) ...
    assert _stage(r1, "archive sync").blobs_copied > 0
    # ... release 2 only what release 2 added. Manifests are not "blobs" in skopeo's count.
    manifests2 = {m.digest.hex for img in scenario.rel[2].images for m in img.manifests}
    new_anywhere = _new_blobs(scenario) - manifests2
    # A blob the archive has, but not in this repository, may be uploaded again or mounted
    # across repositories, depending on skopeo's blob-info cache: that is the upper bound.
    in_repo_1 = {(i.repository, d.hex) for i in scenario.rel[1].images for d in i.blobs}
    new_to_repo = {
        d.hex for i in scenario.rel[2].images for d in i.blobs if (i.repository, d.hex) not in in_repo_1
    } - manifests2
    copied = _stage(r2, "archive sync").blobs_copied
    assert len(new_anywhere) <= copied <= len(new_to_repo), (copied, new_anywhere, new_to_repo)
    assert _stage(scenario.reports["r2-again"], "archive sync").blobs_copied == 0


def test_package_sync_uploads_no_blob(scenario):
    """Registry-side evidence: blob data written during a run lands in `upper`; only manifests may."""
    for name, n in (("r1", 1), ("r2", 2), ("r2-again", 2)):
        assert _stage(scenario.reports[name], "package sync").blobs_copied == 0
        manifests = {m.digest.hex for img in scenario.rel[n].images for m in img.manifests}
        assert scenario.upper_blob_files[name] <= manifests, name


def test_archive_is_additive_and_untouched_by_later_stages(scenario):
    before, after = scenario.lower_after["r1"], scenario.lower_after["r2"]
    # release 2 kept every byte of release 1's history ...
    assert {k: after[k] for k in before} == before
    # ... and a run whose archive sync had nothing to add left the archive byte-identical,
    # although overlay reset, pruning, package sync, GC and tar all ran over it.
    assert scenario.lower_after["r2-again"] == after


def test_same_release_same_tarball(scenario):
    r2, again = scenario.reports["r2"], scenario.reports["r2-again"]
    assert r2.sha256 == again.sha256
    a = (scenario.out / "r2.tar").read_bytes()
    assert hashlib.sha256(a).hexdigest() == r2.sha256
    side = (scenario.out / "r2.tar.sha256").read_text().split()
    assert side[0] == r2.sha256


def test_tarball_holds_exactly_the_list_and_serves_it(scenario, module_registries, tmp_path):
    rel2 = scenario.rel[2]
    tarball = scenario.out / "r2.tar"
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
        assert names[0] == "layover/contents.json", "the contents file leads the tarball"
        assert all(n == "docker" or n.startswith("docker/") for n in names[1:])
        assert all(m.isfile() or m.isdir() for m in tf.getmembers())
    assert verify_tarball(tarball, imagelist.load(scenario.lists[2])).ok
    root = tmp_path / "extracted"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
    served = module_registries.start("extracted", root, read_only=True)
    ci = RegistryAPI(scenario.ci_host)
    pkg = RegistryAPI(served.host)
    listed = {img.repository for img in rel2.images}
    assert set(pkg.catalog()) == listed
    dropped = {img.repository for img in scenario.rel[1].images} - listed
    assert dropped, "the sample release 2 must drop images"
    for img in rel2.images:
        assert set(pkg.tags(img.repository)) == {img.tag}
        assert pkg.manifest(img.repository, img.tag).digest == ci.manifest(img.repository, img.tag).digest
        # a real pull of every platform (multi-arch children included), digests preserved
        dest = tmp_path / "pull" / img.repository.replace("/", "_")
        dest.parent.mkdir(exist_ok=True)
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                f"docker://{served.host}/{img.repository}:{img.tag}",
                f"dir:{dest}",
            ],
            check=True,
            capture_output=True,
        )
        for m in img.manifests:  # index children are untagged: they must survive GC anyway
            assert pkg.manifest_exists(img.repository, m.digest)


def test_bad_list_fails_before_any_copy(prefect_harness, tmp_path):
    from flows.release import release as release_flow

    bad = tmp_path / "bad.list"
    bad.write_text("ok/a:1\nBad/Name:1\nno-tag\nok/b:1@sha256:123\n")
    work = tmp_path / "work"
    with pytest.raises(ImageListError) as info:
        release_flow(release_request("127.0.0.1:9", bad, work, tmp_path / "x.tar"))
    assert [n for n, _, _ in info.value.problems] == [2, 3, 4]
    assert not work.exists(), "nothing may be created before the list is valid"


def test_missing_image_fails_naming_it_and_keeps_the_archive(scenario, prefect_harness, tmp_path):
    from flows.release import release as release_flow

    lst = tmp_path / "missing.list"
    good = scenario.rel[2].images[0]
    lst.write_text(f"{good.repository}:{good.tag}\nno/such-image:1\n")
    before = tree_hash(scenario.work / "lower")
    out = tmp_path / "never.tar"
    with pytest.raises(LayoverError) as info:
        release_flow(release_request(scenario.ci_host, lst, scenario.work, out))
    assert "no/such-image:1" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".never.tar*"))  # no tarball, no partial
    failed = json.loads(out.with_name("never.tar.failed.json").read_text())
    assert (failed["status"], failed["failed_stage"]) == ("failed", "archive sync")
    after = tree_hash(scenario.work / "lower")
    assert {k: after[k] for k in before} == before
    shutil.rmtree(tmp_path / "never.tar", ignore_errors=True)
