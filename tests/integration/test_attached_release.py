"""Signatures, attestations and SBOMs through the real release flow (issue 14), end to end.

One CI registry holds sample releases 1 and 2 with artifacts built by their published formats
(layover.testing.attached: cosign `.sig`/`.att`, an SPDX SBOM referrer with its referrers tag-schema
index, a signature on the SBOM). One work dir runs, in order, as a build host would:

    r1         release 1, --attached copy; base/java is unsigned
    require    release 1 again with --attached require: fails naming base/java, and only it
    (between)  release 2 pushed and signed; base/java (unchanged) signed now; base/debian
               (unchanged, signed) gets a second SBOM, so its tag-schema index is rewritten
    r2         release 2, --attached copy
    none       release 2, --attached none

Each package is extracted and served by a real registry; the checks read it over HTTP and on
disk, and compare with the CI registry as it was when that release ran. On the customer side,
release 2 installed as a delta on release 1 (`layover install`) and pushed into an empty registry
(`layover push`) serve the same attachments. Signatures are checked by
the independent verifier (layover.testing.attached: plain ECDSA over the payload, whose digest
must be the pulled manifest's), not by Layover's code.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover import imagelist
from layover.adapters.attachment_reader import RegistryAttachmentReader
from layover.adapters.registry_api import RegistryAPI
from layover.attached import AttachmentKind, ImageAttachments, discover
from layover.errors import MissingSignatureError
from layover.package import read_record
from layover.reference import Digest, ImageRef
from layover.report import ReleaseReport
from layover.storage.layout import StorageLayout
from layover.storage.verify import verify_tarball
from layover.testing.attached import (
    Signer,
    Subject,
    attach_all,
    cosign_signature,
    push_artifact,
    referrers_index,
    spdx_sbom,
    verify_cosign_signature,
)
from layover.testing.images import SampleImage
from layover.testing.push import push_release
from layover.testing.releases import Release, release
from tests.integration.flow_requests import release_request
from tests.integration.signatures import verify_found

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIGNER = Signer("release-signing-key")
UNSIGNED_IN_R1 = "base/java"
NEW_SBOM_IN_R2 = "base/debian"


@dataclass
class Scenario:
    ci: str
    rel: dict[int, Release]
    lists: dict[int, Path]
    out: Path
    reports: dict[str, ReleaseReport]
    # what the CI registry had attached to every listed image when each release ran
    expected: dict[str, dict[str, ImageAttachments]]
    orphans: set[tuple[str, Digest]]  # signatures in the CI that sign nothing listed
    require_error: MissingSignatureError | None = None


def _sign(api: RegistryAPI, img: SampleImage) -> None:
    attach_all(api, img.repository, img.digest, SIGNER, children=[c.digest for c in img.children])


def _discover_all(api: RegistryAPI, rel: Release) -> dict[str, ImageAttachments]:
    reader = RegistryAttachmentReader(api)
    return {str(img.ref): discover(reader, img.ref) for img in rel.images}


@pytest.fixture(scope="module")
def scenario(prefect_harness, module_registries, tmp_path_factory) -> Scenario:
    from flows.release import release as release_flow

    base = tmp_path_factory.mktemp("attached-release")
    (base / "ci").mkdir()
    ci = module_registries.start("ci", base / "ci").host
    rel = {n: release(n, scale=0.1) for n in (1, 2)}
    lists = {}
    for n in (1, 2):
        lists[n] = base / f"release-{n}.list"
        lists[n].write_text(rel[n].list_text())
    sc = Scenario(ci, rel, lists, base / "out", {}, {}, set())
    work = base / "work"
    api = RegistryAPI(ci)
    push_release(ci, rel[1])
    for img in rel[1].images:
        if img.repository != UNSIGNED_IN_R1:
            _sign(api, img)
    # Signatures that sign nothing listed: of a deleted image, in a listed repository.
    web = rel[1].image("apps/team-a/web")
    gone = cosign_signature(SIGNER, web.repository, Digest(hashlib.sha256(b"a deleted image").hexdigest()))
    push_artifact(api, gone)
    sc.orphans.add((gone.repository, gone.digest))

    sc.expected["r1"] = _discover_all(api, rel[1])
    sc.reports["r1"] = release_flow(release_request(ci, lists[1], work, sc.out / "r1.tar"))
    with pytest.raises(MissingSignatureError) as info:
        release_flow(release_request(ci, lists[1], work, sc.out / "require.tar", attached="require"))
    sc.require_error = info.value

    push_release(ci, rel[2])
    one = {(i.repository, i.digest) for i in rel[1].images}
    for img in rel[2].images:
        if (img.repository, img.digest) not in one:
            _sign(api, img)  # changed and new images come signed
    _sign(api, rel[2].image(UNSIGNED_IN_R1))  # an unchanged image signed since release 1
    debian = rel[2].image(NEW_SBOM_IN_R2)
    first = spdx_sbom(
        debian.repository, Subject(debian.digest, debian.media_type, len(debian.manifest)), package="debian"
    )
    second = spdx_sbom(
        debian.repository,
        Subject(debian.digest, debian.media_type, len(debian.manifest)),
        package="debian-extra",
        version="2.0",
    )
    push_artifact(api, second)
    push_artifact(api, referrers_index(debian.repository, debian.digest, [first, second]))
    sc.expected["r2"] = _discover_all(api, rel[2])
    sc.reports["r2"] = release_flow(release_request(ci, lists[2], work, sc.out / "r2.tar"))
    sc.reports["none"] = release_flow(
        release_request(ci, lists[2], work, sc.out / "none.tar", attached="none")
    )
    api.close()
    return sc


@pytest.fixture(scope="module")
def served(scenario, module_registries, tmp_path_factory):
    """name -> (host of a registry serving the extracted package, its storage dir)."""
    out = {}
    for name in ("r1", "r2", "none"):
        root = tmp_path_factory.mktemp(f"extracted-{name}")
        subprocess.run(["tar", "-xf", str(scenario.out / f"{name}.tar"), "-C", str(root)], check=True)
        out[name] = (module_registries.start(f"pkg-{name}", root, read_only=True).host, root)
    return out


def _which(name: str) -> int:
    return 1 if name == "r1" else 2


# --- what is in the package ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["r1", "r2"])
def test_every_listed_image_carries_exactly_the_sources_attachments(scenario, served, name):
    host, _ = served[name]
    with RegistryAPI(host) as pkg:
        reader = RegistryAttachmentReader(pkg)
        for img in scenario.rel[_which(name)].images:
            want = scenario.expected[name][str(img.ref)]
            got = discover(reader, img.ref)
            assert got.digest == img.digest
            assert got.digests == want.digests, img.ref  # every artifact's digest is the source's
            assert got.tags == want.tags, img.ref
            assert got.counts == want.counts and got.problems == ()


@pytest.mark.parametrize("name", ["r1", "r2"])
def test_every_signature_verifies_with_the_public_key(scenario, served, name):
    host, _ = served[name]
    with RegistryAPI(host) as pkg:
        reader = RegistryAttachmentReader(pkg)
        for img in scenario.rel[_which(name)].images:
            found = discover(reader, img.ref)
            if name == "r1" and img.repository == UNSIGNED_IN_R1:
                assert found.counts.total == 0
                continue
            assert found.repository == img.repository
            # each subject as pulled from the package
            verified = {
                (a.kind, v.subject)
                for a, result in verify_found(SIGNER.public_key_pem, pkg, found)
                for v in result
            }
            # the image itself, each platform of an index, and the attestation on the image
            assert (AttachmentKind.SIGNATURE, img.digest) in verified, img.ref
            assert {(AttachmentKind.SIGNATURE, c.digest) for c in img.children} <= verified
            assert (AttachmentKind.ATTESTATION, img.digest) in verified


def _on_disk(root: Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str]]:
    """(repository, tag), (repository, manifest hex) and blob hex as the files say, read without
    Layover's code beyond the layout's paths."""
    layout = StorageLayout(root)
    tags, revisions = set(), set()
    for repo in layout.repository_names():
        for tag in os.listdir(layout.tags(repo)) if layout.tags(repo).is_dir() else ():
            tags.add((repo, tag))
        for hex_ in os.listdir(layout.revisions(repo)) if layout.revisions(repo).is_dir() else ():
            revisions.add((repo, hex_))
    blobs = {p.parent.name for p in layout.blobs.rglob("data")}
    return tags, revisions, blobs


def _expected_tree(api: RegistryAPI, rel: Release, attached: dict[str, ImageAttachments] | None):
    """What a package of `rel` must hold, computed from the CI registry with plain json."""
    tags, revisions, blobs = set(), set(), set()

    def manifest_tree(repo: str, digest: str) -> None:
        doc = json.loads(api.manifest(repo, Digest.parse(digest)).data)
        revisions.add((repo, digest[7:]))
        blobs.add(digest[7:])
        for child in doc.get("manifests", []):
            manifest_tree(repo, child["digest"])
        for b in [doc["config"], *doc["layers"]] if "config" in doc else []:
            blobs.add(b["digest"][7:])

    for img in rel.images:
        tags.add((img.repository, img.tag))
        manifest_tree(img.repository, str(img.digest))
        found = (attached or {}).get(str(img.ref))
        for tag in found.tags if found else ():
            tags.add((img.repository, tag))
        for d in found.digests if found else ():
            manifest_tree(img.repository, str(d))
    return tags, revisions, blobs


@pytest.mark.parametrize("name", ["r1", "r2", "none"])
def test_nothing_unattached_or_unlisted_is_in_the_package(scenario, served, name):
    _, root = served[name]
    with RegistryAPI(scenario.ci) as ci:
        want = _expected_tree(
            ci, scenario.rel[_which(name)], None if name == "none" else scenario.expected[name]
        )
    got = _on_disk(root)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2] == want[2]
    for repo, digest in scenario.orphans:
        assert (repo, digest.hex) not in got[1]


def test_release_2_picks_up_what_was_attached_to_unchanged_images(scenario, served):
    host, _ = served["r2"]
    java, debian = scenario.rel[2].image(UNSIGNED_IN_R1), scenario.rel[2].image(NEW_SBOM_IN_R2)
    assert java.digest == scenario.rel[1].image(UNSIGNED_IN_R1).digest  # unchanged: archive sync skipped it
    assert debian.digest == scenario.rel[1].image(NEW_SBOM_IN_R2).digest
    with RegistryAPI(host) as pkg:
        reader = RegistryAttachmentReader(pkg)
        assert discover(reader, java.ref).signed
        sboms = discover(reader, debian.ref).counts.sboms
        [index] = discover(reader, debian.ref).referrers_indexes
    assert sboms == 2
    r1_index = scenario.expected["r1"][str(debian.ref)].referrers_indexes[0]
    assert index.digest != r1_index.digest and len(index.referrers) == 2
    # ...through the early path: every image archive sync skipped (release 1's tag and digest,
    # java and debian among them) was discovered while archive sync copied the others
    r1 = {(i.repository, i.tag, i.digest) for i in scenario.rel[1].images}
    unchanged = [i for i in scenario.rel[2].images if (i.repository, i.tag, i.digest) in r1]
    assert java in unchanged and debian in unchanged and len(unchanged) < len(scenario.rel[2].images)
    stage = next(s for s in scenario.reports["r2"].stages if s.name == "attached sync")
    assert f"({len(unchanged)} image(s) in " in stage.detail and "alongside archive sync" in stage.detail


def test_require_fails_naming_every_unsigned_image(scenario):
    err = scenario.require_error
    assert err is not None
    java = scenario.rel[1].image(UNSIGNED_IN_R1)
    lines = str(err).splitlines()
    assert lines[0].startswith("--attached require: 1 listed image(s) have no signature")
    assert lines[1:] == [f"{java.ref} (sha256:{java.digest.hex[:12]}): no signature"]
    assert not (scenario.out / "require.tar").exists()


def test_none_ships_no_attached_artifacts(scenario, served):
    _, root = served["none"]
    listed = imagelist.load(scenario.lists[2])
    assert verify_tarball(scenario.out / "none.tar", listed).ok  # exactly the list, nothing else
    tags, _, _ = _on_disk(root)
    assert tags == {(i.repository, i.tag) for i in scenario.rel[2].images}
    report = scenario.reports["none"]
    assert report.attached == ()
    stage = next(s for s in report.stages if s.name == "attached sync")
    assert "--attached none" in stage.detail


def test_the_report_counts_attachments_per_image(scenario):
    for name in ("r1", "r2"):
        report = scenario.reports[name]
        rows = {r.image: r for r in report.attached}
        assert list(rows) == [str(i.ref) for i in scenario.rel[_which(name)].images]
        for ref, found in scenario.expected[name].items():
            assert rows[ref].counts == found.counts, ref
            assert rows[ref].digest == str(found.digest)
        doc = json.loads((scenario.out / f"{name}.tar.json").read_text())
        assert [r["image"] for r in doc["attached"]] == list(rows)
        assert "attached to" in report.to_text()
    r2 = scenario.reports["r2"]
    debian = scenario.rel[2].image(NEW_SBOM_IN_R2)
    assert rows[str(debian.ref)].counts.sboms == 2
    stage = next(s for s in r2.stages if s.name == "attached sync")
    assert stage.images == len(scenario.rel[2].images) and "request(s)" in stage.detail


def test_the_package_list_verifies_from_the_tarball(scenario):
    """The tarball checked on its own: the listed images plus the attachments as refs pinned by
    digest (what verify in the flow checked), nothing else."""
    rows = scenario.reports["r2"].attached
    refs = [ImageRef.parse(r) for row in rows for r in row.references]
    text = scenario.lists[2].read_text() + "".join(f"{r}\n" for r in refs)
    assert verify_tarball(scenario.out / "r2.tar", imagelist.parse_text(text)).ok


def _verify(package: Path, images: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layover.cli", "verify", str(package), "--images", str(images), *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_verify_with_the_release_list_accepts_the_recorded_attachments(scenario):
    """The customer's check: `layover verify PACKAGE --images images.list` with the list the
    release was made from. The attachments its contents file records are not "extra"."""
    p = _verify(scenario.out / "r2.tar", scenario.lists[2], "--json")
    assert p.returncode == 0, p.stdout
    doc = json.loads(p.stdout)
    contents = read_record(scenario.out / "r2.tar").contents
    listed = {str(r) for r in imagelist.load(scenario.lists[2]).refs}
    assert doc["ok"] and doc["attached"] == len([i for i in contents.images if i.reference not in listed]) > 0


def test_verify_still_flags_an_attachment_tag_the_contents_file_does_not_record(scenario, tmp_path):
    """A cosign-looking tag added to the package after it was made (a signature of a listed
    image, but not one the release recorded) is an extra tag."""
    java = scenario.rel[2].image(UNSIGNED_IN_R1)
    tag = f"sha256-{'0' * 64}.sig"
    copy = tmp_path / "r2-plus.tar"
    shutil.copy(scenario.out / "r2.tar", copy)
    layout = StorageLayout(Path("."))
    link = layout.tag_current_link(java.repository, tag).as_posix()
    with tarfile.open(copy, "a") as tf:
        data = f"{java.digest}".encode()
        info = tarfile.TarInfo(link)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    p = _verify(copy, scenario.lists[2], "--json")
    assert p.returncode == 1, p.stdout
    problems = json.loads(p.stdout)["problems"]
    assert [(x["kind"], x["repo"]) for x in problems] == [("extra-tag", java.repository)]
    assert tag in problems[0]["message"]


# --- the customer side: contents file, delta + install, push ------------------------------------
def _discovered_everywhere(host: str, scenario: Scenario, name: str) -> None:
    """Discovery at `host` finds, for every listed image of the release, exactly what the CI had."""
    with RegistryAPI(host) as api:
        reader = RegistryAttachmentReader(api)
        for img in scenario.rel[_which(name)].images:
            want = scenario.expected[name][str(img.ref)]
            got = discover(reader, img.ref)
            assert (got.digests, got.tags) == (want.digests, want.tags), img.ref


def test_the_contents_file_names_each_images_attachments(scenario):
    contents = read_record(scenario.out / "r2.tar").contents
    by_ref = {i.reference: i for i in contents.images}
    expected = scenario.expected["r2"]
    for img in scenario.rel[2].images:
        want = expected[str(img.ref)]
        assert {a.digest for a in by_ref[str(img.ref)].attached} == {str(a.digest) for a in want.artifacts}
    # every attachment tag is an image of the package: what install, push and deltas act on
    tags = {(i.repository, i.tag) for i in contents.images if i.tag and i.tag.startswith("sha256-")}
    assert tags == {(f.repository, t) for f in expected.values() for t in f.tags}
    assert contents.totals.attached == sum(len(f.artifacts) for f in expected.values())


def test_a_delta_installed_on_release_1_serves_release_2s_attachments(scenario, module_registries, tmp_path):
    from layover.delta import write_delta
    from layover.install import InstallOptions, install

    delta = tmp_path / "r2.from-r1.tar"
    write_delta(scenario.out / "r2.tar", read_record(scenario.out / "r1.tar"), delta)
    root = tmp_path / "site"
    root.mkdir()
    install(scenario.out / "r1.tar", root, InstallOptions())
    install(delta, root, InstallOptions(prune=True))
    host = module_registries.start("site", root, read_only=True).host
    _discovered_everywhere(host, scenario, "r2")
    java = scenario.rel[2].image(UNSIGNED_IN_R1)
    with RegistryAPI(host) as api:
        sig = discover(RegistryAttachmentReader(api), java.ref).tags[f"sha256-{java.digest.hex}.sig"]
        verify_cosign_signature(
            SIGNER.public_key_pem,
            api.manifest(java.repository, sig).data,
            functools.partial(api.get_blob, java.repository),
            api.manifest(java.repository, java.digest).data,
        )


def test_push_carries_the_attachments_into_an_empty_registry(scenario, module_registries, tmp_path):
    (tmp_path / "target").mkdir()
    host = module_registries.start("push-target", tmp_path / "target").host
    p = subprocess.run(
        [sys.executable, "-m", "layover.cli", "push", str(scenario.out / "r2.tar"), "--to", host,
         "--no-dest-tls-verify"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    _discovered_everywhere(host, scenario, "r2")


def _push(package: Path, to: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layover.cli", "push", str(package), "--to", to, "--no-dest-tls-verify", *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _customer_sbom(api: RegistryAPI, repository: str, image: Digest):
    """The customer attaches their own SBOM to an image in their registry, as oras does on a
    registry without the referrers API: the referrer by digest, then the tag-schema index
    rewritten with it appended."""
    fetched = api.manifest(repository, image)
    sbom = spdx_sbom(
        repository, Subject(image, fetched.media_type, len(fetched.data)), package="customer-scan"
    )
    push_artifact(api, sbom)
    tag = f"sha256-{image.hex}"
    index = json.loads(api.manifest(repository, tag).data)
    index["manifests"].append(sbom.referrer_descriptor())
    api.put_manifest(repository, tag, json.dumps(index).encode(), index["mediaType"])
    return sbom


def test_push_of_release_2_onto_release_1_keeps_every_referrer_of_both(scenario, module_registries, tmp_path):
    """Release 2 rewrote base/debian's referrers index (a second SBOM) and the customer added an
    SBOM of their own to it since release 1: the default --on-existing-tag fail does not stop at
    the index, and the target's index ends up listing the package's referrers and the customer's."""
    (tmp_path / "target").mkdir()
    host = module_registries.start("push-onto-r1", tmp_path / "target").host
    assert _push(scenario.out / "r1.tar", host).returncode == 0
    debian = scenario.rel[2].image(NEW_SBOM_IN_R2)
    with RegistryAPI(host) as api:
        mine = _customer_sbom(api, debian.repository, debian.digest)
    report_file = tmp_path / "report.json"
    p = _push(scenario.out / "r2.tar", host, "--report", str(report_file))
    assert p.returncode == 0, p.stderr
    with RegistryAPI(host) as api:
        reader = RegistryAttachmentReader(api)
        for img in scenario.rel[2].images:
            want = scenario.expected["r2"][str(img.ref)]
            got = discover(reader, img.ref)
            assert got.problems == ()
            if img.repository != debian.repository:
                assert (got.digests, got.tags) == (want.digests, want.tags), img.ref
        found = discover(reader, debian.ref)
    want = scenario.expected["r2"][str(debian.ref)]
    assert {a.digest for a in found.artifacts} == {a.digest for a in want.artifacts} | {mine.digest}
    assert set(found.tags) == set(want.tags)
    [index], [package_index] = found.referrers_indexes, want.referrers_indexes
    assert index.referrers == (*package_index.referrers, mine.digest)  # the package's, then the target's
    assert index.digest != package_index.digest  # the union is a new index
    assert found.counts.sboms == 3
    images = {i["target"]: i for i in json.loads(report_file.read_text())["images"]}
    merged = images[f"{debian.repository}:sha256-{debian.digest.hex}"]
    assert merged["action"] == "merge" and merged["written"] == str(index.digest)
    assert merged["previous"] not in (None, str(index.digest), str(package_index.digest))


