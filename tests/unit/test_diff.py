"""`layover diff`: images matched per repository, and the bytes a customer on OLD still needs."""

from __future__ import annotations

import hashlib
import json

from layover.contents import Contents, Image, assemble
from layover.diff import diff


def _d(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _image(reference: str, blobs: dict[str, int]) -> Image:
    repo, _, tag = reference.partition(":")
    top = _d(f"manifest {reference} {sorted(blobs)}")
    return Image(
        reference=reference,
        repository=repo,
        tag=tag,
        digest=top,
        media_type=None,
        manifests=(top,),
        blobs=tuple(sorted(_d(b) for b in blobs)),
    )


def _contents(name: str, *images: tuple[str, dict[str, int]]) -> Contents:
    built = [_image(ref, blobs) for ref, blobs in images]
    sizes = {_d(b): n for _, blobs in images for b, n in blobs.items()}
    sizes.update({img.digest: 100 for img in built})
    return assemble(built, list_source=name, list_commit=None, sizes=sizes)


OLD = _contents(
    "r1.list",
    ("base/os:1", {"os": 1000}),
    ("web:1.0", {"os": 1000, "web-1": 50}),
    ("batch:3", {"os": 1000, "batch": 70}),
    ("same:1", {"os": 1000, "same": 5}),
    ("moved:latest", {"os": 1000, "m1": 9}),
)
NEW = _contents(
    "r2.list",
    ("base/os:1", {"os": 1000}),
    ("web:1.1", {"os": 1000, "web-2": 60}),
    ("search:1", {"os": 1000, "search": 80}),
    ("same:1", {"os": 1000, "same": 5}),
    ("moved:latest", {"os": 1000, "m2": 11}),
)


def test_added_removed_changed_and_unchanged():
    report = diff(OLD, NEW)
    kinds = {c.repository: c.kind for c in report.changes}
    assert kinds == {
        "base/os": "unchanged",
        "web": "changed",
        "batch": "removed",
        "search": "added",
        "same": "unchanged",
        "moved": "changed",
    }
    web = next(c for c in report.changes if c.repository == "web")
    assert (web.old.reference, web.new.reference) == ("web:1.0", "web:1.1")


def test_bytes_still_needed_are_the_new_blobs_old_lacks():
    report = diff(OLD, NEW)
    old = {b.digest for b in OLD.blobs}
    need = [b for b in NEW.blobs if b.digest not in old]
    assert report.blobs_needed == len(need) == 6  # web-2, search, m2 and three new manifests
    assert report.bytes_needed == 60 + 80 + 11 + 3 * 100
    assert report.new_bytes == sum(b.size for b in NEW.blobs)


def test_a_package_against_itself_needs_nothing():
    report = diff(NEW, NEW)
    assert report.bytes_needed == 0 and {c.kind for c in report.changes} == {"unchanged"}
    assert "0 added, 0 removed, 0 changed, 5 unchanged" in report.to_text()


def test_text_and_json_say_the_same():
    report = diff(OLD, NEW)
    doc = json.loads(report.to_json())
    assert doc["counts"] == {"added": 1, "removed": 1, "changed": 2, "unchanged": 2}
    assert doc["bytes_needed"] == report.bytes_needed
    text = report.to_text()
    assert "+ search:1" in text and "- batch:3" in text and "~ web:1.0 -> web:1.1" in text
