"""Publish the run's report, on success and on failure alike: a markdown artifact in Prefect, a
JSON sidecar by the output (FILE.json beside the tarball; FILE.failed.json when there is none)
and, for a package built, a copy under the work dir's releases/ named by its sha256 (what
`layover archive status` reads, and where a delta finds the base package a git tag names);
tasks/delta.py records each delta there too, as its sidecar.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from layover.report import ReleaseReport
from layover.workdir import WorkDir


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(report: ReleaseReport, wd: WorkDir | None = None) -> None:
    publish(report)
    if wd is not None and report.ok and report.sha256:
        record_release(wd, report.sha256, report.to_json())


def record_release(wd: WorkDir, sha256: str, text: str) -> None:
    """A package this work dir built, under releases/ by its sha256 (a full package's run report,
    a delta's sidecar), written whole. The first build of a package is kept: what it added."""
    wd.releases.mkdir(exist_ok=True)
    record = wd.releases / f"{sha256}.json"
    if not record.exists():
        tmp = record.with_name(f".{record.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, record)


def publish(report: ReleaseReport) -> None:
    """The sidecar, then the artifact; for a failed run called without a task of its own (the
    run is crashing: as few moving parts as possible)."""
    write_sidecar(report)
    create_markdown_artifact(
        key="release-report",
        markdown=report.to_markdown(),
        description="Layover release report" if report.ok else f"Layover release {report.status}",
    )


def write_sidecar(report: ReleaseReport) -> Path | None:
    """FILE.json (or FILE.failed.json), written whole or not at all; a success removes the
    failure report an earlier run left. None if the output's directory cannot take it."""
    sidecar = Path(report.sidecar)
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(report.to_json())
        os.replace(tmp, sidecar)
        if report.ok:
            Path(report.output + ".failed.json").unlink(missing_ok=True)
    except OSError as e:
        if not report.ok:  # a failure report must not hide the failure (full disk, missing dir)
            get_run_logger().warning("could not write %s: %s", sidecar, e.strerror)
            tmp.unlink(missing_ok=True)
            return None
        raise
    return sidecar
