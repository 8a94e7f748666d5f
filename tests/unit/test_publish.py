"""publish (package sync without a registry) on built storage trees: the links a registry's PUTs
write, and the checks it makes first. Against a real registry: tests/integration/test_publish.py."""

from __future__ import annotations

import json
import shutil

import pytest

from layover.errors import CopyError, StorageError
from layover.reference import Digest, ImageRef
from layover.storage.layout import StorageLayout, read_link
from layover.storage.publish import publish
from tests.unit.storage_builder import OCI_INDEX, StorageBuilder


def pruned(tmp_path, build):
    """An archive built by `build(sb)` and a package view of it without `_manifests`."""
    sb = StorageBuilder(tmp_path / "archive")
    build(sb)
    shutil.copytree(tmp_path / "archive", tmp_path / "package")
    package = StorageLayout(tmp_path / "package")
    for name in package.repository_names():
        shutil.rmtree(package.manifests(name), ignore_errors=True)
    return sb, package


def test_writes_revision_tag_and_tag_index_links(tmp_path):
    digests = {}

    def build(sb):
        digests["m"] = sb.image("apps/web")
        sb.tag("apps/web", "1", digests["m"])

    sb, package = pruned(tmp_path, build)
    m = digests["m"]
    done = publish(sb.layout, package, ImageRef.parse("apps/web:1"))
    assert done.digest == m and done.manifests == 1
    assert read_link(package.revision_link("apps/web", m)) == m
    assert read_link(package.tag_current_link("apps/web", "1")) == m
    assert read_link(package.tag_index_link("apps/web", "1", m)) == m
    again = publish(sb.layout, package, ImageRef.parse("apps/web:1"))  # idempotent
    assert again == done


def test_an_index_links_its_children_first(tmp_path):
    digests = {}

    def build(sb):
        a, b = sb.image("multi/app", salt="a"), sb.image("multi/app", salt="b")
        idx = sb.push_manifest(
            "multi/app",
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(d), "size": 1}
                    for d in (a, b)
                ],
            },
        )
        digests.update(a=a, b=b, idx=idx)

    sb, package = pruned(tmp_path, build)
    done = publish(sb.layout, package, ImageRef.parse(f"multi/app@{digests['idx']}"))
    assert done.manifests == 3
    for d in digests.values():
        assert package.revision_link("multi/app", d).is_file()
    assert not package.tags("multi/app").exists()  # digest only: no tag written


def test_a_missing_or_corrupt_layer_link_is_refused_naming_it(tmp_path):
    digests = {}

    def build(sb):
        digests["m"] = sb.image("apps/web", [b"one", b"two"])
        sb.tag("apps/web", "1", digests["m"])

    sb, package = pruned(tmp_path, build)
    layers = json.loads(package.blob_data(digests["m"]).read_bytes())["layers"]
    link = package.layer_link("apps/web", Digest.parse(layers[1]["digest"]))
    link.write_bytes(b"\x00garbage\n")
    with pytest.raises(StorageError, match="corrupt link file") as info:
        publish(sb.layout, package, ImageRef.parse("apps/web:1"))
    assert str(link) in str(info.value)
    link.unlink()
    with pytest.raises(CopyError, match="not linked in apps/web"):
        publish(sb.layout, package, ImageRef.parse("apps/web:1"))
    assert not package.tag_current_link("apps/web", "1").exists()  # the tag comes last
