"""The release flow's request as the integration tests make it: the list from a file, a CI
registry speaking plain HTTP on loopback, four copies at a time unless a test says otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layover.settings import ListFromFile, ReleaseRequest


def release_request(source: str, images: Path, work: Path, output: Path, **more: Any) -> ReleaseRequest:
    return ReleaseRequest(
        images=ListFromFile(path=str(images)),
        source=source,
        src_tls_verify=False,
        work_dir=work,
        output=output,
        **{"concurrency": 4, **more},
    )
