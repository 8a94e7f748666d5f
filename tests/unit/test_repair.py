"""layover.storage.repair on storage trees built in tmp_path: what counts as damage, what is removed."""

from __future__ import annotations

import hashlib
import json

from layover.reference import Digest
from layover.storage.layout import StorageLayout, write_link
from layover.storage.repair import Damage, apply_repair, scan, scan_repository


def _blob(layout: StorageLayout, data: bytes) -> Digest:
    d = Digest(hashlib.sha256(data).hexdigest())
    layout.blob_data(d).parent.mkdir(parents=True, exist_ok=True)
    layout.blob_data(d).write_bytes(data)
    return d


def _tree(tmp_path):
    layout = StorageLayout(tmp_path)
    layer = _blob(layout, b"layer-bytes" * 100)
    config = _blob(layout, b'{"architecture":"amd64"}')
    manifest = _blob(layout, json.dumps({"schemaVersion": 2, "config": {"digest": str(config)},
                                         "layers": [{"digest": str(layer)}]}).encode())
    for d in (layer, config):
        write_link(layout.layer_link("lib/app", d), d)
    write_link(layout.revision_link("lib/app", manifest), manifest)
    write_link(layout.tag_current_link("lib/app", "1.0"), manifest)
    return layout, layer, config, manifest


def test_a_healthy_tree_has_no_damage_and_repair_changes_nothing(tmp_path):
    layout, *_ = _tree(tmp_path)
    plan = scan(layout)
    assert plan.ok and plan.blobs_checked == 3 and plan.links_checked == 4
    assert apply_repair(plan) == 0


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
        layout.layer_link("lib/app", config), layout.blob_data(manifest)}
    assert apply_repair(plan) == 3
    assert not layout.blob_dir(layer).exists() and not layout.blob_dir(manifest).exists()
    assert not layout.layer_link("lib/app", config).parent.exists()
    assert layout.blob_data(config).exists()  # healthy files stay
    assert scan(layout).ok


def test_a_link_with_a_trailing_newline_is_damage(tmp_path):
    layout, layer, *_ = _tree(tmp_path)
    link = layout.layer_link("lib/app", layer)
    link.write_bytes(str(layer).encode() + b"\n")
    assert [f.path for f in scan(layout).findings] == [link]
