"""Progress of a run as it happens: what the stages report, and where it goes.

A stage reports four things to the current sink, from any thread:

    stage_started(stage, images=N, bytes_total=B or None)   once, with its totals
    image_started(stage, image)                              a copy begins (the image in flight)
    image_done(stage, image, bytes_copied=n, ok=True)        a copy ended (ok=False: it failed)
    stage_finished(stage, ok=True)                           once, also when the stage failed

The sink is process-wide (copies run on Prefect's worker threads), set by whoever drives the
run: the CLI's terminal renderer, the flow's Prefect artifact, both at once with `Tee`, or
nothing (`NULL`). Renderers live with their front end (layover/cli/, tasks/); this module only
defines the interface, so the copy path reports without knowing who listens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    """Receives a run's progress. Implementations must be thread-safe and must not raise."""

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None: ...

    def image_started(self, stage: str, image: str) -> None: ...

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None: ...

    def stage_finished(self, stage: str, *, ok: bool = True) -> None: ...


class NullProgress:
    """Listens to nothing."""

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        pass

    def image_started(self, stage: str, image: str) -> None:
        pass

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None:
        pass

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        pass


NULL = NullProgress()


class Tee:
    """Forwards every report to each sink in turn."""

    def __init__(self, *sinks: Progress) -> None:
        self.sinks = sinks

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        for s in self.sinks:
            s.stage_started(stage, images=images, bytes_total=bytes_total)

    def image_started(self, stage: str, image: str) -> None:
        for s in self.sinks:
            s.image_started(stage, image)

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None:
        for s in self.sinks:
            s.image_done(stage, image, bytes_copied=bytes_copied, ok=ok)

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        for s in self.sinks:
            s.stage_finished(stage, ok=ok)


_lock = threading.Lock()
_current: Progress = NULL


def current() -> Progress:
    """The sink stages report to now."""
    return _current


@contextmanager
def reporting_to(sink: Progress) -> Iterator[Progress]:
    """Make `sink` the current sink for the body (restoring the previous one after)."""
    global _current
    with _lock:
        previous, _current = _current, sink
    try:
        yield sink
    finally:
        with _lock:
            _current = previous


@contextmanager
def stage(name: str, *, images: int = 0, bytes_total: int | None = None) -> Iterator[Progress]:
    """Report a stage's start and its end (ok=False when the body raises)."""
    sink = current()
    ok = False
    try:  # a Ctrl-C may land inside stage_started: the stage still ends, as failed
        sink.stage_started(name, images=images, bytes_total=bytes_total)
        yield sink
        ok = True
    finally:
        sink.stage_finished(name, ok=ok)


class StageTracker(NullProgress):
    """Remembers which stage is running, so a run that stops can say where."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[str] = []
        self._failed: str | None = None
        self.finished: list[str] = []

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        with self._lock:
            self._running.append(stage)

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        with self._lock:
            if stage in self._running:
                self._running.remove(stage)
            if ok:
                self.finished.append(stage)
            elif self._failed is None:
                self._failed = stage  # the first to fail is where the run stopped

    @property
    def current(self) -> str | None:
        """Where the run is, or stopped: the stage that failed first, else the one started
        last and not finished; None between stages."""
        with self._lock:
            return self._failed or (self._running[-1] if self._running else None)
