"""layover.testing: the deterministic sample release history and the image generator under it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from layover.imagelist import parse_text
from layover.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)
from layover.reference import Digest
from layover.testing import images, releases
from layover.testing.images import SampleImage
from layover.testing.releases import Release, release

SMALL = 0.05  # most tests do not need full-size layers

CHILD_TYPES = {
    DOCKER_MANIFEST_LIST: (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
    OCI_INDEX: (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
}
SINGLE_TYPES = {
    DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER),
    OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER),
}


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def fingerprint(r: Release) -> list[tuple[str, str, str, list[str], list[str]]]:
    return [
        (i.repository, i.tag, str(i.digest), [str(c.digest) for c in i.children], sorted(map(str, i.blobs)))
        for i in r.images
    ]


def by_repo(r: Release) -> dict[str, SampleImage]:
    return {i.repository: i for i in r.images}


# --- determinism ---------------------------------------------------------------------------
def test_generating_twice_in_one_process_gives_identical_bytes() -> None:
    first = release(1, SMALL)
    releases.release.cache_clear()
    releases._layer.cache_clear()
    second = release(1, SMALL)
    assert first is not second
    assert fingerprint(first) == fingerprint(second)
    for a, b in zip(first.images, second.images, strict=True):
        assert a.manifest == b.manifest
        assert dict(a.blobs) == dict(b.blobs)


def test_another_process_with_another_hash_seed_gives_identical_digests() -> None:
    code = (
        "import json; from layover.testing.releases import release\n"
        "print(json.dumps([[str(i), [str(d) for d in sorted(i.blobs)]] "
        "for n in (1, 2) for i in release(n, 0.05).images]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True, text=True)
    here = [[str(i), [str(d) for d in sorted(i.blobs)]] for n in (1, 2) for i in release(n, SMALL).images]
    assert json.loads(out.stdout) == here


def test_layers_are_reproducible_tars_with_fixed_metadata() -> None:
    img = release(1, SMALL).image("apps/team-a/web")
    for _digest, data in img.blobs.items():
        if data[:2] != b"\x1f\x8b":
            continue  # the config
        assert data[4:8] == b"\0\0\0\0", "gzip mtime must be 0"
        assert not data[3] & 0x08, "gzip header must not carry a file name"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert {(m.mtime, m.uid, m.gid) for m in members} == {(images.FIXED_MTIME, 0, 0)}
        assert any(m.isdir() for m in members) and any(m.isfile() for m in members)


# --- structure -----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_every_referenced_blob_exists_with_its_digest_and_size(n: int) -> None:
    for img in release(n, SMALL).images:
        referenced: set[Digest] = set()
        if img.is_index:
            index = json.loads(img.manifest)
            assert index["mediaType"] == img.media_type
            child_type, config_type, layer_type = CHILD_TYPES[img.media_type]
            assert [d["digest"] for d in index["manifests"]] == [str(c.digest) for c in img.children]
            assert [d["size"] for d in index["manifests"]] == [c.size for c in img.children]
            assert {d["mediaType"] for d in index["manifests"]} == {child_type}
            assert [d["platform"]["architecture"] for d in index["manifests"]] == ["amd64", "arm64"]
            singles = [(c.json(), c.media_type) for c in img.children]
        else:
            assert img.children == ()
            config_type, layer_type = SINGLE_TYPES[img.media_type]
            singles = [(json.loads(img.manifest), img.media_type)]
        for doc, media_type in singles:
            assert doc["schemaVersion"] == 2 and doc["mediaType"] == media_type
            assert doc["config"]["mediaType"] == config_type
            assert {layer["mediaType"] for layer in doc["layers"]} == {layer_type}
            assert 2 <= len(doc["layers"]) <= 3, "a base layer plus 1-2 app layers"
            for desc in [doc["config"], *doc["layers"]]:
                d = Digest.parse(desc["digest"])
                data = img.blobs[d]
                assert digest_of(data) == d and len(data) == desc["size"], f"{img}: {d}"
                referenced.add(d)
            config = json.loads(img.blobs[Digest.parse(doc["config"]["digest"])])
            diff_ids = [
                str(digest_of(gzip.decompress(img.blobs[Digest.parse(x["digest"])]))) for x in doc["layers"]
            ]
            assert config["rootfs"]["diff_ids"] == diff_ids
        assert referenced == set(img.blobs), f"{img}: blobs must be exactly what it references"


def test_release_1_covers_the_shapes_the_pipeline_must_handle() -> None:
    r = release(1, SMALL)
    repos = by_repo(r)
    assert len(r.images) == 12
    assert {"apps/team-a/lib", "apps/team-a/lib/tools"} <= set(repos)  # nested names
    assert {repo.split("/")[0] for repo in repos} == {"base", "platform", "apps"}
    types = {i.media_type for i in r.images}
    assert types == {DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX}
    for img in r.images:
        if img.is_index:
            assert len(img.children) == 2 and len({c.digest for c in img.children}) == 2
    # The three bases are shared: each one's layer is in several images.
    first_layers = [json.loads(i.manifests[0].data)["layers"][0]["digest"] for i in r.images]
    assert len(set(first_layers)) == 3
    assert all(first_layers.count(d) >= 3 for d in set(first_layers))


def test_full_size_base_layers_are_a_few_hundred_kib() -> None:
    for base in releases._BASES:
        size = releases._base_layer(base, 1.0).size
        assert 150 * 1024 < size < 1024 * 1024, (base, size)


def test_scale_shrinks_layers_and_bad_arguments_are_refused() -> None:
    small = sum(map(len, release(1, SMALL).blobs.values()))
    big = sum(map(len, release(1, 0.2).blobs.values()))
    assert small * 2 < big
    with pytest.raises(ValueError, match="release 4 does not exist"):
        release(4)
    with pytest.raises(ValueError, match="out of range"):
        release(1, 0)


# --- release 2 vs release 1 ----------------------------------------------------------------
def test_release_2_changes_a_few_top_layers_drops_two_adds_two_keeps_the_rest() -> None:
    one, two = by_repo(release(1, SMALL)), by_repo(release(2, SMALL))
    assert set(one) - set(two) == {"apps/team-b/batch", "apps/team-b/legacy"}
    assert set(two) - set(one) == {"platform/search", "apps/team-c/report"}
    changed = {repo for repo in set(one) & set(two) if one[repo].digest != two[repo].digest}
    assert changed == {"platform/gateway", "platform/auth", "apps/team-a/web"}
    for repo in changed:
        old, new = one[repo], two[repo]
        assert old.tag != new.tag, "a changed image gets a new tag"
        assert old.media_type == new.media_type
        for a, b in zip(
            old.manifests[:-1] or (old.manifests[-1],),
            new.manifests[:-1] or (new.manifests[-1],),
            strict=True,
        ):
            la, lb = a.json()["layers"], b.json()["layers"]
            assert la[:-1] == lb[:-1], f"{repo}: only the top layer changes"
            assert la[-1]["digest"] != lb[-1]["digest"]
    for repo in (set(one) & set(two)) - changed:
        assert (one[repo].tag, one[repo].manifest, dict(one[repo].blobs)) == (
            two[repo].tag,
            two[repo].manifest,
            dict(two[repo].blobs),
        )
    assert len((set(one) & set(two)) - changed) >= 6, "most images are unchanged"


# --- images.list ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("pin", [False, True])
def test_list_text_parses_to_exactly_the_release_images(n: int, pin: bool) -> None:
    r = release(n, SMALL)
    text = r.list_text(pin_digests=pin)
    assert text.startswith("#") and "# Docker manifest list" in text and "# OCI index" in text
    parsed = parse_text(text)
    assert parsed.duplicates == ()
    expected = [(i.repository, i.tag, i.digest if pin else None) for i in r.images]
    assert [(ref.repository, ref.tag, ref.digest) for ref in parsed.refs] == expected


def test_release_3_changes_two_top_layers_drops_one_keeps_the_rest() -> None:
    two, three = by_repo(release(2, SMALL)), by_repo(release(3, SMALL))
    assert set(two) - set(three) == {"apps/team-c/report"}
    assert set(three) <= set(two)
    changed = {repo for repo in three if two[repo].digest != three[repo].digest}
    assert changed == {"platform/metrics", "apps/team-a/worker"}
    for repo in changed:  # only the top layer is new: the base layers stay shared
        assert len(set(two[repo].blobs) - set(three[repo].blobs)) == (4 if repo == "platform/metrics" else 2)