def test_push_onto_a_target_whose_cosign_signature_differs_is_a_conflict(
    scenario, module_registries, tmp_path
):
    """The customer signed base/debian with their own key since release 1 (cosign replaced the
    .sig): release 2's .sig lacks that signature, so moving the tag would drop it. That is a
    real conflict: refused by default, naming the tag."""
    (tmp_path / "target").mkdir()
    host = module_registries.start("push-sig-conflict", tmp_path / "target").host
    assert _push(scenario.out / "r1.tar", host).returncode == 0
    debian = scenario.rel[2].image(NEW_SBOM_IN_R2)
    with RegistryAPI(host) as api:
        theirs = push_artifact(
            api, cosign_signature(Signer("customer-key"), debian.repository, debian.digest)
        )
    p = _push(scenario.out / "r2.tar", host)
    assert p.returncode == 3, p.stderr
    assert f"{debian.repository}:sha256-{debian.digest.hex}.sig is {theirs}" in p.stderr
    assert "nothing was pushed" in p.stderr


@pytest.fixture(scope="module")
def delta_r2(scenario, tmp_path_factory) -> Path:
    from layover.delta import write_delta

    out = tmp_path_factory.mktemp("delta") / "r2.from-r1.tar"
    write_delta(scenario.out / "r2.tar", read_record(scenario.out / "r1.tar"), out)
    return out


