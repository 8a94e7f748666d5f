from layover import imagelist
from layover.reference import Digest, ImageRef
from layover.storage.images import mismatches, pinned_roots, resolve
from layover.storage.layout import StorageLayout, write_link
from layover.storage.prune import prune_manifests

D1, D2 = Digest("1" * 64), Digest("2" * 64)


def _tree(root, tag_digest):
    lay = StorageLayout(root)
    for repo in ("lib", "lib/a", "x"):
        write_link(lay.layer_link(repo, D1), D1)
    write_link(lay.tag_current_link("lib/a", "1"), tag_digest)
    write_link(lay.revision_link("lib/a", tag_digest), tag_digest)
    return lay


def test_prune_removes_only_manifests_and_keeps_nested_repos(tmp_path):
    lay = _tree(tmp_path, D2)
    result = prune_manifests(lay, lay)  # no overlay: the package view is the tree itself
    assert (result.repositories, result.pruned) == (3, 1)
    assert not lay.manifests("lib/a").exists()
    assert lay.layer_link("lib", D1).is_file() and lay.layer_link("lib/a", D1).is_file()


def test_resolve_and_mismatch(tmp_path):
    archive, package = _tree(tmp_path / "a", D2), _tree(tmp_path / "p", D1)
    listed = imagelist.parse_text("lib/a:1\n")
    assert resolve(archive, ImageRef.parse("lib/a:1")) == D2
    assert resolve(archive, ImageRef.parse("lib/a:2")) is None
    assert resolve(archive, ImageRef.parse(f"lib/a@{D2}")) == D2
    assert mismatches(archive, archive, listed) == []
    (problem,) = mismatches(archive, package, listed)
    assert "package serves" in problem and str(D2) in problem


def test_digest_only_entries_are_gc_roots():
    listed = imagelist.parse_text(f"a:1\nb@{D1}\nc:2@{D2}\n")
    assert pinned_roots(listed) == [("b", D1)]
