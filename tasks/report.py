"""Publish the run's report: a markdown artifact in Prefect, a JSON sidecar by the tarball and
a copy under the work dir's releases/, named by the package's sha256 (what `layover archive
status` reads, and where a delta finds the base package a git tag names)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from layover.report import ReleaseReport
from layover.workdir import WorkDir


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(report: ReleaseReport, wd: WorkDir) -> None:
    wd.releases.mkdir(exist_ok=True)
    record = wd.releases / f"{report.sha256}.json"  # the first build of a package: what it added
    for path in (Path(report.output + ".json"), *(() if record.exists() else (record,))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(report.to_json())
        os.replace(tmp, path)
    create_markdown_artifact(
        key="release-report", markdown=report.to_markdown(), description="Layover release report"
    )
