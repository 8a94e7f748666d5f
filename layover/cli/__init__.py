"""`layover`: the command line. One module per verb; each parses options and makes one call
into the library (layover/cli/app.py holds what they share)."""

from __future__ import annotations

import sys

from layover.cli import (
    archive,  # noqa: F401 - registers its verb
    contents,  # noqa: F401 - registers its verb
    delta,  # noqa: F401 - registers its verb
    diff,  # noqa: F401 - registers its verb
    gc,  # noqa: F401 - registers its verb
    install,  # noqa: F401 - registers its verb
    push,  # noqa: F401 - registers its verb
    registry_image,  # noqa: F401 - registers its verb
    repair,  # noqa: F401 - registers its verb
    run,  # noqa: F401 - registers its verb
    verify,  # noqa: F401 - registers its verb
)
from layover.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry for `python -m layover.cli`
    sys.exit(app())
