"""How `layover run` shows progress on stderr (layover/progress.py is the interface):

    a terminal   rich: one line per stage with images done/total, bytes, rate, ETA, and the
                 image in flight when one has been copying for SLOW seconds
    otherwise    plain lines (CI logs): each stage's start and end, and while a copy stage
                 runs, one line every EVERY seconds
    -v           plain lines, plus one line per image as it finishes
    -q           nothing

The report itself goes to stdout when the run ends.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from layover.progress import NULL, Progress

if TYPE_CHECKING:
    from rich.progress import TaskID
from layover.units import human_bytes

EVERY = 5.0  # seconds between status lines without a terminal
SLOW = 10.0  # an image copying this long is named


@dataclass
class StageState:
    name: str
    images: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    bytes: int = 0
    in_flight: dict[str, float] = field(default_factory=dict)
    ended: float | None = None

    def elapsed(self, now: float) -> float:
        return (self.ended or now) - self.started

    def status(self, now: float) -> str:
        """`12/64 images, 340.0 MiB, 45.1 MiB/s, ETA 0:32`, as far as known."""
        parts = [f"{self.done}/{self.images} images"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        elapsed = self.elapsed(now)
        if self.bytes:
            parts.append(human_bytes(self.bytes))
            if elapsed > 0:
                parts.append(f"{human_bytes(int(self.bytes / elapsed))}/s")
        if self.done and self.done < self.images and self.ended is None:
            eta = elapsed / self.done * (self.images - self.done)
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        return ", ".join(parts)

    def slow(self, now: float) -> str:
        """The longest-running copy, if it is slow."""
        if not self.in_flight:
            return ""
        image, since = min(self.in_flight.items(), key=lambda kv: kv[1])
        return f"copying {image} ({now - since:.0f} s)" if now - since >= SLOW else ""


class _Base:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stages: dict[str, StageState] = {}

    def _state(self, stage: str) -> StageState | None:
        return self.stages.get(stage)

    def image_started(self, stage: str, image: str) -> None:
        with self._lock:
            st = self._state(stage)
            if st is not None:
                st.in_flight[image] = time.monotonic()

    def _done(self, stage: str, image: str, bytes_copied: int, ok: bool) -> StageState | None:
        with self._lock:
            st = self._state(stage)
            if st is None:
                return None
            st.in_flight.pop(image, None)
            if ok:
                st.done += 1
            else:
                st.failed += 1
            st.bytes += bytes_copied
            return st


class LinesProgress(_Base):
    """Plain lines, for logs; `each_image` for -v."""

    def __init__(self, out: TextIO, *, each_image: bool = False, every: float = EVERY) -> None:
        super().__init__()
        self.out = out
        self.each_image = each_image
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _say(self, line: str) -> None:
        try:
            self.out.write(f"{line}\n")
            self.out.flush()
        except (OSError, ValueError):  # a closed pipe must not fail the run
            pass

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        with self._lock:
            self.stages[stage] = StageState(stage, images)
        self._say(f"{stage}: started" + (f", {images} images" if images else ""))
        if images:
            self._watch()

    def image_started(self, stage: str, image: str) -> None:
        super().image_started(stage, image)

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None:
        st = self._done(stage, image, bytes_copied, ok)
        if st is not None and self.each_image:
            what = human_bytes(bytes_copied) if bytes_copied else "nothing new"
            self._say(
                f"{stage}: {image}: {'done, ' + what if ok else 'FAILED'} ({st.done + st.failed}/{st.images})"
            )

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        now = time.monotonic()
        with self._lock:
            st = self.stages.get(stage)
            if st is None:
                return
            st.ended = now
            line = f"{stage}: {'done' if ok else 'FAILED'} in {st.elapsed(now):.1f} s"
            if st.images:
                line += f" ({st.status(now)})"
        self._say(line)

    def _watch(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="layover-progress", daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            now = time.monotonic()
            with self._lock:
                running = [st for st in self.stages.values() if st.images and st.ended is None]
                lines = [
                    f"{st.name}: {st.status(now)}" + (f"; {st.slow(now)}" if st.slow(now) else "")
                    for st in running
                ]
            for line in lines:
                self._say(line)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class RichProgress(_Base):
    """A live display on a terminal (rich), one line per stage."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
        from rich.text import Text

        view = self

        class Status(ProgressColumn):
            def render(self, task: Task) -> Text:
                st = view.stages.get(task.description)
                if st is None:
                    return Text("")
                now = time.monotonic()
                if not st.images:
                    return Text(f"{st.elapsed(now):.1f} s")
                slow = st.slow(now)
                return Text(st.status(now) + (f"  {slow}" if slow else ""))

        self.console = Console(file=out, highlight=False)
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"),
            TextColumn("{task.description:<16}", markup=False),
            BarColumn(bar_width=24),
            Status(),
            console=self.console,
            refresh_per_second=4,
        )
        self._tasks: dict[str, TaskID] = {}
        self.progress.start()

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        with self._lock:
            self.stages[stage] = StageState(stage, images)
        self._tasks[stage] = self.progress.add_task(stage, total=images or None)

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None:
        if self._done(stage, image, bytes_copied, ok) is not None and stage in self._tasks:
            self.progress.advance(self._tasks[stage])

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        with self._lock:
            st = self.stages.get(stage)
            if st is not None:
                st.ended = time.monotonic()
        task = self._tasks.get(stage)
        if task is not None:
            total = st.images if st is not None and st.images else 1
            self.progress.update(task, total=total, completed=total if ok else (st.done if st else 0))
            self.progress.stop_task(task)

    def close(self) -> None:
        self.progress.stop()


def view_for(verbosity: int, out: TextIO | None = None) -> Progress:
    """The renderer for this terminal and verbosity (-1 quiet, 0 normal, 1 verbose)."""
    out = out if out is not None else sys.stderr
    if verbosity < 0:
        return NULL
    if verbosity == 0 and out.isatty():
        return RichProgress(out)
    return LinesProgress(out, each_image=verbosity > 0)


def close(view: Progress) -> None:
    closer = getattr(view, "close", None)
    if closer is not None:
        closer()
