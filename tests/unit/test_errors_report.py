"""How failures are said: one line per failed image with its cause class and the essential
detail, hints once, the long text only in the run's log; exit codes per cause."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from layover.adapters import skopeo
from layover.adapters.runlog import KEEP, write_failure_log
from layover.errors import (
    AuthError,
    DiskFullError,
    ImageNotFoundError,
    Interrupted,
    LayoverError,
    PreflightFailed,
    SourceUnreachableError,
    StageFailed,
    StorageError,
    TLSError,
    TransientCommandError,
    UsageError,
    brief,
    cause,
    signal_of,
)

DATA = Path(__file__).parent / "data" / "skopeo"


def _skopeo_error(name: str) -> LayoverError:
    return skopeo.classify(("skopeo", "copy"), 1, (DATA / f"{name}.stderr").read_text())


def test_each_failure_class_has_a_cause_and_an_exit_code():
    cases = [
        (ImageNotFoundError("x"), "not found", 3),
        (AuthError("x"), "unauthorized", 3),
        (TLSError("x"), "TLS", 3),
        (TransientCommandError(["skopeo"], 1, "boom"), "network", 1),
        (SourceUnreachableError("x"), "network", 4),
        (DiskFullError("x"), "disk", 5),
        (StorageError("/p", "bad link"), "damaged archive", 6),
        (UsageError("x"), "usage", 2),
        (Interrupted("x", signal.SIGTERM), "interrupted", 143),
    ]
    for err, want_cause, code in cases:
        assert (cause(err), err.exit_code) == (want_cause, code), type(err).__name__
    assert cause(ValueError("x")) == "failed"


def test_a_failed_stage_says_one_line_per_image_and_each_hint_once():
    failures = [(f"team/app{i}:1", _skopeo_error("src_manifest_unknown_repo")) for i in range(3)]
    failures.append(("team/private:1", _skopeo_error("src_401_unauthorized")))
    err = StageFailed("archive sync: 4 of 12 image(s) failed", failures)
    lines = err.lines()
    assert lines[0] == (
        "team/app0:1: not found: reading manifest v1 in 127.0.0.1:15501/lib/missing: manifest unknown"
    )
    assert lines[3].startswith("team/private:1: unauthorized: reading manifest v1")
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) == 2 and "check the reference in images.list" in hints[0]
    assert all("level=fatal" not in line and "time=" not in line for line in lines)
    assert str(err).splitlines() == ["archive sync: 4 of 12 image(s) failed", *lines]
    assert err.exit_code == 3  # every image failed for an input reason


def test_a_failed_stage_caps_its_lines_and_says_how_many_it_left_out():
    failures = [(f"a/b{i}:1", ImageNotFoundError("gone")) for i in range(25)]
    lines = StageFailed("x", failures).lines(limit=20)
    assert lines[20] == "... and 5 more image(s)"


def test_brief_is_one_line_without_the_hint():
    err = AuthError("refused\n  twice", hint="log in")
    assert str(err) == "refused\n  twice (log in)"
    assert brief(err) == "refused twice"
    assert len(brief(LayoverError("x" * 1000), 100)) == 100


def test_preflight_failed_exits_with_the_first_problems_code():
    err = PreflightFailed([UsageError("--output x: is a directory"), SourceUnreachableError("down")])
    assert err.exit_code == 2
    assert err.lines() == ["--output x: is a directory", "down"]


def test_signals_behind_the_exceptions_that_stop_a_run():
    class TerminationSignal(BaseException):  # prefect.exceptions.TerminationSignal's shape
        def __init__(self, signal: int) -> None:
            self.signal = signal

    assert signal_of(KeyboardInterrupt()) == signal.SIGINT
    assert signal_of(TerminationSignal(signal.SIGTERM)) == signal.SIGTERM
    assert signal_of(Interrupted("x", signal.SIGTERM)) == signal.SIGTERM
    assert signal_of(RuntimeError("x")) is None


def test_the_run_log_keeps_skopeos_text_one_section_per_image(tmp_path):
    failures = [("team/app:1", _skopeo_error("src_manifest_unknown_repo"))]
    path = write_failure_log(tmp_path / "logs", "release-1.list from ci:5000", StageFailed("x", failures))
    assert path is not None
    text = path.read_text()
    assert "== team/app:1: not found: reading manifest v1" in text
    assert 'level=fatal msg="initializing source' in text  # the whole stderr, for the curious


def test_the_run_log_is_skipped_when_there_is_nothing_more_to_say_and_old_logs_go(tmp_path):
    assert write_failure_log(tmp_path, "r", UsageError("x")) is None
    for i in range(KEEP + 3):
        (tmp_path / f"2020010{i:02d}.log").write_text("old")
    assert write_failure_log(tmp_path, "r", LayoverError("x", detail="long text")) is not None
    assert len(list(tmp_path.glob("*.log"))) == KEEP


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_a_failed_runs_report_says_where_it_stopped_and_goes_to_file_failed_json(status):
    from layover.report import ReleaseReport, StageReport

    r = ReleaseReport(
        "rel.list",
        None,
        12,
        "/o/r.tar",
        "",
        0,
        (StageReport("preflight", 0.2),),
        status=status,
        source="ci:5000",
        failed_stage="archive sync",
        error="archive sync: 1 of 12 image(s) failed",
        failures=("a:1: not found: x",),
        wall_seconds=16.3,
    )
    text = r.to_text()
    assert f"status: {status} in archive sync, no tarball written (/o/r.tar)" in text
    assert "  a:1: not found: x" in text and "total: 16.30 s" in text and "sha256" not in text
    assert r.sidecar == "/o/r.tar.failed.json"
    assert "Layover release " + status in r.to_markdown()
