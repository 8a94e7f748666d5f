"""Stage 0b: the preflight checks (layover/preflight.py) as the flow's first task, so a run
Prefect starts fails in its first second too, naming the parameter to fix. The lock is left to
the flow, which takes it next. Under `layover run`, which ran the same checks a moment before in
this process, the task finds them passed and asks the machine nothing again."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover import preflight
from layover.adapters.host import LocalHost
from layover.imagelist import ImageList
from layover.settings import ReleaseRequest


@task(name="preflight", cache_policy=NO_CACHE)
def check_request(request: ReleaseRequest, images: ImageList) -> None:
    plan = preflight.plan_for(request, images, check_lock=False)
    if preflight.passed_already(plan):  # `layover run` checked this list and these settings just now
        return
    preflight.check(plan, LocalHost())
