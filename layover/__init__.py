"""Layover: package a release's container images into a verified registry-storage tarball."""

from __future__ import annotations

from functools import cache


@cache
def version() -> str:
    """The installed distribution's version (read when first asked, not at import)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("layover")
    except PackageNotFoundError:  # a checkout that was never installed
        return "0+unknown"
