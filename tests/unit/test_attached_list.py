"""What a release ships of attached artifacts (layover.attached): the package's list built from the
images.list and the discovered attachments, the `require` check, and the report's counts.

Discovery runs for real over the in-memory registry (tests/fake_registry.py) with the fixture's
real artifact formats; only the registry is fake.
"""

from __future__ import annotations

import json

import pytest

from layover.attached import (
    AttachedRecord,
    ListedAttachments,
    attached_refs,
    contents_attached,
    cosign_tag,
    discover,
    package_list,
    referrers_tag,
    report_rows,
)
from layover.attached_sync import AttachedCopy, sync_attached
from layover.errors import EXIT_INPUT, MissingSignatureError
from layover.imagelist import ImageList, parse_text
from layover.reference import Digest, ImageRef
from layover.report import ReleaseReport, StageReport
from layover.testing.attached import (
    Signer,
    cosign_attestation,
    cosign_signature,
    referrers_index,
    spdx_sbom,
)
from tests.fake_registry import FakeRegistry
from tests.unit.test_attached import REPO, push, push_image, subject_of

SIGNER = Signer("unit-list")


def record_for(reg: FakeRegistry, text: str, mode: str = "copy") -> tuple[AttachedRecord, object]:
    images = parse_text(text, "release.list")
    entries = tuple(ListedAttachments(ref, discover(reg, ref)) for ref in images.refs)
    return AttachedRecord(mode, entries), images  # type: ignore[arg-type]


def fully_attached(reg: FakeRegistry, image: Digest):
    """A signature and an attestation by cosign tag, an SPDX SBOM through the tag schema and a
    signature on the SBOM: what layover.testing.attached.attach_all pushes."""
    sig = cosign_signature(SIGNER, REPO, image)
    att = cosign_attestation(SIGNER, REPO, image)
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    sbom_sig = cosign_signature(SIGNER, REPO, sbom.digest)
    index = referrers_index(REPO, image, [sbom])
    push(reg, sig, att, sbom, sbom_sig, index)
    return sig, att, sbom, sbom_sig, index


def test_attached_refs_pin_every_tag_and_what_the_tag_schema_index_reaches_is_not_repeated():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    sig, att, sbom, sbom_sig, index = fully_attached(reg, image)
    found = discover(reg, ImageRef(REPO, "1.0"))
    refs = attached_refs(found)
    assert set(refs) == {
        ImageRef(REPO, sig.tag, sig.digest),
        ImageRef(REPO, att.tag, att.digest),
        ImageRef(REPO, sbom_sig.tag, sbom_sig.digest),
        ImageRef(REPO, referrers_tag(image), index.digest),  # reaches the SBOM: not listed again
    }
    assert len(refs) == 4 and sbom.digest in found.digests


def test_a_referrer_from_the_referrers_api_is_listed_by_digest():
    reg = FakeRegistry(referrers_api=True)
    image, _ = push_image(reg)
    sbom = spdx_sbom(REPO, subject_of(reg, image))
    push(reg, sbom)
    assert attached_refs(discover(reg, ImageRef(REPO, "1.0"))) == (ImageRef(REPO, None, sbom.digest),)


def test_package_list_is_the_list_then_the_attachments_once_each():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    fully_attached(reg, image)
    push_image(reg, "2.0")  # unsigned
    reg.put(REPO, reg.manifest(REPO, image)[0], "application/vnd.oci.image.manifest.v1+json", "latest")
    record, images = record_for(reg, f"{REPO}:1.0\n{REPO}:latest\n{REPO}:2.0\n")
    shipped = package_list(images, record)  # type: ignore[arg-type]
    assert shipped.refs[:3] == images.refs  # type: ignore[attr-defined]
    extra = shipped.refs[3:]
    # 1.0 and latest are one digest: its four attachment tags appear once
    assert len(extra) == 4 and len(set(extra)) == 4
    assert all(r.repository == REPO and r.digest is not None for r in extra)
    assert [e.line for e in shipped.entries[3:]] == [0] * 4  # discovered, not listed
    assert shipped.source == "release.list"
    # nothing attached: the package's list is the list
    none, images = record_for(reg, f"{REPO}:2.0\n")
    assert package_list(images, none) == images  # type: ignore[arg-type]


