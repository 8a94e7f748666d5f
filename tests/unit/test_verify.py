from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from layover.errors import VerifyError
from layover.imagelist import parse_text
from layover.reference import Digest
from layover.storage.gc import plan_gc
from layover.storage.vacuum import apply_gc
from layover.storage.verify import ProblemKind, verify_storage, verify_tarball
from tests.unit.storage_builder import StorageBuilder, digest_of


class Tree:
    """A packaged tree serving exactly `images`, as the pipeline leaves it after GC."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        sb = self.sb = StorageBuilder(tmp_path / "storage")
        self.app = sb.image("app", layers=[b"base", b"app"], salt="1")
        sb.tag("app", "1.0", self.app)
        amd = sb.image("multi", layers=[b"base", b"amd"], oci=True, salt="amd")
        arm = sb.image("multi", layers=[b"base", b"arm"], oci=True, salt="arm")
        self.multi = sb.index("multi", [amd, arm])
        sb.tag("multi", "2", self.multi)
        self.pinned = sb.image("lib/pinned", layers=[b""], config=b"{}", foreign=["sha256:" + "f" * 64])
        self.tp = sb.image("lib", salt="tp")
        sb.tag("lib", "v", self.tp)
        self.text = f"app:1.0\nmulti:2\nlib/pinned@{self.pinned}\nlib:v@{self.tp}  # pinned tag\n"
        self.images = parse_text(self.text)
        apply_gc(plan_gc(sb.layout, extra_roots=[("lib/pinned", self.pinned)]))

    def verify(self, mode: str, images=None):
        images = images or self.images
        if mode == "dir":
            return verify_storage(self.sb.layout, images, workers=2)
        tar = self.tmp / "release.tar.gz"
        with tarfile.open(tar, "w:gz") as tf:
            tf.add(self.sb.layout.root / "docker", arcname="./docker")
        return verify_tarball(tar, images)


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)


MODES = ["dir", "tar"]


@pytest.mark.parametrize("mode", MODES)
def test_good_tree_passes(tree, mode):
    report = tree.verify(mode)
    assert report.ok, report.summary()
    assert report.images == 4
    assert report.manifests == 6
    assert report.blobs == len([f for f in tree.sb.files() if f.startswith("blobs/")])
    assert report.bytes_hashed == sum(
        (tree.sb.layout.v2 / f).stat().st_size for f in tree.sb.files() if f.startswith("blobs/")
    )
    report.raise_for_problems()
    assert json.loads(report.to_json())["ok"] is True
    assert "OK" in report.summary().splitlines()[0]


def kinds(report) -> set[ProblemKind]:
    return {p.kind for p in report.problems}


def _missing_blob(t):
    t.sb.layout.blob_data(digest_of(b"amd")).unlink()
    return {ProblemKind.MISSING_BLOB, ProblemKind.STRAY}  # and its dir is now a stray


def _corrupt_blob_same_size(t):
    path = t.sb.layout.blob_data(digest_of(b"base"))
    path.write_bytes(b"BASE")
    return {ProblemKind.DIGEST_MISMATCH}


def _missing_layer_link(t):
    link = t.sb.layout.layer_link("app", digest_of(b"app"))
    link.unlink()
    return {ProblemKind.MISSING_LINK}


def _missing_revision(t):
    t.sb.layout.revision_link("lib/pinned", t.pinned).unlink()
    return {ProblemKind.MISSING_MANIFEST}


def _extra_repo(t):
    m = t.sb.image("extra", salt="x")
    t.sb.tag("extra", "1", m)
    return {ProblemKind.EXTRA_REPOSITORY, ProblemKind.UNREFERENCED_BLOB}


def _extra_tag(t):
    t.sb.tag("app", "other", t.app)
    return {ProblemKind.EXTRA_TAG}


def _unreferenced_blob(t):
    t.sb.blob(b"stray")
    return {ProblemKind.UNREFERENCED_BLOB}


def _uploads(t):
    t.sb.upload("app")
    return {ProblemKind.UPLOADS}


def _missing_tag(t):
    shutil.rmtree(t.sb.layout.tag_dir("multi", "2"))
    # what only the tag reached: its blobs, its revisions and its links
    return {
        ProblemKind.MISSING_TAG,
        ProblemKind.UNREFERENCED_BLOB,
        ProblemKind.EXTRA_REVISION,
        ProblemKind.EXTRA_LINK,
    }


def _moved_pinned_tag(t):
    t.sb.tag("lib", "v", t.app)
    t.sb.revision("lib", t.app)
    return {
        ProblemKind.TAG_MISMATCH,
        ProblemKind.MISSING_LINK,
        ProblemKind.UNREFERENCED_BLOB,
        ProblemKind.EXTRA_REVISION,
        ProblemKind.EXTRA_LINK,  # what the old digest reached
        ProblemKind.STALE_TAG_INDEX,
    }


def _corrupt_tag_link(t):
    t.sb.layout.tag_current_link("app", "1.0").write_bytes(b"sha256:abc")
    return {
        ProblemKind.CORRUPT_LINK,
        ProblemKind.UNREFERENCED_BLOB,
        ProblemKind.EXTRA_REVISION,
        ProblemKind.EXTRA_LINK,
    }


def _missing_index_child(t):
    d = json.loads(t.sb.layout.blob_data(t.multi).read_bytes())["manifests"][0]["digest"]
    shutil.rmtree(t.sb.layout.revision_link("multi", Digest.parse(d)).parent)
    return {ProblemKind.MISSING_MANIFEST}


def _extra_revision(t):
    # a GC that forgot an old revision (its blobs are still referenced by the current image)
    t.sb.revision("app", t.tp)
    return {ProblemKind.EXTRA_REVISION}


def _extra_layer_link(t):
    t.sb.link_layer("app", digest_of(b"amd"))
    return {ProblemKind.EXTRA_LINK}


def _stale_tag_index(t):
    t.sb.tag("app", "1.0", t.app, history=[t.tp])
    return {ProblemKind.STALE_TAG_INDEX}


def _missing_repository(t):
    shutil.rmtree(t.sb.layout.repo("app"))
    return {ProblemKind.MISSING_REPOSITORY, ProblemKind.UNREFERENCED_BLOB}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "breakage",
    [
        _missing_blob,
        _corrupt_blob_same_size,
        _missing_layer_link,
        _missing_revision,
        _extra_repo,
        _extra_tag,
        _unreferenced_blob,
        _uploads,
        _missing_tag,
        _moved_pinned_tag,
        _corrupt_tag_link,
        _missing_index_child,
        _missing_repository,
        _extra_revision,
        _extra_layer_link,
        _stale_tag_index,
    ],
)
def test_each_problem_reported(tree, mode, breakage):
    expected = breakage(tree)
    report = tree.verify(mode)
    assert not report.ok
    assert kinds(report) == expected, report.summary(limit=20)
    with pytest.raises(VerifyError) as e:
        report.raise_for_problems(limit=1)
    assert "Do not ship" in str(e.value)
    doc = json.loads(report.to_json())
    assert doc["ok"] is False and {p["kind"] for p in doc["problems"]} == {k.value for k in expected}


def test_raise_lists_first_n(tree):
    for i in range(5):
        tree.sb.blob(f"stray {i}".encode())
    report = tree.verify("dir")
    with pytest.raises(VerifyError) as e:
        report.raise_for_problems(limit=2)
    msg = str(e.value)
    assert msg.count("unreferenced-blob") == 2 and "and 3 more" in msg


@pytest.mark.parametrize("mode", MODES)
def test_large_blob_hashed_across_chunks(tree, mode):
    big = bytes(range(256)) * (10 * 1024 + 7)  # ~2.5 MiB: several 1 MiB reads
    m = tree.sb.image("big", layers=[big], salt="big")
    tree.sb.tag("big", "1", m)
    images = parse_text(tree.text + "big:1\n")
    assert tree.verify(mode, images).ok
    path = tree.sb.layout.blob_data(digest_of(big))
    with open(path, "r+b") as f:  # flip the very last byte: same size, wrong content
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    report = tree.verify(mode, images)
    assert kinds(report) == {ProblemKind.DIGEST_MISMATCH}
    assert report.problems[0].path.endswith(f"{digest_of(big).hex}/data")


def test_tarball_member_names_with_a_leading_directory(tree, tmp_path):
    tar = tmp_path / "nested.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(tree.sb.layout.root / "docker", arcname="release-1/docker")
    assert verify_tarball(tar, tree.images).ok


def test_tarball_with_a_file_outside_the_tree(tree, tmp_path):
    (tmp_path / "README").write_text("hi")
    tar = tmp_path / "extra.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(tree.sb.layout.root / "docker", arcname="docker")
        tf.add(tmp_path / "README", arcname="README")
    assert kinds(verify_tarball(tar, tree.images)) == {ProblemKind.STRAY}


def test_unreadable_tarball_is_a_storage_error(tmp_path, tree):
    from layover.errors import StorageError

    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    with pytest.raises(StorageError, match="rebuild it"):
        verify_tarball(bad, tree.images)
