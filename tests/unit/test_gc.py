"""GC rules from docs/design.md §4, each asserting the exact set of files that survive."""

from __future__ import annotations

import os

import pytest

from layover.errors import GCError
from layover.reference import Digest
from layover.storage.gc import DeletionKind, KeepSet, plan_gc
from layover.storage.vacuum import apply_gc
from tests.unit.storage_builder import (
    StorageBuilder,
    blob_path,
    digest_of,
    layer_path,
    revision_path,
    tag_paths,
)


@pytest.fixture
def sb(tmp_path) -> StorageBuilder:
    return StorageBuilder(tmp_path / "storage")


def snapshot(sb: StorageBuilder) -> dict[str, bytes]:
    base = sb.layout.v2
    return {p: (base / p).read_bytes() for p in sb.files()}


def image_files(repo: str, manifest: Digest, blobs: list[Digest]) -> set[str]:
    """The files a pushed image owns in its repository plus the blobs themselves."""
    return (
        {revision_path(repo, manifest), blob_path(manifest)}
        | {layer_path(repo, b) for b in blobs}
        | {blob_path(b) for b in blobs}
    )


def gc(sb: StorageBuilder, **kw):
    plan = plan_gc(sb.layout, **kw)
    apply_gc(plan)
    again = plan_gc(sb.layout, **kw)
    assert again.deletions == (), "second GC must delete nothing"
    return plan


def layers_of(sb, repo, salt=""):
    cfg = digest_of(f'{{"arch": "amd64", "salt": "{salt}", "repo": "{repo}"}}'.encode())
    return [cfg, digest_of(f"layer {repo} {salt}".encode())]


def test_exact_surviving_paths_for_a_moved_tag_with_strays(sb):
    old = sb.image("app", salt="1")
    new = sb.image("app", salt="2")
    sb.tag("app", "latest", new, history=[old])
    sb.upload("app")
    stray = sb.blob(b"nobody links me")
    plan = gc(sb)
    expected = image_files("app", new, layers_of(sb, "app", "2")) | tag_paths("app", "latest", new)
    assert sb.files() == expected
    assert not os.path.exists(sb.layout.blob_dir(stray))
    assert not os.path.exists(sb.layout.blob_dir(old))
    kinds = {d.kind for d in plan.deletions}
    assert kinds == {
        DeletionKind.UPLOADS,
        DeletionKind.TAG_INDEX,
        DeletionKind.REVISION,
        DeletionKind.LAYER_LINK,
        DeletionKind.BLOB,
    }
    # empty blob prefix dirs are gone; the kept repo keeps its structure
    assert all(os.listdir(sb.layout.blobs / p) for p in os.listdir(sb.layout.blobs))


def test_digest_prefix_collisions_compare_full_digests(sb):
    kept = sb.image("app", salt="k")
    sb.tag("app", "v1", kept)
    keep_blobs = layers_of(sb, "app", "k")
    # Fake entries sharing a 12-char (and 63-char) prefix with kept digests, never referenced.
    twins = []
    for d in [kept, *keep_blobs]:
        twin = Digest(d.hex[:63] + ("0" if d.hex[63] != "0" else "1"))
        twins.append(twin)
        (sb.layout.blob_dir(twin)).mkdir(parents=True)
        sb.layout.blob_data(twin).write_bytes(b"twin")
        sb.link_layer("app", twin)
        sb.revision("app", twin)
    gc(sb)
    assert sb.files() == image_files("app", kept, keep_blobs) | tag_paths("app", "v1", kept)


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
@pytest.mark.parametrize("media_type", [True, False], ids=["mediaType", "no-mediaType"])
def test_tagged_index_keeps_untagged_children(sb, oci, media_type):
    amd = sb.image("multi", salt="amd64", oci=oci)
    arm = sb.image("multi", salt="arm64", oci=oci)
    idx = sb.index("multi", [amd, arm], oci=oci, media_type=media_type)
    sb.tag("multi", "1.0", idx)
    dropped = sb.image("multi", salt="old")
    gc(sb)
    expected = (
        {revision_path("multi", idx), blob_path(idx)}
        | tag_paths("multi", "1.0", idx)
        | image_files("multi", amd, layers_of(sb, "multi", "amd64"))
        | image_files("multi", arm, layers_of(sb, "multi", "arm64"))
    )
    assert sb.files() == expected
    assert not sb.layout.blob_dir(dropped).exists()


