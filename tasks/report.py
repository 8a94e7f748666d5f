"""Publish the run's report: a markdown artifact in Prefect and a JSON sidecar by the tarball."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from layover.report import ReleaseReport


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(report: ReleaseReport) -> None:
    sidecar = Path(report.output + ".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(report.to_json())
    os.replace(tmp, sidecar)
    create_markdown_artifact(
        key="release-report", markdown=report.to_markdown(), description="Layover release report"
    )
