"""`layover`: the command line. One module per verb; each parses options and makes one call
into the library (layover/cli/app.py holds what they share)."""

from __future__ import annotations

import sys

from layover.cli import contents, delta, diff, gc, install, push, registry_image, repair, run, verify  # noqa: F401 - each registers its verb
from layover.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry for `python -m layover.cli`
    sys.exit(app())