def test_nested_index(sb):
    leaf = sb.image("n", salt="leaf")
    inner = sb.index("n", [leaf], salt="inner")
    outer = sb.index("n", [inner], media_type=False, salt="outer")
    sb.tag("n", "t", outer)
    gc(sb)
    assert sb.files() == (
        {revision_path("n", d) for d in (inner, outer)}
        | {blob_path(d) for d in (inner, outer)}
        | image_files("n", leaf, layers_of(sb, "n", "leaf"))
        | tag_paths("n", "t", outer)
    )


def test_untagged_index_whose_children_are_tagged(sb):
    a = sb.image("r", salt="a")
    b = sb.image("r", salt="b")
    idx = sb.index("r", [a, b])
    sb.tag("r", "a", a)
    sb.tag("r", "b", b)
    gc(sb)
    assert not sb.layout.blob_dir(idx).exists()
    assert sb.files() == (
        image_files("r", a, layers_of(sb, "r", "a"))
        | image_files("r", b, layers_of(sb, "r", "b"))
        | tag_paths("r", "a", a)
        | tag_paths("r", "b", b)
    )


def test_blob_shared_by_kept_and_dropped_repo(sb):
    shared = b"shared base layer"
    kept = sb.image("kept", layers=[shared], salt="k")
    sb.image("dropped", layers=[shared, b"only dropped"], salt="d")
    sb.tag("kept", "v", kept)
    plan = gc(sb)
    cfg = digest_of(b'{"arch": "amd64", "salt": "k", "repo": "kept"}')
    assert sb.files() == image_files("kept", kept, [cfg, digest_of(shared)]) | tag_paths("kept", "v", kept)
    assert plan.removed_repositories == ("dropped",)
    assert not (sb.layout.repositories / "dropped").exists()


def test_nested_repositories(sb):
    # lib is tagless, lib/a is tagged: lib's internals go, lib/a survives
    sb.image("lib", salt="x")
    a = sb.image("lib/a", salt="a")
    sb.tag("lib/a", "v", a)
    # top is tagged, top/sub is tagless: only top/sub goes
    t = sb.image("top", salt="t")
    sb.tag("top", "v", t)
    sb.image("top/sub", salt="s")
    sb.upload("top/sub")
    gc(sb)
    assert sb.files() == (
        image_files("lib/a", a, layers_of(sb, "lib/a", "a"))
        | tag_paths("lib/a", "v", a)
        | image_files("top", t, layers_of(sb, "top", "t"))
        | tag_paths("top", "v", t)
    )
    assert sorted(os.listdir(sb.layout.repo("lib"))) == ["a"]
    assert not sb.layout.repo("top/sub").exists()
    assert sb.layout.repository_names() == ["lib/a", "top"]


def test_repo_with_manifests_but_no_layers_keeps_its_blobs(sb):
    m = sb.image("r", salt="1")
    sb.tag("r", "v", m)
    blobs = layers_of(sb, "r", "1")
    for b in blobs:
        (sb.layout.layer_link("r", b)).unlink()
        (sb.layout.layer_link("r", b)).parent.rmdir()
    (sb.layout.layers("r")).rmdir()
    (sb.layout.layers("r")).parent.rmdir()
    plan = gc(sb)
    assert sb.files() == {revision_path("r", m), blob_path(m), *map(blob_path, blobs)} | tag_paths(
        "r", "v", m
    )
    assert len(plan.warnings) == 2 and all("not linked" in w.message for w in plan.warnings)


