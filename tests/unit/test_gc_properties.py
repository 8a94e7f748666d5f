"""docs/design.md §4 invariants on random storage trees, checked against an independent oracle.

The oracle reads the tree before GC with plain json (not layover.manifest) and predicts the exact
set of files that must survive; after GC the tree must equal it, a second plan must be empty, and
planning alone must change nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layover.storage.gc import plan_gc
from layover.storage.vacuum import apply_gc
from tests.unit.storage_builder import StorageBuilder

REPOS = ["a", "a/b", "a/b/c", "d", "d/e", "f"]
LAYERS = [b"", b"L1", b"L2", b"L3", b"shared base"]
TAGS = ["latest", "v1", "v2", "sha256-abc.sig"]


def build(data: st.DataObject, root: Path) -> StorageBuilder:
    sb = StorageBuilder(root)
    repos = data.draw(st.lists(st.sampled_from(REPOS), min_size=1, max_size=4, unique=True), "repos")
    for repo in repos:
        manifests = []
        for i in range(data.draw(st.integers(0, 4), f"{repo} images")):
            kind = data.draw(st.sampled_from(["docker", "oci", "schema1", "index", "index"]))
            layers = data.draw(st.lists(st.sampled_from(LAYERS), max_size=3))
            if kind == "schema1":
                manifests.append(sb.schema1(repo, layers or [b"L1"]))
            elif kind == "index" and manifests:
                children = data.draw(
                    st.lists(st.sampled_from(manifests), min_size=1, max_size=3, unique=True)
                )
                manifests.append(
                    sb.index(
                        repo,
                        children,
                        oci=data.draw(st.booleans()),
                        media_type=data.draw(st.booleans()),
                        salt=f"{i}",
                    )
                )
            else:
                config = data.draw(st.sampled_from([None, b"{}"]))  # {} is shared across repos
                manifests.append(
                    sb.image(
                        repo,
                        layers,
                        config=config,
                        oci=kind == "oci",
                        media_type=data.draw(st.booleans()),
                        salt=f"{i}",
                    )
                )
        if not manifests:
            continue
        for tag in data.draw(st.lists(st.sampled_from(TAGS), max_size=3, unique=True), f"{repo} tags"):
            current = data.draw(st.sampled_from(manifests))
            history = data.draw(st.lists(st.sampled_from(manifests), max_size=2, unique=True))  # moved tags
            sb.tag(repo, tag, current, history=[h for h in history if h != current])
        if data.draw(st.booleans(), f"{repo} strays"):
            sb.upload(repo)
            sb.link_layer(repo, sb.blob(f"stray {repo}".encode()))
    return sb


def expected_survivors(sb: StorageBuilder) -> set[str]:
    """Exactly the files GC must keep, computed from the tree before GC."""
    v2 = sb.layout.v2
    keep: set[str] = set()
    blobs: set[str] = set()
    existing = sb.files()
    for repo in sb.layout.repository_names():
        r = f"repositories/{repo}/_manifests"
        tags_dir = v2 / r / "tags"
        tags = sorted(os.listdir(tags_dir)) if tags_dir.is_dir() else []
        todo, manifests, needed = [], set(), set()
        for tag in tags:
            current = (tags_dir / tag / "current" / "link").read_text()[7:]
            keep |= {f"{r}/tags/{tag}/current/link", f"{r}/tags/{tag}/index/sha256/{current}/link"}
            todo.append(current)
        while todo:
            h = todo.pop()
            if h in manifests:
                continue
            manifests.add(h)
            doc = json.loads((v2 / f"blobs/sha256/{h[:2]}/{h}/data").read_bytes())
            todo += [m["digest"][7:] for m in doc.get("manifests", [])]
            needed |= {x["blobSum"][7:] for x in doc.get("fsLayers", [])}
            needed |= {x["digest"][7:] for x in doc.get("layers", [])}
            if "config" in doc:
                needed.add(doc["config"]["digest"][7:])
        keep |= {f"{r}/revisions/sha256/{h}/link" for h in manifests}
        keep |= {f"repositories/{repo}/_layers/sha256/{h}/link" for h in needed}
        blobs |= manifests | needed
    keep |= {f"blobs/sha256/{h[:2]}/{h}/data" for h in blobs}
    return keep & existing


def snapshot(sb: StorageBuilder) -> dict[str, bytes]:
    return {p: (sb.layout.v2 / p).read_bytes() for p in sb.files()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_gc_invariants_on_random_trees(data):
    with tempfile.TemporaryDirectory(prefix="gc-prop-") as tmp:
        sb = build(data, Path(tmp) / "storage")
        expected = expected_survivors(sb)
        tagged_before = {r for r in sb.layout.repository_names() if sb.layout.tags(r).is_dir()}

        before = snapshot(sb)
        plan = plan_gc(sb.layout)
        assert snapshot(sb) == before, "planning (the dry run) must change nothing"
        assert plan.warnings == ()

        apply_gc(plan)
        assert sb.files() == expected
        after = snapshot(sb)
        assert all(after[p] == before[p] for p in after), "GC never rewrites a file"
        # every surviving repository has tags; tagless ones left no internals, nested ones survived
        assert set(sb.layout.repository_names()) == tagged_before
        # no empty blob prefix dirs, no empty dirs left by removed repositories
        for d in sb.dirs() - {"repositories", "blobs", "blobs/sha256"}:
            full = sb.layout.v2 / d
            if d.startswith("blobs/sha256/") or not any(part.startswith("_") for part in Path(d).parts):
                assert os.listdir(full), f"empty directory left behind: {d}"

        again = plan_gc(sb.layout)
        assert again.deletions == () and again.bytes_freed == 0
        assert again.kept_blob_hexes == plan.kept_blob_hexes