def test_a_tag_the_list_already_names_stays_the_lists():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    sig, *_ = fully_attached(reg, image)
    record, images = record_for(reg, f"{REPO}:1.0\n{REPO}:{sig.tag}\n")
    shipped = package_list(images, record)  # type: ignore[arg-type]
    assert [r for r in shipped.refs if r.tag == sig.tag] == [ImageRef(REPO, sig.tag)]


def test_mode_none_ships_exactly_the_list():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    fully_attached(reg, image)
    images = parse_text(f"{REPO}:1.0\n")
    assert package_list(images, AttachedRecord("none")) == images


def test_require_names_every_unsigned_image_one_line_each():
    reg = FakeRegistry()
    signed, _ = push_image(reg, "1.0")
    fully_attached(reg, signed)
    bare, _ = push_image(reg, "2.0")
    index, children = push_image(reg, "3.0", platforms=2)
    push(reg, cosign_signature(SIGNER, REPO, children[0]))  # only a child signed: not enough
    sbom_only, _ = push_image(reg, "4.0")
    sbom = spdx_sbom(REPO, subject_of(reg, sbom_only))
    push(reg, sbom, referrers_index(REPO, sbom_only, [sbom]), cosign_signature(SIGNER, REPO, sbom.digest))
    record, _ = record_for(reg, "".join(f"{REPO}:{t}\n" for t in ("1.0", "2.0", "3.0", "4.0")), "require")
    assert record.unsigned() == (ImageRef(REPO, "2.0"), ImageRef(REPO, "3.0"), ImageRef(REPO, "4.0"))
    with pytest.raises(MissingSignatureError) as info:
        record.require_signed()
    lines = str(info.value).splitlines()
    assert lines[0].startswith("--attached require: 3 listed image(s) have no signature at the source")
    assert lines[1:] == [
        f"{REPO}:2.0 (sha256:{bare.hex[:12]}): no signature",
        f"{REPO}:3.0 (sha256:{index.hex[:12]}): no signature",
        f"{REPO}:4.0 (sha256:{sbom_only.hex[:12]}): no signature",
    ]
    assert info.value.exit_code == EXIT_INPUT
    signed_only, _ = record_for(reg, f"{REPO}:1.0\n", "require")
    signed_only.require_signed()  # nothing raised


def test_counts_per_image_and_distinct_over_the_run():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    fully_attached(reg, image)
    reg.put(REPO, reg.manifest(REPO, image)[0], "application/vnd.oci.image.manifest.v1+json", "latest")
    push_image(reg, "2.0")
    record, _ = record_for(reg, f"{REPO}:1.0\n{REPO}:latest\n{REPO}:2.0\n")
    rows = report_rows(record)
    assert [
        (r.image, r.counts.signatures, r.counts.attestations, r.counts.sboms, r.counts.other) for r in rows
    ] == [
        (f"{REPO}:1.0", 2, 1, 1, 0),  # the image's signature and the SBOM's
        (f"{REPO}:latest", 2, 1, 1, 0),
        (f"{REPO}:2.0", 0, 0, 0, 0),
    ]
    assert (record.counts.signatures, record.counts.total) == (2, 4)  # one digest, counted once
    assert rows[0].references == tuple(str(r) for r in attached_refs(record.images[0].found))
    assert cosign_tag(image, ".sig") in rows[0].references[0]


def test_the_report_shows_counts_per_image_in_text_markdown_and_json():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    fully_attached(reg, image)
    push_image(reg, "2.0")
    record, _ = record_for(reg, f"{REPO}:1.0\n{REPO}:2.0\n")
    report = ReleaseReport(
        "release.list",
        None,
        2,
        "out.tar",
        "0" * 64,
        10,
        (StageReport("attached sync", 0.1),),
        attached=report_rows(record),
    )
    text = report.to_text().splitlines()
    at = text.index(next(line for line in text if line.startswith("attached to")))
    assert text[at].split() == ["attached", "to", "signatures", "attestations", "SBOMs", "other"]
    assert text[at + 1].split() == [f"{REPO}:1.0", "2", "1", "1", "0"]
    assert text[at + 2].split() == [f"{REPO}:2.0", "0", "0", "0", "0"]
    md = report.to_markdown()
    assert "## Attached artifacts" in md and f"| {REPO}:1.0 | 2 | 1 | 1 | 0 |" in md
    doc = json.loads(report.to_json())
    assert doc["attached"][0]["counts"] == {"signatures": 2, "attestations": 1, "sboms": 1, "other": 0}
    assert len(doc["attached"][0]["references"]) == 4
    # nothing attached anywhere: no section at all
    bare = ReleaseReport(
        "l", None, 1, "o", "0" * 64, 1, attached=report_rows(record_for(reg, f"{REPO}:2.0\n")[0])
    )
    assert "attached to" not in bare.to_text() and "Attached" not in bare.to_markdown()


