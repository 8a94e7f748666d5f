"""Stage 0b: the preflight checks (layover/preflight.py) as the flow's first task, so a run
Prefect starts fails in its first second too, naming the parameter to fix. The lock is left to
the flow, which takes it next."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover import preflight
from layover.adapters.host import LocalHost
from layover.imagelist import ImageList
from layover.settings import ReleaseRequest


@task(name="preflight", cache_policy=NO_CACHE)
def check_request(request: ReleaseRequest, images: ImageList) -> None:
    preflight.check(preflight.plan_for(request, images, check_lock=False), LocalHost())
