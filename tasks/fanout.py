"""Fan one copy task out over a release's images, at most `concurrency` at a time.

The flow's thread pool is sized for the largest allowed concurrency; the window here is what
enforces the per-run setting, so one flow serves every deployment's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prefect import Task, get_run_logger
from prefect.futures import PrefectFuture, as_completed

from layover import progress
from layover.errors import StageFailed
from layover.reference import ImageRef
from layover.report import ImageCopy

MAX_CONCURRENCY = 64


def fan_out(stage: str, copy: Task, refs: Sequence[ImageRef], copier: object, concurrency: int) -> list[ImageCopy]:
    """Run `copy(ref, copier)` for every ref, at most `concurrency` at a time; every failure is
    collected and named together in one StageFailed."""
    logger = get_run_logger()
    sink = progress.current()
    started = time.monotonic()
    window = max(1, min(concurrency, MAX_CONCURRENCY))
    todo = list(refs)
    pending: dict[PrefectFuture, ImageRef] = {}
    copies: list[ImageCopy] = []
    failures: list[tuple[ImageRef, BaseException]] = []
    next_log = started + 5
    while todo or pending:
        while todo and len(pending) < window:
            ref = todo.pop(0)
            pending[copy.submit(ref, copier)] = ref
        done = next(as_completed(list(pending)))
        ref = pending.pop(done)
        outcome = done.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            failures.append((ref, outcome))
            sink.image_done(stage, str(ref), ok=False)
        else:
            copies.append(outcome)
            sink.image_done(stage, str(ref), bytes_copied=outcome.bytes_copied)
        now = time.monotonic()
        if now >= next_log or not (todo or pending):
            logger.info(
                "%s: %d/%d images done, %d failed", stage, len(copies) + len(failures), len(refs),
                len(failures),
            )
            next_log = now + 5
    if failures:
        order = {ref: i for i, ref in enumerate(refs)}
        failures.sort(key=lambda f: order[f[0]])  # in list order, not the order they ended in
        raise StageFailed(f"{stage}: {len(failures)} image(s) failed", [(str(r), e) for r, e in failures])
    return copies
