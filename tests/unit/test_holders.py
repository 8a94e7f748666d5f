"""BlobHolders: what a copy into a storage tree can skip or mount, read from the tree itself."""

from __future__ import annotations

import json
import threading

from layover.reference import Digest
from layover.storage.holders import BlobHolders
from tests.unit.storage_builder import StorageBuilder


def test_present_only_with_link_and_data(tmp_path):
    sb = StorageBuilder(tmp_path)
    d = sb.push_blob("a/app", b"layer")
    h = BlobHolders(sb.layout)
    assert h.has_blob("a/app", d)
    assert not h.has_blob("b/app", d)  # data, but no link there: mountable, not present
    sb.layout.blob_data(d).unlink()
    assert not h.has_blob("a/app", d)


def test_holder_is_a_repository_that_links_it_and_follows_what_lands(tmp_path):
    sb = StorageBuilder(tmp_path)
    d = sb.push_blob("a/app", b"base")
    other = sb.blob(b"not linked anywhere")
    h = BlobHolders(sb.layout)
    assert h.holder(d) == "a/app"
    assert h.holder(other) is None
    sb.link_layer("b/app", other)
    h.landed("b/app", other)
    assert h.holder(other) == "b/app"


def test_manifest_revisions(tmp_path):
    sb = StorageBuilder(tmp_path)
    m = sb.image("a/app")
    h = BlobHolders(sb.layout)
    assert h.has_manifest("a/app", m)
    assert not h.has_manifest("b/app", m)


def test_one_upload_per_blob_the_second_waits_then_looks_again(tmp_path):
    sb = StorageBuilder(tmp_path)
    d = sb.blob(b"x")
    h = BlobHolders(sb.layout)
    release = h.claim(d)
    assert release is not None
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(h.claim(d)))
    t.start()
    t.join(0.2)
    assert t.is_alive() and got == []  # waiting for the first upload
    release()
    t.join(5)
    assert got == [None]  # told to look again, not to upload
    again = h.claim(d)
    assert again is not None
    again()


def test_a_manifest_counts_only_when_held_whole(tmp_path):
    sb = StorageBuilder(tmp_path)
    m = sb.image("a/app", [b"one", b"two"])
    h = BlobHolders(sb.layout)
    assert h.has_manifest("a/app", m)
    layer = Digest.parse(json.loads(sb.layout.blob_data(m).read_bytes())["layers"][1]["digest"])
    sb.layout.layer_link("a/app", layer).unlink()
    assert not h.has_manifest("a/app", m)  # copied again, so its layer comes back
