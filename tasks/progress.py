"""A Prefect progress artifact per copy stage (`archive-sync-progress`, `package-sync-progress`):
images done of the stage's total, sent at most once a second while the copies run
(layover/progress.py is the interface).

Copies report from worker threads that carry no Prefect context: a Prefect call there would
not see the run's API URL (settings live in context variables) and would start a server of
its own. So the counts are only counted there, and one sender thread, started with a copy of
the flow's context, sends them with one client. It creates each stage's artifact too, so the
flow's thread makes no API call for progress: the stage starts at once.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from dataclasses import dataclass
from uuid import UUID

from prefect.artifacts import create_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between updates: each is one API call (~10 ms)


@dataclass
class _Stage:
    """One stage's artifact and counts; changed under ArtifactProgress's lock."""

    total: int
    artifact: UUID | None = None  # None until the sender thread has created it
    done: int = 0
    sent: int = 0  # the count the artifact shows


class ArtifactProgress:
    """layover.progress.Progress -> progress artifacts, for the stages that have images."""

    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._stages: dict[str, _Stage] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stage_started(self, stage: str, *, images: int = 0, bytes_total: int | None = None) -> None:
        if not images:
            return
        with self._lock:
            self._stages[stage] = _Stage(images)
            if self._thread is None:  # started here, on the flow's thread: it has the run's context
                context = contextvars.copy_context()
                self._thread = threading.Thread(
                    target=context.run, args=(self._send_loop,), name="layover-progress-artifact", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def image_started(self, stage: str, image: str) -> None:
        pass

    def image_done(self, stage: str, image: str, *, bytes_copied: int = 0, ok: bool = True) -> None:
        with self._lock:
            entry = self._stages.get(stage)
            if entry is not None:
                entry.done += 1

    def stage_finished(self, stage: str, *, ok: bool = True) -> None:
        self._wake.set()  # the last count goes out now, not a second later

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _send_loop(self) -> None:
        try:
            with get_client(sync_client=True) as client:
                while True:
                    stopping = self._stop.is_set()
                    with self._lock:
                        due = [
                            (stage, e)
                            for stage, e in self._stages.items()
                            if e.artifact is None or e.done != e.sent
                        ]
                    for stage, entry in due:
                        artifact = entry.artifact or self._create(stage, entry)
                        if artifact is None:
                            continue
                        done = entry.done
                        if done != entry.sent:
                            pct = 100.0 * done / max(1, entry.total)
                            client.update_artifact(artifact_id=artifact, artifact=ArtifactUpdate(data=pct))
                            with self._lock:
                                entry.sent = done
                    if stopping:
                        return
                    self._wake.wait(self.every)
                    self._wake.clear()
        except Exception as e:  # noqa: BLE001 - progress must never fail a run
            log.debug("progress artifacts no longer updated: %s", e)

    def _create(self, stage: str, entry: _Stage) -> UUID | None:
        try:
            artifact_id: UUID = create_progress_artifact(  # type: ignore[assignment]  # sync here
                progress=0.0,
                key=stage.replace(" ", "-") + "-progress",
                description=f"{stage}: images done of {entry.total}",
            )
        except Exception as e:  # noqa: BLE001 - progress must never fail a run
            log.debug("progress artifact for %s not created: %s", stage, e)
            with self._lock:
                self._stages.pop(stage, None)
            return None
        entry.artifact = artifact_id
        return artifact_id
