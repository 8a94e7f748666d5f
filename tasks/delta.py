"""After the tarball: a delta package against each base in `delta_from` (docs/customer.md)."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.adapters.git import read_list_at
from layover.delta import default_output, recorded_base, write_delta
from layover.errors import UsageError
from layover.package import PackageRecord, read_record
from layover.report import StageReport
from layover.settings import ListFromGit, ReleaseRequest
from layover.units import human_bytes
from layover.workdir import WorkDir
from tasks.report import record_release


@task(name="write-deltas", cache_policy=NO_CACHE)
def write_deltas(wd: WorkDir, request: ReleaseRequest, sha256: str) -> list[StageReport]:
    stages = []
    for entry in request.delta_from:
        started = time.monotonic()
        base, label = _base(wd, request, entry)
        result = write_delta(
            request.output, base, default_output(request.output, base, label), new_sha256=sha256
        )
        get_run_logger().info("%s", result.summary())
        record_release(wd, result.tar.sha256, result.to_json())  # `layover archive status` lists it
        t = result.contents.totals
        detail = (
            f"{result.tar.path.name}: {t.carried_blobs} blobs carried ({human_bytes(t.carried_bytes)}), "
            f"{t.blobs - t.carried_blobs} assumed; cloned {human_bytes(result.tar.bytes_cloned)}"
        )
        stages.append(
            StageReport(
                f"delta from {label or base.label}",
                time.monotonic() - started,
                bytes_moved=result.tar.size,
                detail=detail,
            )
        )
    return stages


def _base(wd: WorkDir, request: ReleaseRequest, entry: str) -> tuple[PackageRecord, str | None]:
    """A package path, or a git tag of the list's repository that this work dir has built."""
    if Path(entry).is_file():
        return read_record(Path(entry)), None
    if not isinstance(request.images, ListFromGit):
        raise UsageError(
            f"delta_from {entry!r}: no such package file (and the list is not read from git, so it "
            "cannot name a tag); give the base package's path"
        )
    got = read_list_at(request.images.repo, entry, request.images.path)
    found = recorded_base(wd.releases, got.commit, f"{got.repo}:{got.path}@")
    if found is None:
        raise UsageError(
            f"delta_from {entry!r}: no package built from {got.path} at {got.commit[:12]} is recorded "
            f"in {wd.releases}; build that release on this work dir first, or give its package's path"
        )
    return found, entry
