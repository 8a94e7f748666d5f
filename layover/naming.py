"""What a setting is called where the user gave it: a flag of `layover run`, or a field of the
flow's `request` parameter (a Prefect deployment, the UI form).

Messages that tell the user what to fix name the setting through `name()`, so the same check
says `--src-authfile` on the command line and `request.src_authfile` in a Prefect run. The CLI
switches the process to flag names before it runs anything; every other entry point (a worker
running a deployment) keeps parameter names.
"""

from __future__ import annotations

from typing import Literal

Surface = Literal["cli", "prefect"]

# ReleaseRequest field -> `layover run` flag. A field missing here has no flag of its own.
FLAGS: dict[str, str] = {
    "images": "--images",
    "images.repo": "--images-git",
    "images.ref": "--images-ref",
    "images.path": "--images-path",
    "source": "--source",
    "registry_map": "--registry-map",
    "work_dir": "--work-dir",
    "output": "--output",
    "concurrency": "--concurrency",
    "src_tls_verify": "--src-tls-verify/--no-src-tls-verify",
    "src_authfile": "--src-authfile",
    "src_cert_dir": "--src-cert-dir",
    "src_credentials_block": "--src-credentials-block",
    "lock_wait_seconds": "--lock-wait",
    "copy_timeout_seconds": "--copy-timeout",
    "copy_retries": "--copy-retries",
    "copier": "--copier",
    "package_sync": "--package-sync",
    "source_down_seconds": "--source-down-seconds",
    "stage_deadline_seconds": "--stage-deadline-seconds",
    "attached": "--attached",
    "delta_from": "--delta-from",
}

_surface: Surface = "prefect"


def use(surface: Surface) -> None:
    """Name settings as this surface shows them, from now on, in this process."""
    global _surface
    _surface = surface


def surface() -> Surface:
    return _surface


def name(field: str) -> str:
    """`--src-authfile` on the CLI, `request.src_authfile` in Prefect."""
    if _surface == "cli":
        return FLAGS.get(field, field)
    return f"request.{field}"
