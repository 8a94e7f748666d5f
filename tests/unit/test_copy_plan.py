"""SkopeoCopier's planning on a storage tree: which images need no copy (and which need no probe
to say so), and the order the others are copied in."""

from __future__ import annotations

from layover.copy import Route, SkopeoCopier
from layover.reference import Digest, ImageRef
from tests.unit.storage_builder import StorageBuilder


class Probe:
    """The source's answer per repository, and which repositories were asked."""

    def __init__(self, digests: dict[str, Digest]) -> None:
        self.digests = digests
        self.asked: list[str] = []

    def digest(self, ref: ImageRef) -> Digest | None:
        self.asked.append(ref.repository)
        return self.digests.get(ref.repository)


def copier(sb: StorageBuilder, probe: Probe) -> SkopeoCopier:
    return SkopeoCopier(Route("ci.test", "127.0.0.1:5000", sb.root), probe)


def test_an_archived_digest_is_not_copied_and_a_tag_the_archive_lacks_is_not_probed(tmp_path):
    sb = StorageBuilder(tmp_path)
    kept = sb.image("apps/kept", [b"kept layer"])
    sb.tag("apps/kept", "1", kept)
    moved = sb.image("apps/moved", [b"old layer"])
    sb.tag("apps/moved", "1", moved)
    probe = Probe({"apps/kept": kept, "apps/moved": Digest("a" * 64), "apps/new": Digest("b" * 64)})
    c = copier(sb, probe)
    done = c.already_there(ImageRef.parse("apps/kept:1"))
    assert done is not None and done.manifest_digest == str(kept) and done.blobs_reused == 2
    assert c.already_there(ImageRef.parse("apps/moved:1")) is None  # the tag moved at the source
    assert c.already_there(ImageRef.parse("apps/new:1")) is None
    assert c.already_there(ImageRef.parse("apps/kept:2")) is None  # a tag the archive lacks
    assert probe.asked == ["apps/kept", "apps/moved"]  # the copy asks the source itself


def test_images_of_repositories_the_archive_lacks_are_copied_first_the_rest_as_listed(tmp_path):
    sb = StorageBuilder(tmp_path)
    for repo in ("apps/a", "apps/c"):
        sb.tag(repo, "1", sb.image(repo))
    refs = [ImageRef.parse(f"{r}:2") for r in ("apps/a", "apps/b", "apps/c", "apps/d")]
    order = copier(sb, Probe({})).copy_order(refs)
    assert [r.repository for r in order] == ["apps/b", "apps/d", "apps/a", "apps/c"]
