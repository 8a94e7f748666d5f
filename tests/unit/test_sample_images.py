"""layover.testing.images: the one image generator; and the testing wing's place in the package."""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from layover.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from layover.reference import Digest
from layover.testing.images import (
    DOCKER,
    OCI,
    LayerWriter,
    Platform,
    image_config,
    layer_from_files,
    seeded_image,
)

REPO = Path(__file__).resolve().parents[2]


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


# --- seeded images -------------------------------------------------------------------------
def test_seeded_images_of_different_seeds_share_no_blob_and_one_seed_repeats_its_bytes() -> None:
    a = seeded_image("lib/a", "1", seed="one", layers=3)
    b = seeded_image("lib/a", "1", seed="two", layers=3)
    assert len(a.blobs) == 4  # three layers and a config
    assert not set(a.blobs) & set(b.blobs)
    assert a.digest != b.digest
    again = seeded_image("lib/a", "1", seed="one", layers=3)
    assert (again.manifest, dict(again.blobs)) == (a.manifest, dict(a.blobs))


def test_seeded_image_with_platforms_is_an_index_of_one_manifest_per_platform() -> None:
    img = seeded_image("multi/arch", "1.0", seed="s", platforms=3)
    assert img.is_index and img.media_type == OCI_INDEX
    index = json.loads(img.manifest)
    assert [d["digest"] for d in index["manifests"]] == [str(c.digest) for c in img.children]
    assert [d["platform"] for d in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "ppc64le", "os": "linux"},
    ]
    referenced: set[Digest] = set()
    for child in img.children:
        doc = child.json()
        assert child.media_type == doc["mediaType"] == OCI_MANIFEST
        config = json.loads(img.blobs[Digest.parse(doc["config"]["digest"])])
        assert child.platform is not None and config["architecture"] == child.platform.architecture
        for desc in [doc["config"], *doc["layers"]]:
            d = Digest.parse(desc["digest"])
            assert digest_of(img.blobs[d]) == d and len(img.blobs[d]) == desc["size"]
            referenced.add(d)
    assert referenced == set(img.blobs) and len(referenced) == 3 * 3
    with pytest.raises(ValueError, match="platforms=6"):
        seeded_image("x", "1", seed="s", platforms=6)


def test_seeded_image_in_docker_format_uses_docker_media_types() -> None:
    img = seeded_image("small/app", "1", seed="d", layers=1, fmt=DOCKER)
    doc = json.loads(img.manifest)
    assert img.media_type == doc["mediaType"] == DOCKER_MANIFEST
    assert doc["config"]["mediaType"] == DOCKER_CONFIG
    assert [x["mediaType"] for x in doc["layers"]] == [DOCKER_LAYER]


# --- layers and configs --------------------------------------------------------------------
@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_layer_writer_reports_the_digests_of_what_it_wrote(tar_format: int) -> None:
    out = io.BytesIO()
    writer = LayerWriter(out, tar_format=tar_format)
    with writer as tar:
        info = tarfile.TarInfo("etc/" + "long-name-" * 12)  # > 100 chars: PAX and GNU differ here
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    data = out.getvalue()
    assert (writer.digest, writer.size) == (digest_of(data), len(data))
    assert writer.diff_id == digest_of(gzip.decompress(data))
    assert data[4:8] == b"\0\0\0\0" and not data[3] & 0x08, "gzip header: mtime 0, no file name"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.extractfile(info.name).read() == b"hello"  # type: ignore[union-attr]


def test_layer_from_files_adds_parent_dirs_and_fixed_metadata() -> None:
    layer = layer_from_files("x", {"opt/app/run": b"#!/bin/sh\n", "opt/app/lib/libx.so": b"\x7fELF"})
    with tarfile.open(fileobj=io.BytesIO(layer.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == list(members)
    assert set(members) == {"opt", "opt/app", "opt/app/lib", "opt/app/lib/libx.so", "opt/app/run"}
    assert {(m.uname, m.gname, m.uid, m.gid) for m in members.values()} == {("root", "root", 0, 0)}
    assert members["opt/app/run"].mode == 0o755 and members["opt/app"].isdir()
    assert layer.diff_id == digest_of(gzip.decompress(layer.data))


def test_image_config_sorted_or_not_holds_the_same_document() -> None:
    diff_ids = [digest_of(b"1"), digest_of(b"2")]

    def config(sort_keys: bool) -> bytes:
        return image_config(
            Platform("arm64", variant="v8"),
            diff_ids,
            cmd=["/run"],
            labels={"b": "2", "a": "1"},
            history=["one", "two"],
            sort_keys=sort_keys,
        )

    plain, ordered = config(False), config(True)
    assert plain != ordered and json.loads(plain) == json.loads(ordered)
    assert list(json.loads(plain))[:3] == ["architecture", "os", "variant"]
    assert json.loads(plain)["rootfs"]["diff_ids"] == [str(d) for d in diff_ids]
    assert OCI.config != DOCKER.config


# --- the wing's boundary -------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_product_code_never_imports_the_testing_wing() -> None:
    product = [
        p
        for d in ("layover", "flows", "tasks")
        for p in (REPO / d).rglob("*.py")
        if "testing" not in p.relative_to(REPO).parts
    ]
    assert len(product) > 20
    offenders = {
        str(p.relative_to(REPO))
        for p in product
        if any(n == "layover.testing" or n.startswith("layover.testing.") for n in _imports(p))
    }
    assert offenders == set()


@pytest.mark.parametrize(
    "module",
    [
        "layover.adapters.registry_api",
        "layover.testing.images",
        "layover.testing.releases",
        "layover.testing.push",
    ],
)
def test_each_module_imports_alone_and_the_generator_stays_pure(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'docker', 'prefect') or m.startswith('layover.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out))
    if module == "layover.adapters.registry_api":
        assert not {m for m in loaded if m.startswith("layover.testing")}, "no import loop"
    if module in ("layover.testing.images", "layover.testing.releases"):
        assert not {m for m in loaded if m.split(".")[0] in ("httpx", "docker", "prefect")}
        assert not {m for m in loaded if m.startswith("layover.adapters")}