def test_dangling_unused_layer_link_removed_used_one_kept_with_warning(sb):
    m = sb.image("r", salt="1")
    sb.tag("r", "v", m)
    ghost = Digest("e" * 64)
    sb.link_layer("r", ghost)  # dangling and unused
    cfg, layer = layers_of(sb, "r", "1")
    sb.layout.blob_data(layer).unlink()  # used but data missing: GC cannot fix, keeps link
    plan = gc(sb)
    assert sb.files() == image_files("r", m, [cfg, layer]) - {blob_path(layer)} | tag_paths("r", "v", m)
    assert [w.path for w in plan.warnings] == [str(sb.layout.blob_data(layer))]


def test_foreign_layers_need_no_data(sb):
    f1, f2 = "sha256:" + "f1" * 32, "sha256:" + "f2" * 32
    m = sb.image("win", salt="1", foreign=[f1])
    n = sb.image("win", salt="2", oci=True, foreign=[f2], foreign_with_urls=True)
    sb.tag("win", "1", m)
    sb.tag("win", "2", n)
    sb.link_layer("win", Digest.parse(f2))  # dangling link to a foreign layer: dropped
    plan = gc(sb)
    assert plan.warnings == ()
    assert sb.files() == (
        image_files("win", m, layers_of(sb, "win", "1"))
        | image_files("win", n, layers_of(sb, "win", "2"))
        | tag_paths("win", "1", m)
        | tag_paths("win", "2", n)
    )


def test_foreign_layer_present_is_kept(sb):
    fdata = b"foreign but pushed"
    fd = sb.push_blob("win", fdata)
    m = sb.image("win", salt="1", foreign=[str(fd)])
    sb.tag("win", "1", m)
    gc(sb)
    assert blob_path(fd) in sb.files() and layer_path("win", fd) in sb.files()


def test_empty_config_zero_length_and_repeated_layers(sb):
    m = sb.image("e", layers=[b"", b"same", b"same", b""], config=b"{}")
    sb.tag("e", "v", m)
    gc(sb)
    blobs = [digest_of(b"{}"), digest_of(b""), digest_of(b"same")]
    assert sb.files() == image_files("e", m, blobs) | tag_paths("e", "v", m)
    assert sb.layout.blob_data(digest_of(b"")).read_bytes() == b""


def test_schema1(sb):
    m = sb.schema1("old", [b"l1", b"l2"])
    sb.tag("old", "v1", m)
    sb.schema1("old", [b"l3"])
    gc(sb)
    assert sb.files() == image_files("old", m, [digest_of(b"l1"), digest_of(b"l2")]) | tag_paths(
        "old", "v1", m
    )


def test_signature_and_referrer_tags_are_ordinary_tags(sb):
    m = sb.image("s", salt="img")
    sig = sb.image("s", salt="sig", oci=True)
    ref = sb.index("s", [], salt="referrers")
    sb.tag("s", "v", m)
    sb.tag("s", f"sha256-{m.hex}.sig", sig)
    sb.tag("s", f"sha256-{m.hex}", ref)
    gc(sb)
    assert sb.files() == (
        image_files("s", m, layers_of(sb, "s", "img"))
        | image_files("s", sig, layers_of(sb, "s", "sig"))
        | {revision_path("s", ref), blob_path(ref)}
        | tag_paths("s", "v", m)
        | tag_paths("s", f"sha256-{m.hex}.sig", sig)
        | tag_paths("s", f"sha256-{m.hex}", ref)
    )


def test_extra_roots_pin_digest_only_images(sb):
    pinned = sb.image("pin", salt="p")
    sb.image("pin", salt="unpinned")
    gc(sb, extra_roots=[("pin", pinned)])
    assert sb.files() == image_files("pin", pinned, layers_of(sb, "pin", "p"))


def test_pin_of_missing_repository_aborts(sb):
    sb.image("x")
    with pytest.raises(GCError, match="nothing was deleted"):
        plan_gc(sb.layout, extra_roots=[("nope", Digest("a" * 64))])


def _corrupt_tag_link(sb, m):
    sb.layout.tag_current_link("r", "v").write_bytes(b"sha256:" + m.hex[:20].encode())


def _tag_to_missing_data(sb, m):
    sb.layout.blob_data(m).unlink()


