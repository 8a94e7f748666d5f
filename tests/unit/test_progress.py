"""The progress interface: one current sink, a tee, and a stage that reports its end."""

from __future__ import annotations

import pytest

from layover import progress


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage_started(self, stage, *, images=0, bytes_total=None):
        self.events.append(("start", stage, images, bytes_total))

    def image_started(self, stage, image):
        self.events.append(("in flight", stage, image))

    def image_done(self, stage, image, *, bytes_copied=0, ok=True):
        self.events.append(("done", stage, image, bytes_copied, ok))

    def stage_finished(self, stage, *, ok=True):
        self.events.append(("end", stage, ok))


def test_the_current_sink_is_null_until_someone_listens_and_is_restored_after():
    assert progress.current() is progress.NULL
    rec = Recorder()
    with progress.reporting_to(rec):
        assert progress.current() is rec
    assert progress.current() is progress.NULL


def test_a_tee_forwards_everything_to_every_sink_and_a_stage_reports_its_end():
    a, b = Recorder(), Recorder()
    with progress.reporting_to(progress.Tee(a, b)), progress.stage("archive sync", images=2) as sink:
        sink.image_started("archive sync", "a:1")
        sink.image_done("archive sync", "a:1", bytes_copied=10)
    assert (
        a.events
        == b.events
        == [
            ("start", "archive sync", 2, None),
            ("in flight", "archive sync", "a:1"),
            ("done", "archive sync", "a:1", 10, True),
            ("end", "archive sync", True),
        ]
    )


def test_a_stage_that_raises_reports_its_end_as_failed():
    rec = Recorder()
    with progress.reporting_to(rec), pytest.raises(RuntimeError), progress.stage("gc"):
        raise RuntimeError("boom")
    assert rec.events[-1] == ("end", "gc", False)