def test_verify_of_a_delta_checks_what_it_carries_and_says_what_it_cannot(scenario, delta_r2):
    """A delta lacks its base's blobs by design: verify checks its manifests and links, that
    every blob it lacks is one its contents file declares assumed, and says what it left unchecked."""
    contents = read_record(delta_r2, need_sha256=False).contents
    assert contents.delta is not None and contents.assumed
    p = _verify(delta_r2, scenario.lists[2], "--json")
    assert p.returncode == 0, p.stdout
    doc = json.loads(p.stdout)
    assert doc["kind"] == "delta" and doc["assumed"] == len(contents.assumed)
    text = _verify(delta_r2, scenario.lists[2])
    assert text.returncode == 0, text.stdout
    assert f"{len(contents.assumed)} blob(s) its base provides" in text.stdout
    assert "layover install" in text.stdout


def test_verify_of_a_delta_missing_a_carried_blob_names_it(scenario, delta_r2, tmp_path):
    """A blob the delta should carry (not declared assumed) that is not in it is damage."""
    contents = read_record(delta_r2, need_sha256=False).contents
    carried = sorted(set(contents.blob_sizes) - set(contents.assumed))
    layer = next(
        h for h in carried if contents.blob_sizes[h] > 4096
    )  # a layer: its absence must show up as a missing blob
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(delta_r2) as src, tarfile.open(damaged, "w") as dst:
        for m in src:
            if m.name.endswith(f"/{layer}/data") or m.name.endswith(f"/{layer}"):
                continue
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    p = _verify(damaged, scenario.lists[2], "--json")
    assert p.returncode == 1, p.stdout
    problems = json.loads(p.stdout)["problems"]
    assert {x["kind"] for x in problems} == {"missing-blob"}
    assert all(layer in x["message"] for x in problems)
