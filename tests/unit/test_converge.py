"""Retries that converge (layover/converge.py), on a fake clock: progress does not spend the budget,
a failing image does, a silent source ends in one SourceUnreachableError, deadlines bound it all."""

from __future__ import annotations

import random

import pytest

from layover.adapters.registry_copy import Landed
from layover.converge import RetryPolicy, SourceWatch, converge
from layover.errors import AuthError, SourceUnreachableError, TransientCopyError
from layover.reference import Digest
from layover.report import ImageCopy

D = Digest("a" * 64)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def done() -> ImageCopy:
    return ImageCopy("app:1", "sha256:" + "b" * 64, 1, 0, 10, 0.1)


def run(attempt, policy: RetryPolicy, watch: SourceWatch, clock: Clock) -> ImageCopy:
    return converge(
        "app:1",
        attempt,
        policy,
        watch,
        stage_started=clock(),
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(1),
    )


def script(outcomes, clock: Clock, watch: SourceWatch | None = None, seconds: float = 1.0):
    """An attempt that plays `outcomes` in order: "ok", "progress" (lands a blob, then fails),
    "fail" (the source answered others meanwhile), "silent" (nothing succeeded), or an error."""
    calls = []

    def attempt(landed: Landed) -> ImageCopy:
        what = outcomes[len(calls)]
        calls.append(what)
        clock.now += seconds
        if what == "ok":
            return done()
        if what == "progress":
            landed.uploaded.append((D, 1))
        if what == "fail" and watch is not None:
            watch.ok()  # another image's request succeeded during this attempt
        if isinstance(what, Exception):
            raise what
        raise TransientCopyError("app:1: 503")

    return attempt, calls


def test_attempts_that_land_blobs_do_not_spend_the_budget():
    clock = Clock()
    watch = SourceWatch("ci:5000", 60, clock=clock)
    attempt, calls = script(["progress"] * 6 + ["ok"], clock, watch)
    result = run(attempt, RetryPolicy(retries=1), watch, clock)
    assert result.attempts == 7 and len(calls) == 7
    assert all(0.25 <= s <= 0.75 for s in clock.slept)  # the short pause after progress


def test_attempts_without_progress_spend_it_with_growing_backoff():
    clock = Clock()
    watch = SourceWatch("ci:5000", 600, clock=clock)
    attempt, calls = script(["fail"] * 5, clock, watch)
    with pytest.raises(TransientCopyError):
        run(attempt, RetryPolicy(retries=3), watch, clock)
    assert len(calls) == 4  # retries + 1
    bases = [2, 4, 8]
    assert all(0.5 * b <= s <= 1.5 * b for s, b in zip(clock.slept, bases, strict=True))


def test_a_final_error_is_not_retried():
    clock = Clock()
    watch = SourceWatch("ci:5000", 60, clock=clock)
    attempt, calls = script([AuthError("ci:5000 refused the credentials")], clock, watch)
    with pytest.raises(AuthError):
        run(attempt, RetryPolicy(retries=3), watch, clock)
    assert len(calls) == 1


def test_a_silent_source_ends_in_one_source_unreachable_error_not_the_budget():
    clock = Clock()
    pings = []
    watch = SourceWatch("ci:5000", 30, answers=lambda: pings.append(1) or False, clock=clock)
    attempt, calls = script(["silent"] * 50, clock)
    with pytest.raises(SourceUnreachableError) as info:
        run(attempt, RetryPolicy(retries=1), watch, clock)
    assert len(calls) > 2  # more than the budget: silence does not spend it
    assert "ci:5000" in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 4
    assert watch.stopped.is_set()


def test_an_image_failing_while_the_source_answers_spends_the_budget():
    clock = Clock()
    watch = SourceWatch("ci:5000", 30, answers=lambda: True, clock=clock)  # GET /v2/ answers
    attempt, calls = script(["silent"] * 10, clock)
    with pytest.raises(TransientCopyError):
        run(attempt, RetryPolicy(retries=2), watch, clock)
    assert len(calls) == 3


def test_once_the_source_is_declared_down_no_image_starts_another_attempt():
    clock = Clock()
    watch = SourceWatch("ci:5000", 30, clock=clock)
    watch.stopped.set()
    attempt, calls = script(["ok"], clock)
    with pytest.raises(SourceUnreachableError):
        run(attempt, RetryPolicy(), watch, clock)
    assert calls == []


def test_the_image_deadline_bounds_even_progress():
    clock = Clock()
    watch = SourceWatch("ci:5000", 600, clock=clock)
    attempt, _ = script(["progress"] * 1000, clock, seconds=10)
    with pytest.raises(TransientCopyError) as info:
        run(attempt, RetryPolicy(image_deadline=100), watch, clock)
    assert "deadline per image" in str(info.value)
    assert clock.now - 1000 <= 100 + 10


def test_the_stage_deadline_bounds_every_image():
    clock = Clock()
    watch = SourceWatch("ci:5000", 600, clock=clock)
    attempt, _ = script(["progress"] * 1000, clock, seconds=10)
    with pytest.raises(TransientCopyError) as info:
        converge(
            "app:1",
            attempt,
            RetryPolicy(stage_deadline=50),
            watch,
            stage_started=clock() - 20,
            sleep=clock.sleep,
            clock=clock,
            rng=random.Random(1),
        )
    assert "stage's deadline" in str(info.value)
