import json

from layover.report import ImageCopy, ReleaseReport, StageReport
from layover.units import human_bytes


def _report():
    copies = [
        ImageCopy("a:1", "sha256:" + "1" * 64, 3, 1, 3 * 1024 * 1024, 0.5),
        ImageCopy("b:1", None, 0, 4, 0, 0.2, attempts=2),
    ]
    return ReleaseReport(
        list_source="rel.list",
        list_commit="f" * 40,
        images=2,
        output="/o/r.tar",
        sha256="e" * 64,
        tarball_bytes=10 * 1024 * 1024,
        stages=(StageReport.from_copies("archive sync", 1.25, copies), StageReport("gc", 0.5, detail="x")),
    )


def test_stage_totals_from_copies():
    s = _report().stages[0]
    assert (s.images, s.blobs_copied, s.blobs_reused, s.bytes_moved) == (2, 3, 5, 3 * 1024 * 1024)
    assert s.detail == "0.70 s in copies, 1 image(s) moved no blob, 1 retried attempt(s)"


def test_renderings_carry_the_numbers():
    r = _report()
    text, md = r.to_text(), r.to_markdown()
    for out in (text, md):
        assert "archive sync" in out and "3.0 MiB" in out and "f" * 40 in out and "1.75" in out
    assert md.count("\n| ") >= 3
    meta = json.loads(r.to_json())
    assert meta["list_commit"] == "f" * 40 and meta["stages"][0]["blobs_copied"] == 3


def test_human_bytes():
    assert [human_bytes(n) for n in (5, 2048, 5 * 1024**3)] == ["5 B", "2.0 KiB", "5.0 GiB"]


def test_a_blob_two_copies_uploaded_counts_once():
    shared, own = ("a" * 64, 100), ("b" * 64, 5)
    copies = [
        ImageCopy("x:1", None, 2, 0, 105, 0.1, copied=(shared, own)),
        ImageCopy("y:1", None, 1, 1, 100, 0.1, copied=(shared,)),
    ]
    s = StageReport.from_copies("archive sync", 0.2, copies)
    assert (s.blobs_copied, s.bytes_moved) == (2, 105)


def test_the_json_report_has_each_image_of_a_copying_stage():
    doc = json.loads(_report().to_json())
    sync = doc["stages"][0]
    assert [(c["image"], c["attempts"]) for c in sync["copies"]] == [("a:1", 1), ("b:1", 2)]
    assert all(c["copied"] == [] for c in sync["copies"])  # blob lists stay out of the report
    assert doc["stages"][1]["copies"] == []