def test_contents_rows_name_each_artifact_by_its_own_tag_or_digest():
    reg = FakeRegistry()
    image, _ = push_image(reg)
    sig, att, sbom, sbom_sig, _ = fully_attached(reg, image)
    push_image(reg, "2.0")
    record, _ = record_for(reg, f"{REPO}:1.0\n{REPO}:2.0\n")
    rows = contents_attached(record)
    assert list(rows) == [f"{REPO}:1.0"]  # nothing attached: no entry
    assert set(rows[f"{REPO}:1.0"]) == {
        (sig.tag, str(sig.digest), "application/vnd.oci.image.config.v1+json"),
        (att.tag, str(att.digest), "application/vnd.oci.image.config.v1+json"),
        (str(sbom.digest), str(sbom.digest), "application/spdx+json"),
        (sbom_sig.tag, str(sbom_sig.digest), "application/vnd.oci.image.config.v1+json"),
    }


# --- the stage's loop: per-image retries, every failure named --------------------------------
class FlakySyncer:
    """discover/copy over the fake registry; `fail[ref]` = errors to raise first, in order."""

    def __init__(self, reg: FakeRegistry, fail: dict[str, list[Exception]]) -> None:
        self.reg = reg
        self.fail = fail
        self.reader = reg
        self.copied: list[str] = []
        self.discovered: list[str] = []

    def _maybe_fail(self, key: str) -> None:
        pending = self.fail.get(key)
        if pending:
            raise pending.pop(0)

    def discover(self, ref: ImageRef):
        self.discovered.append(str(ref))
        self._maybe_fail(str(ref))
        return discover(self.reg, ref)

    def copy(self, entry: ListedAttachments):
        self._maybe_fail(f"copy {entry.ref}")
        self.copied.append(str(entry.ref))
        return AttachedCopy(str(entry.ref), 1, 0, 0, 0)


def _three_images() -> tuple[FakeRegistry, ImageList]:
    """Three images of one repository, only the first with anything attached."""
    reg = FakeRegistry()
    image, _ = push_image(reg)
    fully_attached(reg, image)
    push_image(reg, "2.0")
    push_image(reg, "3.0")
    return reg, parse_text(f"{REPO}:1.0\n{REPO}:2.0\n{REPO}:3.0\n")


def test_transient_failures_are_retried_per_image_and_the_rest_named_together():
    from layover.errors import AuthError, StageFailed, TransientHTTPError

    reg, images = _three_images()

    def flaky() -> TransientHTTPError:
        return TransientHTTPError("GET", "http://ci/v2/", 503, (), "", "retrying may help")

    slept: list[float] = []
    syncer = FlakySyncer(reg, {f"{REPO}:1.0": [flaky(), flaky()], f"copy {REPO}:1.0": [flaky()]})
    done = sync_attached(images, syncer, "copy", concurrency=2, retries=2, sleep=slept.append)  # type: ignore[arg-type]
    assert [e.ref for e in done.record.images] == list(images.refs)
    assert syncer.copied == [f"{REPO}:1.0"]  # the only image with something attached
    assert len(slept) == 3 and all(0.9 <= s <= 12 for s in slept)
    assert len(done.images.refs) == 3 + 4

    # out of retries on one image, a refusal on another: both named, nothing copied
    syncer = FlakySyncer(
        reg, {f"{REPO}:2.0": [flaky(), flaky(), flaky()], f"{REPO}:3.0": [AuthError("refused")]}
    )
    with pytest.raises(StageFailed) as info:
        sync_attached(images, syncer, "copy", concurrency=2, retries=2, sleep=slept.append)  # type: ignore[arg-type]
    assert [image for image, _ in info.value.failures] == [f"{REPO}:2.0", f"{REPO}:3.0"]
    assert str(info.value).startswith("attached sync: 2 image(s) failed: ")
    assert syncer.copied == []


