"""A damaged archive: a truncated layer, a manifest that is not JSON, a garbage link file.

Blobs that do not hash to their names heal inside the run that finds them: moved into
<work_dir>/quarantine/, fetched again from the source, verified again; the tarball is the one an
undamaged archive gives, and the archive holds the good bytes again. A blob the source lost
fails the run with one line naming the blob, the images that need it and what to do, and no
tarball. A garbage link file fails the run and is named with the fix, `layover repair-archive`,
which moves it to the quarantine too (the same code as the heal).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from layover.adapters import overlay
from layover.errors import LayoverError, StorageError
from layover.reference import Digest
from layover.settings import ReleaseRequest
from layover.storage.layout import StorageLayout
from layover.testing.push import push_release
from layover.testing.releases import release
from layover.workdir import WorkDir
from tests.integration.flow_requests import release_request
from tests.snapshot import assert_unchanged, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAYOVER = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "layover")


def _request(ci: str, images: Path, work: Path, output: Path) -> ReleaseRequest:
    return release_request(ci, images, work, output, copy_retries=1)


@pytest.fixture
def site(prefect_harness, module_registries, tmp_path, request):
    """A CI registry of this test's own (a test may damage it) holding release 1, and a first,
    undamaged run: (ci storage, release, list, work dir, out dir, report)."""
    from flows.release import release as release_flow

    (tmp_path / "ci").mkdir()
    ci = module_registries.start(f"ci-{request.node.name[:40]}", tmp_path / "ci")
    rel = release(1, scale=0.3)
    push_release(ci.host, rel)
    images = tmp_path / "release.list"
    images.write_text(rel.list_text())
    work, out = tmp_path / "work", tmp_path / "out"
    good = release_flow(_request(ci.host, images, work, out / "good.tar"))
    yield ci, tmp_path / "ci", rel, images, work, out, good
    module_registries.stop(ci)


def _truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


def _nothing_left(work: Path, docker_client) -> None:
    wd = WorkDir.at(work)
    assert not overlay.is_mounted(wd.merged)
    assert not docker_client.containers.list(all=True, filters={"label": [f"layover.scope={wd.scope}"]})


def test_a_truncated_layer_alone_heals_in_the_run_that_finds_it(site, docker_client):
    from flows.release import release as release_flow

    ci, _, rel, images, work, out, good = site
    archive = StorageLayout(work / "lower")
    before = snapshot(work / "lower")
    debian = rel.image("base/debian")
    layer = Digest.parse(json.loads(debian.manifest)["layers"][-1]["digest"])
    damaged = _truncate(archive.blob_data(layer))

    healed = release_flow(_request(ci.host, images, work, out / "healed.tar"))

    assert healed.sha256 == good.sha256
    heal = [s for s in healed.stages if s.name == "archive heal"]
    assert len(heal) == 1 and heal[0].blobs_copied == 1, [s.name for s in healed.stages]
    assert archive.blob_data(layer).read_bytes() == rel.blobs[layer]
    # the damaged bytes are kept, at the blob's place in the tree, under quarantine/<time>/
    kept = list(
        (work / "quarantine").glob(f"*/docker/registry/v2/blobs/sha256/{layer.hex[:2]}/{layer.hex}/data")
    )
    assert [p.read_bytes() for p in kept] == [damaged]
    # the archive holds what it held before the damage: the same files, the same bytes. What the
    # upload of the healed blob wrote is new (its data, its directories, the same link bytes
    # written again, the upload dir's mtime); everything else is untouched, metadata included.
    after = snapshot(work / "lower")
    prefix = str(archive.blob_dir(layer).parent.relative_to(work / "lower")) + "/"
    keep = {p for p in before if layer.hex not in p and p != prefix and not p.endswith("/_uploads/")}
    assert_unchanged({p: before[p] for p in keep}, {p: after[p] for p in keep if p in after})
    assert {p: e.sha256 for p, e in after.items()} == {p: e.sha256 for p, e in before.items()}
    _nothing_left(work, docker_client)


def test_a_damaged_blob_the_source_lost_fails_naming_it_and_ships_nothing(site, docker_client):
    from flows.release import release as release_flow

    ci, ci_storage, rel, images, work, out, _ = site
    archive = StorageLayout(work / "lower")
    debian = rel.image("base/debian")
    layer = Digest.parse(json.loads(debian.manifest)["layers"][-1]["digest"])
    _truncate(archive.blob_data(layer))
    # the source lost it too (a CI registry's own GC, a disk restored from an old backup)
    shutil.rmtree(StorageLayout(ci_storage).blob_dir(layer))
    needing = sorted(f"{i.repository}:{i.tag}" for i in rel.images if layer in i.blobs)
    assert needing

    bad = out / "bad.tar"
    with pytest.raises(StorageError) as info:
        release_flow(_request(ci.host, images, work, bad))
    message = str(info.value)
    print(f"\n{message}")
    assert "\n" not in message
    assert str(layer) in message and "no longer has it" in message
    assert all(image in message for image in needing), needing
    assert "quarantine" in message and "nothing shipped" in message
    assert not bad.exists() and not list(out.glob(".bad.tar.*"))
    assert list((work / "quarantine").glob(f"*/docker/registry/v2/blobs/sha256/*/{layer.hex}/data"))
    _nothing_left(work, docker_client)


def test_a_garbage_link_is_named_with_the_fix_and_repair_archive_quarantines_it(site, docker_client):
    from flows.release import release as release_flow

    ci, _, rel, images, work, out, good = site
    archive = StorageLayout(work / "lower")
    web, lib = rel.image("apps/team-a/web"), rel.image("apps/team-a/lib")
    config = Digest.parse(json.loads(lib.manifest)["config"]["digest"])
    garbage = archive.layer_link(lib.repository, config)
    garbage.write_bytes(b"\x00garbage\n")
    not_json = archive.blob_data(web.digest)
    not_json.write_bytes(b"<html>502 Bad Gateway</html>")

    dry = subprocess.run(
        [LAYOVER, "repair-archive", str(work), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 1, dry.stdout + dry.stderr
    for path in (garbage, not_json):
        assert str(path) in dry.stdout, dry.stdout

    # The garbage link fails the run, named, with the fix; the manifest heals in the same run.
    bad_out = out / "bad.tar"
    with pytest.raises(LayoverError) as info:
        release_flow(_request(ci.host, images, work, bad_out))
    assert _named(garbage, work, str(info.value)), str(info.value)
    assert "layover repair-archive" in str(info.value)
    assert not bad_out.exists() and not list(out.glob(".bad.tar.*"))
    _nothing_left(work, docker_client)
    assert not_json.read_bytes() == web.manifest

    fix = subprocess.run([LAYOVER, "repair-archive", str(work)], capture_output=True, text=True, timeout=120)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    assert "moved 1 damaged entries" in fix.stdout and "quarantine" in fix.stdout, fix.stdout
    assert [p.read_bytes() for p in (work / "quarantine").rglob("link")] == [b"\x00garbage\n"]
    again = release_flow(_request(ci.host, images, work, out / "repaired.tar"))
    assert again.sha256 == good.sha256
    clean = subprocess.run(
        [LAYOVER, "repair-archive", str(work), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert clean.returncode == 0 and ", 0 damaged" in clean.stdout, clean.stdout


def test_a_manifest_that_is_not_json_heals_too(site, docker_client):
    """Found by package sync (which hashes every manifest it links), not by verify."""
    from flows.release import release as release_flow

    ci, _, rel, images, work, out, good = site
    archive = StorageLayout(work / "lower")
    web = rel.image("apps/team-a/web")
    archive.blob_data(web.digest).write_bytes(b"<html>502 Bad Gateway</html>")
    healed = release_flow(_request(ci.host, images, work, out / "healed.tar"))
    assert healed.sha256 == good.sha256
    assert [s.name for s in healed.stages].count("archive heal") == 1
    assert archive.blob_data(web.digest).read_bytes() == web.manifest
    _nothing_left(work, docker_client)


def _named(path: Path, work: Path, message: str) -> bool:
    """The error names the file: by its archive path, or by the same path in the merged view."""
    rel = path.relative_to(work / "lower")
    return str(path) in message or str(work / "merged" / rel) in message or str(rel) in message
