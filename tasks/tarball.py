"""Stage 7: write the release tarball (temp name, fsync, rename) with .sha256 and .json beside it.

Every blob member is hashed against its name from the same reads as the stream's sha256; one
that differs publishes nothing and raises ArchiveDamagedError, which the flow heals like verify's
(docs/design.md §1, stages 6-7).

The contents file (layover/contents.py) is built from the verified package and written as the
tarball's first member; the report carries it into the `.json` sidecar. It describes what the
package holds: the package's list (listed images and their attached artifacts, layover/attached.py),
each listed image naming what is attached to it.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover.adapters.tar_writer import MemoryFile, OverlayTree, write_tarball
from layover.attached import AttachedRecord, with_attached
from layover.contents import CONTENTS_MEMBER, Contents, build, portable_list_source
from layover.imagelist import ImageList
from layover.report import StageReport
from layover.units import human_bytes
from layover.workdir import WorkDir
from tasks.load_list import LoadedList


@task(name="write-tarball", cache_policy=NO_CACHE)
def write_release_tarball(
    wd: WorkDir,
    output: Path,
    listed: LoadedList,
    shipped: ImageList | None = None,
    attached: AttachedRecord | None = None,
) -> tuple[StageReport, str, int, Contents]:
    started = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    contents = build(
        wd.package,
        listed.images if shipped is None else shipped,
        list_source=portable_list_source(listed.source, listed.commit),
        list_commit=listed.commit,
    )
    if attached is not None:
        contents = with_attached(contents, attached)
    result = write_tarball(
        OverlayTree(merged=wd.merged, upper=wd.upper, lower=wd.lower),
        output,
        first=[MemoryFile(CONTENTS_MEMBER, contents.to_bytes())],
        check_blobs=True,
    )
    detail = (
        f"{result.files} files, {result.blobs_checked} blobs hashed against their names; cloned {human_bytes(result.bytes_cloned)}, "
        f"in-kernel {human_bytes(result.bytes_kernel_copied)}, "
        f"user space {human_bytes(result.bytes_user_copied)}"
    )
    stage = StageReport("tarball", time.monotonic() - started, bytes_moved=result.size, detail=detail)
    return stage, result.sha256, result.size, contents
