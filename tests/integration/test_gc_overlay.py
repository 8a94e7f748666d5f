"""GC on an overlay merged view gives the same tree as GC on a plain copy, and leaves lower alone.

The pipeline runs GC on `merged`, where deleting a lower directory leaves a whiteout in upper and
renaming one fails with EXDEV: GC must work by deletion alone (docs/design.md §3).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from layover.storage.gc import plan_gc
from layover.storage.layout import StorageLayout
from layover.storage.prune import prune_manifests
from layover.storage.vacuum import apply_gc
from tests.unit.storage_builder import StorageBuilder

pytestmark = pytest.mark.integration


def _tree(root) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.join(rel, d) + "/"] = "dir"
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _history(root) -> None:
    """A release history with everything GC must get right: multi-arch, nesting, moved tags,
    shared blobs, a tagless repo, an untagged index whose children are tagged, uploads."""
    sb = StorageBuilder(root)
    base = b"shared base layer"
    a1 = sb.image("lib", [base, b"lib v1"], salt="1")
    a2 = sb.image("lib", [base, b"lib v2"], salt="2")
    sb.tag("lib", "stable", a2, history=[a1])  # moved tag: a1 only in the tag index
    kids = [sb.image("lib/tools", [base, f"tools {i}".encode()], salt=str(i)) for i in range(2)]
    sb.tag("lib/tools", "2", sb.index("lib/tools", kids, oci=True))
    dl = [sb.image("apps/web", [b"web amd64"], salt="a"), sb.image("apps/web", [b"web arm"], salt="b")]
    sb.tag("apps/web", "1", sb.index("apps/web", dl, oci=False))
    sb.image("apps/dropped", [base, b"dropped only"])  # pushed, never tagged
    orphan_kids = [sb.image("apps/kids", [b"kid 0"], salt="0"), sb.image("apps/kids", [b"kid 1"], salt="1")]
    sb.index("apps/kids", orphan_kids, oci=True, salt="untagged")
    sb.tag("apps/kids", "k0", orphan_kids[0])
    sb.upload("lib")


def test_gc_on_merged_equals_gc_on_a_plain_copy(mounted_overlay, tmp_path):
    lower = tmp_path / "lower"
    _history(lower)
    plain = tmp_path / "plain"
    shutil.copytree(lower, plain)
    lower_before = _tree(lower)

    ov = mounted_overlay(lower=lower)
    merged = StorageLayout(ov.merged)
    plan_merged = plan_gc(merged)
    plan_plain = plan_gc(StorageLayout(plain))
    assert plan_merged.summary() == plan_plain.summary()
    assert not plan_merged.empty
    apply_gc(plan_merged)
    apply_gc(plan_plain)

    assert _tree(ov.merged) == _tree(plain)
    assert _tree(lower) == lower_before, "GC on the merged view wrote to the archive"
    assert plan_gc(merged).empty  # a fixed point on the overlay too

    # and the pipeline's order (prune, then GC) also only ever touches upper
    prune_manifests(StorageLayout(lower), merged)  # deleting through the mount
    apply_gc(plan_gc(merged))
    assert _tree(lower) == lower_before
