"""Retries that converge: one image copy, attempted until it lands, fails for good, or the source
is down. docs/reliability.md has the policy and the measurements behind it.

    an attempt that landed blobs        made progress: retried after a short pause, and it does
                                        not spend the retry budget (the next attempt skips what
                                        landed, so attempts get shorter until one completes)
    an attempt that landed nothing      spends one retry, backoff 2, 4, 8, 8... s, ±50% jitter
      ... while the source does not     (nothing it serves succeeded during the attempt and
      answer at all                     GET /v2/ gets no answer) spends nothing: the source
                                        watch decides instead
    no source request succeeded for     SourceUnreachableError, one line naming the source
    `down_after` s, across all images   (exit 4); every copy of the stage stops
    bounds                              a deadline per image and one per stage

Only Transient errors are retried; an unknown image, a refused login, a full disk are final.
This is the one retry layer of archive sync (docs/design.md §5): its Prefect tasks do not retry.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from layover.adapters.registry_copy import Landed
from layover.errors import LayoverError, SourceUnreachableError, Transient
from layover.report import ImageCopy


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # attempts without progress allowed after the first
    image_deadline: float = 3600.0  # seconds for every attempt of one image together
    stage_deadline: float = 7200.0  # seconds for the whole stage
    base_delay: float = 2.0  # no progress: base_delay × 2^(n-1), at most max_delay
    max_delay: float = 8.0
    progress_delay: float = 0.5  # progress: pause this long before going on
    jitter: float = 0.5  # each delay drawn from [1 - jitter, 1 + jitter] × itself

    def delay(self, barren: int, progress: bool, rng: random.Random) -> float:
        """The pause before the next attempt; `barren`: attempts in a row that landed nothing."""
        base = (
            self.progress_delay
            if progress
            else min(self.max_delay, self.base_delay * 2 ** max(0, barren - 1))
        )
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


class SourceWatch:
    """When a request to the source last succeeded, across every copy of a stage (thread-safe).

    `answers` asks the source whether it is there at all (GET /v2/), to tell an image that keeps
    failing from a source that is down.
    """

    def __init__(
        self,
        host: str,
        down_after: float,
        answers: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.down_after = down_after
        self._answers = answers
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self.stopped = threading.Event()  # set once the source was declared down

    def ok(self) -> None:
        now = self._clock()
        with self._lock:
            self._last = max(self._last, now)

    def last_ok(self) -> float:
        with self._lock:
            return self._last

    def check(self, last_error: BaseException | None = None) -> None:
        """SourceUnreachableError if nothing succeeded for `down_after` seconds."""
        idle = self._clock() - self.last_ok()
        if self.stopped.is_set() or idle >= self.down_after:
            self.stopped.set()
            why = f"; last error: {last_error}" if last_error is not None else ""
            raise SourceUnreachableError(
                f"source registry {self.host}: no request has succeeded for {idle:.0f} s across all "
                f"images; check that it is up and reachable from this host, then run again{why}"
            )

    def answering(self) -> bool:
        try:
            answered = self._answers()
        except Exception:  # noqa: BLE001 - any failure to ask means "no answer"
            return False
        if answered:
            self.ok()
        return answered


def converge(
    ref: str,
    attempt: Callable[[Landed], ImageCopy],
    policy: RetryPolicy,
    watch: SourceWatch,
    *,
    stage_started: float,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> ImageCopy:
    """Run `attempt` until it returns; the result carries how many attempts it took."""
    rng = rng or random.Random()
    started = clock()
    attempts = spent = barren = 0  # barren: attempts in a row that landed nothing
    while True:
        watch.check()
        attempts += 1
        landed = Landed()
        began = clock()
        try:
            return replace(attempt(landed), attempts=attempts)
        except Transient as e:
            error: LayoverError = e
        progress = landed.blobs > 0
        barren = 0 if progress else barren + 1
        if progress:
            watch.ok()  # blobs landed: the source answered
        elif watch.last_ok() >= began or watch.answering():
            spent += 1  # the source answers, this image fails: spend the budget
        watch.check(error)
        if spent > policy.retries:
            raise error
        delay = policy.delay(barren, progress, rng)
        now = clock()
        if now + delay - started > policy.image_deadline:
            raise _with_note(
                error, f"gave up after {attempts} attempt(s) in {now - started:.0f} s (deadline per image)"
            )
        if now + delay - stage_started > policy.stage_deadline:
            raise _with_note(error, f"gave up after {attempts} attempt(s): the stage's deadline passed")
        sleep(delay)


def _with_note(error: LayoverError, note: str) -> LayoverError:
    error.args = (f"{error} ({note})",)
    return error
