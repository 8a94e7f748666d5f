"""The retry policy every copying task shares: transient failures only, backoff with jitter.

Retries live on the Prefect task and nowhere below it (skopeo runs with `--retry-times 0`):
stacking retry layers multiplies attempts (docs/design.md §5).
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from layover.errors import Transient


def transient_only(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry connection errors, 5xx and timeouts; an unknown image or a denied login stays failed."""
    try:
        state.result()
    except Transient:
        return True
    except Exception:  # noqa: BLE001 - any other failure: not worth a retry
        return False
    return False


# Keyword arguments for @task: 2, 4, 8 s (then 8 s), +-50% so parallel copies do not retry in step.
COPY_RETRY: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": transient_only,
}
