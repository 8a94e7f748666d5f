"""Publish the run's report: a markdown artifact in Prefect, a JSON sidecar by the tarball, and a
copy in the work dir's releases/ (named by the package's sha256)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from layover.report import ReleaseReport


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(report: ReleaseReport, releases: Path | None = None) -> None:
    sidecar = Path(report.output + ".json")
    records = [sidecar]
    if releases is not None:
        releases.mkdir(parents=True, exist_ok=True)
        records.append(releases / f"{report.sha256}.json")
    for path in records:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(report.to_json())
        os.replace(tmp, path)
    create_markdown_artifact(
        key="release-report", markdown=report.to_markdown(), description="Layover release report"
    )
