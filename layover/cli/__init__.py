"""`layover`: the command line. One module per verb; each parses options and makes one call
into the library (layover/cli/app.py holds what they share)."""

from __future__ import annotations

import sys

from layover.cli import archive  # noqa: F401 - registers its verb
from layover.cli import contents  # noqa: F401 - registers its verb
from layover.cli import delta  # noqa: F401 - registers its verb
from layover.cli import diff  # noqa: F401 - registers its verb
from layover.cli import gc  # noqa: F401 - registers its verb
from layover.cli import install  # noqa: F401 - registers its verb
from layover.cli import push  # noqa: F401 - registers its verb
from layover.cli import registry_image  # noqa: F401 - registers its verb
from layover.cli import repair  # noqa: F401 - registers its verb
from layover.cli import run  # noqa: F401 - registers its verb
from layover.cli import verify  # noqa: F401 - registers its verb
from layover.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry for `python -m layover.cli`
    sys.exit(app())
