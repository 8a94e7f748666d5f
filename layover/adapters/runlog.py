"""The log a failed run leaves in its work dir: one line per failed image, then each image's
full diagnostics (skopeo's stderr, a registry's answer), which the one-line messages leave out.

    <work_dir>/logs/<UTC time>-<pid>.log     the newest KEEP are kept
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from layover.errors import LayoverError, StageFailed, brief, cause

KEEP = 20


def write_failure_log(logs: Path, run_name: str, err: BaseException) -> Path | None:
    """Write the log; its path, or None if there was nothing more to say or it could not be
    written (a full disk must not hide the error that is being reported)."""
    entries = _entries(err)
    if not any(detail for _, _, detail in entries):
        return None
    lines = [f"run: {run_name}", f"error: {err}", ""]
    for image, line, detail in entries:
        lines.append(f"== {image}: {line}" if image else f"== {line}")
        if detail:
            lines += [detail.rstrip(), ""]
    try:
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
        path.write_text("\n".join(lines) + "\n")
        for old in sorted(logs.glob("*.log"))[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        return None
    return path


def _entries(err: BaseException) -> list[tuple[str, str, str]]:
    """(image or "", one line, detail) for the error, or for each image of a failed stage."""
    if isinstance(err, StageFailed):
        return [
            (image, f"{cause(e)}: {brief(e, 1000)}", getattr(e, "detail", "")) for image, e in err.failures
        ]
    return [("", brief(err, 1000), err.detail if isinstance(err, LayoverError) else "")]
