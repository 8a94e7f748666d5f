"""layover.storage.repair on storage trees built in tmp_path: what counts as damage, what is moved
out (into a quarantine, never deleted), who needs a damaged blob, and what a fetch puts back."""

from __future__ import annotations

import hashlib
import json

from layover.imagelist import parse_bytes
from layover.reference import Digest
from layover.storage.layout import StorageLayout, write_link
from layover.storage.repair import Damage, needed_by, repair, scan, scan_repository


def _blob(layout: StorageLayout, data: bytes) -> Digest:
    d = Digest(hashlib.sha256(data).hexdigest())
    layout.blob_data(d).parent.mkdir(parents=True, exist_ok=True)
    layout.blob_data(d).write_bytes(data)
    return d


def _tree(tmp_path):
    layout = StorageLayout(tmp_path / "lower")
    layer = _blob(layout, b"layer-bytes" * 100)
    config = _blob(layout, b'{"architecture":"amd64"}')
    manifest = _blob(
        layout,
        json.dumps(
            {"schemaVersion": 2, "config": {"digest": str(config)}, "layers": [{"digest": str(layer)}]}
        ).encode(),
    )
    for d in (layer, config):
        write_link(layout.layer_link("lib/app", d), d)
    write_link(layout.revision_link("lib/app", manifest), manifest)
    write_link(layout.tag_current_link("lib/app", "1.0"), manifest)
    return layout, layer, config, manifest


def test_a_healthy_tree_has_no_damage_and_repair_changes_nothing(tmp_path):
    layout, *_ = _tree(tmp_path)
    plan = scan(layout)
    assert plan.ok and plan.blobs_checked == 3 and plan.links_checked == 4
    done = repair(plan, tmp_path / "quarantine")
    assert done.moved == () and not (tmp_path / "quarantine").exists()


def test_truncated_blob_garbage_link_and_non_json_manifest_are_found_and_removed(tmp_path):
    layout, layer, config, manifest = _tree(tmp_path)
    data = layout.blob_data(layer)
    data.write_bytes(data.read_bytes()[:10])
    layout.layer_link("lib/app", config).write_bytes(b"\x00garbage\n")
    layout.blob_data(manifest).write_bytes(b"<html>not json</html>")
    plan = scan(layout)
    found = {(f.kind, f.path) for f in plan.findings}
    assert found == {
        (Damage.BLOB_DIGEST, layout.blob_data(layer)),
        (Damage.BLOB_DIGEST, layout.blob_data(manifest)),
        (Damage.LINK, layout.layer_link("lib/app", config)),
    }
    assert str(layout.layer_link("lib/app", config)) in plan.summary()
    # the cheap per-repository scan names the link and the manifest, not the layer
    assert {f.path for f in scan_repository(layout, "lib/app")} == {
        layout.layer_link("lib/app", config),
        layout.blob_data(manifest),
    }
    truncated = layout.blob_data(layer).read_bytes()
    done = repair(plan, tmp_path / "quarantine")
    assert len(done.moved) == 3 and done.fetched == () and done.lost == ()
    assert not layout.blob_dir(layer).exists() and not layout.blob_dir(manifest).exists()
    assert not layout.layer_link("lib/app", config).parent.exists()
    assert layout.blob_data(config).exists()  # healthy files stay
    assert scan(layout).ok
    # nothing deleted: each damaged entry sits in the quarantine at its place in the tree
    kept = StorageLayout(tmp_path / "quarantine")
    assert kept.blob_data(layer).read_bytes() == truncated
    assert kept.blob_data(manifest).read_bytes() == b"<html>not json</html>"
    assert kept.layer_link("lib/app", config).read_bytes() == b"\x00garbage\n"


def test_a_link_with_a_trailing_newline_is_damage(tmp_path):
    layout, layer, *_ = _tree(tmp_path)
    link = layout.layer_link("lib/app", layer)
    link.write_bytes(str(layer).encode() + b"\n")
    assert [f.path for f in scan(layout).findings] == [link]


def test_a_scan_of_named_blobs_hashes_only_those_and_no_links(tmp_path):
    layout, layer, config, _manifest = _tree(tmp_path)
    for d in (layer, config):
        layout.blob_data(d).write_bytes(b"rot")
    layout.layer_link("lib/app", config).write_bytes(b"garbage")
    plan = scan(layout, [layer])
    assert plan.blobs_checked == 1 and plan.links_checked == 0
    assert [(f.kind, f.digest) for f in plan.findings] == [(Damage.BLOB_DIGEST, layer)]


def test_needed_by_names_the_images_and_where_the_source_may_have_the_blob(tmp_path):
    layout, layer, config, manifest = _tree(tmp_path)
    # a second repository that holds the same layer, under an image the list does not name
    other = _blob(
        layout,
        json.dumps(
            {"schemaVersion": 2, "config": {"digest": str(config)}, "layers": [{"digest": str(layer)}]}
        ).encode()
        + b" ",
    )
    for d in (layer, config):
        write_link(layout.layer_link("mirror/app", d), d)
    write_link(layout.revision_link("mirror/app", other), other)
    write_link(layout.tag_current_link("mirror/app", "old"), other)
    images = parse_bytes(b"lib/app:1.0\n", "list")
    needs = needed_by(layout, images.refs, [layer])
    assert needs[layer].images == ("lib/app:1.0",)
    assert needs[layer].repositories == ("lib/app", "mirror/app")  # the needing image's first
    assert not needs[layer].manifest
    needs = needed_by(layout, images.refs, [manifest])
    assert needs[manifest].images == ("lib/app:1.0",) and needs[manifest].manifest
    assert needs[manifest].repositories == ("lib/app",)


def test_a_damaged_manifest_is_not_read_and_what_only_it_names_is_found_by_its_links(tmp_path):
    layout, layer, _config, manifest = _tree(tmp_path)
    layout.blob_data(manifest).write_bytes(b"{}")  # parses, names nothing
    needs = needed_by(layout, parse_bytes(b"lib/app:1.0\n", "list").refs, [manifest, layer])
    assert needs[manifest].images == ("lib/app:1.0",)
    assert needs[layer].images == () and needs[layer].repositories == ("lib/app",)


def test_repair_with_a_fetch_puts_blobs_back_and_names_what_it_could_not(tmp_path):
    layout, layer, config, manifest = _tree(tmp_path)
    good = {d: layout.blob_data(d).read_bytes() for d in (layer, config)}
    for d in (layer, config):
        layout.blob_data(d).write_bytes(b"rot")
    asked = []

    def fetch(blobs):
        asked.append(list(blobs))
        for d in blobs:  # what the source would send: the layer only
            if d == layer:
                layout.blob_data(d).parent.mkdir(parents=True)
                layout.blob_data(d).write_bytes(good[d])
        return [config]

    plan = scan(layout, [layer, config, manifest])
    done = repair(plan, tmp_path / "quarantine", fetch)
    # every damaged blob was out of the tree before the fetch was asked for it
    assert sorted(asked[0], key=str) == sorted([layer, config], key=str)
    assert done.fetched == (layer,)
    assert done.lost == (config,)
    assert scan(layout, [layer]).ok and not layout.blob_data(config).exists()
    assert StorageLayout(tmp_path / "quarantine").blob_data(config).read_bytes() == b"rot"