def _tag_without_revision(sb, m):
    sb.layout.revision_link("r", m).unlink()


def _corrupt_manifest(sb, m):
    sb.layout.blob_data(m).write_bytes(b"{not json")


def _unknown_manifest(sb, m):
    sb.layout.blob_data(m).write_bytes(b'{"schemaVersion": 2, "blobs": []}')


def _missing_index_child(sb, m):
    child = sb.image("r", salt="child")
    idx = sb.index("r", [child])
    sb.tag("r", "multi", idx)
    sb.layout.revision_link("r", child).unlink()


def _corrupt_revision_link(sb, m):
    sb.layout.revision_link("r", m).write_bytes(b"sha256:" + b"0" * 64)


def _tag_without_current(sb, m):
    sb.layout.tag_index("r", "ghost").mkdir(parents=True)


@pytest.mark.parametrize(
    "breakage",
    [
        _corrupt_tag_link,
        _tag_to_missing_data,
        _tag_without_revision,
        _corrupt_manifest,
        _unknown_manifest,
        _missing_index_child,
        _corrupt_revision_link,
        _tag_without_current,
    ],
)
def test_marking_errors_abort_with_nothing_deleted(sb, breakage):
    m = sb.image("r", salt="1")
    sb.tag("r", "v", m)
    sb.image("dropped")  # something GC would otherwise delete
    sb.upload("r")
    breakage(sb, m)
    before = snapshot(sb)
    with pytest.raises(GCError) as e:
        plan_gc(sb.layout)
    assert "nothing was deleted" in str(e.value)
    assert str(sb.layout.v2) in str(e.value)  # names the file
    assert snapshot(sb) == before


def test_stale_uploads_removed_in_kept_and_dropped_repos(sb):
    m = sb.image("r")
    sb.tag("r", "v", m)
    sb.upload("r")
    sb.upload("gone")
    plan = gc(sb)
    assert not sb.layout.uploads("r").exists()
    assert not sb.layout.repo("gone").exists()
    assert plan.bytes_freed >= 2 * len(b"partial")


def test_dry_run_changes_nothing_and_plan_is_typed(sb):
    m = sb.image("r", salt="1")
    sb.tag("r", "v", m, history=[sb.image("r", salt="0")])
    sb.image("other")
    before = snapshot(sb)
    plan = plan_gc(sb.layout)
    assert snapshot(sb) == before
    assert plan.deletions == tuple(
        sorted(plan.deletions, key=lambda d: (list(DeletionKind).index(d.kind), d.path))
    )
    assert plan.kept_blobs == {m, *layers_of(sb, "r", "1")}
    assert plan.counts.blobs == 9 and plan.counts.blobs_kept == 3 and plan.counts.blobs_deleted == 6
    assert plan.bytes_freed == sum(d.size for d in plan.deletions) > 0
    assert "delete 6 blobs" in plan.summary() and "\n" not in plan.summary()


def test_apply_of_a_stale_plan_twice_is_harmless(sb):
    sb.image("gone")
    m = sb.image("r")
    sb.tag("r", "v", m)
    plan = plan_gc(sb.layout)
    first = apply_gc(plan)
    second = apply_gc(plan)
    assert first.deleted == len(plan.deletions) and second.deleted == 0
    assert first.bytes_freed == plan.bytes_freed


def test_empty_storage(sb):
    plan = gc(sb)
    assert plan.counts.blobs == 0 and plan.deletions == ()


def test_gc_after_prune_drops_everything_not_resynced(sb):
    # The pipeline prunes every `_manifests`, re-pushes listed manifests, then GCs.
    keep = sb.image("keep", salt="1")
    sb.image("drop", salt="1")
    import shutil

    for name in ("keep", "drop"):
        shutil.rmtree(sb.layout.manifests(name))
    sb.revision("keep", keep)
    sb.tag("keep", "v", keep)
    gc(sb)
    assert sb.files() == image_files("keep", keep, layers_of(sb, "keep", "1")) | tag_paths("keep", "v", keep)


