"""The contents file: built from a package tree, deterministic, self-checking, and the exact
storage tree it describes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from layover.contents import (
    CONTENTS_MEMBER,
    SCHEMA,
    Contents,
    FileKind,
    assemble,
    build,
    describe,
    expected_tree,
    parse,
    portable_list_source,
    schema_text,
)
from layover.errors import PackageError, StorageError
from layover.imagelist import parse_text
from layover.storage.layout import LINK_SIZE
from tests.unit.test_verify import Tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)


def _build(tree: Tree) -> Contents:
    return build(tree.sb.layout, tree.images, list_source="release.list", list_commit=None)


def test_every_listed_reference_maps_to_its_digest_media_type_and_platforms(tree):
    c = _build(tree)
    by_ref = {i.reference: i for i in c.images}
    assert sorted(by_ref) == sorted(str(r) for r in tree.images.refs)
    assert by_ref["app:1.0"].digest == str(tree.app)
    assert by_ref["app:1.0"].media_type == "application/vnd.docker.distribution.manifest.v2+json"
    multi = by_ref["multi:2"]
    assert multi.media_type == "application/vnd.oci.image.index.v1+json"
    assert [str(p) for p in multi.platforms] == ["linux/arch0", "linux/arch1"]
    assert {p.digest for p in multi.platforms} | {multi.digest} == set(multi.manifests)
    pinned = by_ref[f"lib/pinned@{tree.pinned}"]
    assert pinned.tag is None and pinned.digest == str(tree.pinned)
    assert "sha256:" + "f" * 64 not in pinned.blobs, "a foreign layer without data is not a blob"
    assert by_ref[f"lib:v@{tree.tp}"].tag == "v"


def test_blobs_are_every_data_file_with_size_and_users(tree):
    c = _build(tree)
    on_disk = {
        f.split("/")[3]: (tree.sb.layout.v2 / f).stat().st_size
        for f in tree.sb.files()
        if f.startswith("blobs/")
    }
    assert {b.digest[7:]: b.size for b in c.blobs} == on_disk
    shared = next(
        b
        for b in c.blobs
        if b.digest[7:] == os.path.basename(str(tree.sb.layout.blob_dir(tree.sb.blob(b"base"))))
    )
    assert shared.images == ("app:1.0", "multi:2")
    assert c.totals.blobs == len(on_disk) and c.totals.bytes == sum(on_disk.values())
    assert c.totals.carried_bytes == c.totals.bytes and c.kind == "full" and c.delta is None


def test_the_described_tree_is_exactly_the_package_tree(tree):
    files, dirs = expected_tree(_build(tree), str(tree.sb.layout.root))
    v2 = tree.sb.layout.v2
    assert {os.path.relpath(p, v2) for p in files} == tree.sb.files()
    for path, want in files.items():
        data = Path(path).read_bytes()
        assert len(data) == want.size
        if want.kind is not FileKind.BLOB:
            assert data == f"sha256:{want.digest}".encode() and want.size == LINK_SIZE
    assert {os.path.relpath(d, v2) for d in dirs if d.startswith(str(v2) + "/")} >= tree.sb.dirs() - {
        d for d in tree.sb.dirs() if "/_uploads" in d
    }


def test_same_tree_same_bytes_and_a_round_trip(tree):
    a, b = _build(tree).to_bytes(), _build(tree).to_bytes()
    assert a == b
    doc = json.loads(a)
    assert doc["schema"] == SCHEMA and list(doc) == sorted(doc)
    assert parse(a, "x") == _build(tree)


def test_a_listed_image_the_tree_lacks_names_it(tree):
    with pytest.raises(StorageError, match="nope:1"):
        build(tree.sb.layout, parse_text("app:1.0\nnope:1\n"), list_source="l", list_commit=None)


def _doc(tree: Tree) -> dict:
    return json.loads(_build(tree).to_bytes())


def _bad(doc: dict) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("name", "mutate", "says"),
    [
        ("another schema", lambda d: d.update(schema="layover.contents/9"), "schema"),
        ("unknown field", lambda d: d.update(extra=1), "extra"),
        (
            "repository escapes",
            lambda d: d["images"][0].update(reference="../x:1", repository="../x"),
            "image",
        ),
        (
            "repository not the reference's",
            lambda d: d["images"][0].update(repository="other"),
            "does not match",
        ),
        ("tag with a slash", lambda d: d["images"][0].update(tag="a/../../b"), "does not match"),
        ("bad digest", lambda d: d["blobs"][0].update(digest="sha256:../../etc"), "digest"),
        (
            "blob size lies about totals",
            lambda d: d["blobs"][0].update(size=d["blobs"][0]["size"] + 1),
            "totals",
        ),
        ("unsorted images", lambda d: d["images"].reverse(), "sorted"),
        ("image uses an undeclared blob", lambda d: d["blobs"].pop(0), "not in blobs"),
        ("delta without base", lambda d: d.update(kind="delta"), "delta"),
    ],
)
def test_a_contents_file_that_cannot_be_trusted_is_refused(tree, name, mutate, says):
    doc = _doc(tree)
    mutate(doc)
    with pytest.raises(PackageError, match=says) as info:
        parse(_bad(doc), "pkg.tar:layover/contents.json")
    assert "pkg.tar" in str(info.value) and "\n" not in str(info.value), name


def test_not_json_is_refused():
    with pytest.raises(PackageError, match="not JSON"):
        parse(b"\x00garbage", "p")


def test_a_file_list_is_named_by_its_file_name_only():
    assert portable_list_source("/srv/ci/lists/release-7.list", None) == "release-7.list"
    assert portable_list_source("git@h:r.git:images.list@v7", "a" * 40) == "git@h:r.git:images.list@v7"


def test_assemble_counts_a_delta(tree):
    from layover.contents import AssumedBlob, Base, Delta

    full = _build(tree)
    assumed = tuple(AssumedBlob(digest=b.digest, size=b.size) for b in full.blobs[:3])
    delta = assemble(
        full.images,
        list_source=full.list_source,
        list_commit=None,
        sizes={b.digest: b.size for b in full.blobs},
        delta=Delta(base=Base(sha256="a" * 64, release="r1"), assumed=assumed),
    )
    assert delta.kind == "delta" and delta.storage_root == "layover/delta"
    assert delta.totals.carried_blobs == full.totals.blobs - 3
    assert delta.totals.carried_bytes == full.totals.bytes - sum(a.size for a in assumed)
    assert parse(delta.to_bytes(), "d") == delta
    assert "assumes 3 blobs" in describe(delta)


def test_the_published_json_schema_is_current():
    published = (REPO / "docs" / "contents.schema.json").read_text()
    assert published == schema_text(), (
        "docs/contents.schema.json is stale: regenerate it with "
        "`.venv/bin/layover contents --schema > docs/contents.schema.json`"
    )
    assert json.loads(published)["properties"]["schema"]["const"] == SCHEMA


def test_contents_member_is_the_documented_name():
    assert CONTENTS_MEMBER == "layover/contents.json"
