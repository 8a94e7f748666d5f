"""A corrupt archive: a truncated blob, a garbage link file and a manifest that is not JSON.

Caught before anything ships (no tarball, the file named), and repaired the documented way:
`layover repair-archive WORK_DIR` removes the damaged files, the next run re-fetches them from
the source and gives the same tarball as before the damage.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from layover.errors import LayoverError
from layover.reference import Digest
from layover.settings import ListFromFile, ReleaseRequest
from layover.storage.layout import StorageLayout
from layover.testing.push import push_release
from layover.testing.releases import release

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAYOVER = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "layover")


def _request(ci: str, images: Path, work: Path, output: Path) -> ReleaseRequest:
    return ReleaseRequest(images=ListFromFile(path=str(images)), source=ci, src_tls_verify=False,
                          work_dir=work, output=output, concurrency=4, copy_retries=1)


def test_corrupt_archive_is_caught_named_and_repaired_from_the_source(
    prefect_harness, module_registries, tmp_path
):
    from flows.release import release as release_flow

    (tmp_path / "ci").mkdir()
    ci = module_registries.start("ci", tmp_path / "ci")
    rel = release(1, scale=0.3)
    push_release(ci.host, rel)
    images = tmp_path / "release.list"
    images.write_text(rel.list_text())
    work, out = tmp_path / "work", tmp_path / "out"
    good = release_flow(_request(ci.host, images, work, out / "good.tar"))

    archive = StorageLayout(work / "lower")
    web, debian, lib = (rel.image(r) for r in ("apps/team-a/web", "base/debian", "apps/team-a/lib"))
    layer = Digest.parse(json.loads(debian.manifest)["layers"][-1]["digest"])
    truncated = archive.blob_data(layer)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    config = Digest.parse(json.loads(lib.manifest)["config"]["digest"])
    garbage = archive.layer_link(lib.repository, config)
    garbage.write_bytes(b"\x00garbage\n")
    not_json = archive.blob_data(web.digest)
    not_json.write_bytes(b"<html>502 Bad Gateway</html>")
    damaged = {truncated, garbage, not_json}

    dry = subprocess.run([LAYOVER, "repair-archive", str(work), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    for path in damaged:
        assert str(path) in dry.stdout, dry.stdout

    # The garbage link breaks archive sync (the archive registry answers 500): named, with the fix.
    bad_out = out / "bad.tar"
    with pytest.raises(LayoverError) as info:
        release_flow(_request(ci.host, images, work, bad_out))
    assert _named(garbage, work, str(info.value)), str(info.value)
    assert "layover repair-archive" in str(info.value)
    assert not bad_out.exists() and not list(out.glob(".bad.tar.*"))

    # With the link put right by hand, the blob and manifest damage is caught by verify.
    garbage.write_bytes(str(config).encode())
    with pytest.raises(LayoverError) as info:
        release_flow(_request(ci.host, images, work, bad_out))
    message = str(info.value)
    print(f"\n{message[:3000]}")
    named = [p for p in (truncated, not_json) if _named(p, work, message)]
    assert named, message
    assert not bad_out.exists() and not list(out.glob(".bad.tar.*"))

    fix = subprocess.run([LAYOVER, "repair-archive", str(work)], capture_output=True, text=True,
                         timeout=120)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    assert "removed 2 damaged" in fix.stdout
    again = release_flow(_request(ci.host, images, work, out / "repaired.tar"))
    assert again.sha256 == good.sha256
    clean = subprocess.run([LAYOVER, "repair-archive", str(work), "--dry-run"],
                           capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and ", 0 damaged" in clean.stdout, clean.stdout


def _named(path: Path, work: Path, message: str) -> bool:
    """The error names the file: by its archive path, or by the same path in the merged view."""
    rel = path.relative_to(work / "lower")
    return str(path) in message or str(work / "merged" / rel) in message or str(rel) in message