def test_string_paths_agree_with_layout(sb):
    layout, s, d = sb.layout, sb.layout.strings(), Digest("ab" * 32)
    assert s.blob_dir(d.hex) == str(layout.blob_dir(d)) and s.blob_data(d.hex) == str(layout.blob_data(d))
    for name in ("a", "lib/a/b"):
        assert s.repo(name) == str(layout.repo(name))
        assert s.layers(name) == str(layout.layers(name))
        assert s.layer_link(name, d.hex) == str(layout.layer_link(name, d))
        assert s.revisions(name) == str(layout.revisions(name))
        assert s.revision_link(name, d.hex) == str(layout.revision_link(name, d))
        assert s.tags(name) == str(layout.tags(name))
        assert s.tag_dir(name, "t") == str(layout.tag_dir(name, "t"))
        assert s.tag_current_link(name, "t") == str(layout.tag_current_link(name, "t"))
        assert s.tag_index(name, "t") == str(layout.tag_index(name, "t"))
        assert s.uploads(name) == str(layout.uploads(name))


def test_odd_entries_are_deleted_too(sb):
    m = sb.image("r")
    sb.tag("r", "v", m)
    old = sb.image("r", salt="old")
    (sb.layout.revision_link("r", old).parent / "extra").write_bytes(b"x")  # dir with two files
    (sb.layout.revisions("r") / ("0" * 64)).write_bytes(b"a file where a dir belongs")
    empty_rev = sb.layout.revisions("r") / ("1" * 64)
    empty_rev.mkdir()  # a revision dir without its link
    gc(sb)
    assert sorted(os.listdir(sb.layout.revisions("r"))) == [m.hex]


def test_link_that_is_a_directory_aborts_marking(sb):
    m = sb.image("r")
    sb.tag("r", "v", m)
    link = sb.layout.tag_current_link("r", "v")
    link.unlink()
    link.mkdir()  # a directory where the link file belongs: EISDIR on read
    before = snapshot(sb)
    with pytest.raises(GCError, match="nothing was deleted"):
        plan_gc(sb.layout)
    assert snapshot(sb) == before


# --- a keep set: mark from named tags only (archive retention, attached artifacts) -----------
def test_keep_set_deletes_every_tag_it_does_not_name_and_what_only_they_reached(sb):
    kept = sb.image("app", salt="kept")
    dropped = sb.image("app", salt="dropped")
    other = sb.image("other", salt="x")
    sb.tag("app", "2.0", kept)
    sb.tag("app", "1.0", dropped)
    sb.tag("other", "1", other)
    plan = gc(sb, keep=KeepSet(tags=frozenset({("app", "2.0")})))
    assert sb.files() == image_files("app", kept, layers_of(sb, "app", "kept")) | tag_paths(
        "app", "2.0", kept
    )
    assert plan.counts.tags_deleted == 2  # app:1.0 and other:1, which goes with its repository
    assert [d.path for d in plan.deletions if d.kind is DeletionKind.TAG] == [
        sb.layout.strings().tag_dir("app", "1.0")
    ]
    assert plan.removed_repositories == ("other",)
    assert plan.missing == ()


def test_keep_set_reports_what_it_names_but_the_tree_lacks(sb):
    kept = sb.image("app", salt="kept")
    sb.tag("app", "2.0", kept)
    absent = Digest("f" * 64)
    plan = plan_gc(
        sb.layout,
        keep=KeepSet(
            tags=frozenset({("app", "2.0"), ("app", "9.9"), ("gone", "1")}),
            digests=frozenset({("app", absent)}),
        ),
    )
    assert plan.missing == ("app:9.9", f"app@{absent}", "gone:1")


def test_keep_set_keeps_an_untagged_digest_and_what_it_reaches(sb):
    pinned = sb.image("app", salt="pinned")
    tagged = sb.image("app", salt="tagged")
    sb.tag("app", "1", tagged)
    gc(sb, keep=KeepSet(digests=frozenset({("app", pinned)})))
    assert sb.files() == image_files("app", pinned, layers_of(sb, "app", "pinned"))
