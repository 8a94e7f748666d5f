"""Source registry credentials: an authfile path, or a Prefect Secret block decoded to one.

The secret's value goes from the block to a 0600 file in the work dir that only skopeo reads
(`--src-authfile PATH`): it never appears in parameters, argv, logs or artifacts. The file is
removed at teardown, and by the next run if this one was killed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE

from layover.errors import LayoverError
from layover.settings import ReleaseRequest
from layover.workdir import WorkDir


@task(name="source-credentials", cache_policy=NO_CACHE)
def source_authfile(wd: WorkDir, request: ReleaseRequest) -> Path | None:
    if request.src_credentials_block is None:
        if request.src_authfile is not None and not request.src_authfile.is_file():
            raise LayoverError(f"--src-authfile {request.src_authfile}: no such file")
        return request.src_authfile
    from prefect.blocks.system import Secret

    name = request.src_credentials_block
    try:
        value = cast(Secret, Secret.load(name)).get()  # load() is typed sync-or-async; here it is sync
    except ValueError as e:
        raise LayoverError(
            f"Prefect Secret block {name!r} cannot be loaded ({type(e).__name__}); create it with "
            "a containers-auth.json document as its value"
        ) from None
    document = value if isinstance(value, dict) else _parse(name, str(value))
    if not isinstance(document.get("auths"), dict):
        raise LayoverError(f"Secret block {name!r} is not a containers-auth.json document (no 'auths')")
    wd.run.mkdir(parents=True, exist_ok=True)
    wd.src_auth.unlink(missing_ok=True)
    fd = os.open(wd.src_auth, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(document, fh)
    return wd.src_auth


def _parse(name: str, text: str) -> dict:
    try:
        doc = json.loads(text)
    except ValueError:
        # never echo the value: it is a secret
        raise LayoverError(f"Secret block {name!r} does not hold JSON (containers-auth.json)") from None
    if not isinstance(doc, dict):
        raise LayoverError(f"Secret block {name!r} does not hold a JSON object")
    return doc
