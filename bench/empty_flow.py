"""What Prefect alone costs a run: import, one flow run fanning out N no-op tasks, exit.

    python -m bench.empty_flow [--tasks 1] [--concurrency 8]     (PREFECT_API_URL: the server)

Same settings as `layover run` (no heartbeats, a thread-pool task runner, no tags). With one
task, added to the floor, it gives the least any Prefect-orchestrated release can take here;
with one task per image it is Prefect's share of Layover's per-image cost (bench/overhead.py).
"""

from __future__ import annotations

import argparse

from prefect import flow, task
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner


@task(name="no-op", task_run_name="no-op: {i}")
def nothing(i: int) -> int:
    return i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()

    @flow(name="bench-empty", task_runner=ThreadPoolTaskRunner(max_workers=a.concurrency))
    def empty() -> int:
        futures = [nothing.submit(i) for i in range(a.tasks)]
        return sum(f.result() for f in futures)

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        empty()


if __name__ == "__main__":
    main()