def test_images_discovered_early_are_not_asked_again_and_an_early_failure_is_named_in_order():
    """The flow discovers archived images while archive sync copies the others
    (`discover_each`), then the stage only the rest: one record in list order either way, and
    an image whose early discovery ran out of retries is named with the stage's other failures."""
    import threading

    from layover.attached_sync import discover_each
    from layover.errors import StageFailed, TransientHTTPError

    reg, images = _three_images()
    one, two, three = images.refs

    reg.requests.clear()
    plain = sync_attached(images, FlakySyncer(reg, {}), "copy", concurrency=2)  # type: ignore[arg-type]
    reg.requests.clear()
    syncer = FlakySyncer(reg, {})
    early = discover_each([one, three], syncer, concurrency=2, retries=0)  # type: ignore[arg-type]
    assert set(early.found) == {one, three} and sorted(syncer.discovered) == sorted([str(one), str(three)])
    done = sync_attached(images, syncer, "copy", concurrency=2, early=early)  # type: ignore[arg-type]
    assert syncer.discovered[2:] == [str(two)]  # only the image early discovery did not have
    assert [e.ref for e in done.record.images] == [one, two, three]
    assert done.record.images[0].found.signed and syncer.copied == [str(one)]
    assert done.early_images == 2 and "2 image(s) in" in done.stage(1.0).detail
    assert done.requests == plain.requests  # early and late together: what one pass asks
    assert done.record == plain.record

    def flaky() -> TransientHTTPError:
        return TransientHTTPError("GET", "http://ci/v2/", 503, (), "", "retrying may help")

    syncer = FlakySyncer(reg, {str(three): [flaky(), flaky()], str(two): [flaky(), flaky()]})
    early = discover_each([three], syncer, concurrency=1, retries=1, sleep=lambda _: None)  # type: ignore[arg-type]
    assert isinstance(early.found[three], TransientHTTPError)  # retried once, then kept
    with pytest.raises(StageFailed) as info:
        sync_attached(images, syncer, "copy", concurrency=2, retries=1, sleep=lambda _: None, early=early)  # type: ignore[arg-type]
    assert [image for image, _ in info.value.failures] == [str(two), str(three)]
    assert syncer.copied == []

    stop = threading.Event()
    stop.set()  # archive sync failed: discovery starts no image
    syncer = FlakySyncer(reg, {})
    assert discover_each([one, two], syncer, concurrency=2, stop=stop).found == {}  # type: ignore[arg-type]
    assert syncer.discovered == []


def test_mode_none_asks_nothing():
    reg = FakeRegistry()
    push_image(reg)
    images = parse_text(f"{REPO}:1.0\n")
    done = sync_attached(images, FlakySyncer(reg, {}), "none", concurrency=2)  # type: ignore[arg-type]
    assert done.images == images and done.record.images == () and reg.requests == {}
    assert "--attached none" in done.stage(0.0).detail


def test_items_of_one_repository_run_one_after_another():
    import threading
    import time

    from layover.attached_sync import _outcomes

    busy: dict[str, int] = {}
    most: dict[str, int] = {}
    lock = threading.Lock()

    def work(item: tuple[str, int]) -> int:
        repo, n = item
        with lock:
            busy[repo] = busy.get(repo, 0) + 1
            most[repo] = max(most.get(repo, 0), busy[repo])
        time.sleep(0.01)
        with lock:
            busy[repo] -= 1
        return n

    items = [(repo, n) for n in range(4) for repo in ("a", "b", "c")]
    got = _outcomes(items, work, str, 6, 0, lambda _: None, lambda _: None, serial=lambda i: i[0])
    assert got == [n for _, n in items]  # in order
    assert most == {"a": 1, "b": 1, "c": 1}
    most.clear()
    _outcomes(items, work, str, 6, 0, lambda _: None, lambda _: None)
    assert max(most.values()) > 1  # without a serial key they do overlap
