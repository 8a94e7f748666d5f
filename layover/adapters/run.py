"""The one subprocess runner. Every external command Layover runs goes through `run`.

argv lists only, never a shell. The command line is logged with `shlex.join` at DEBUG, with
every `secrets` substring replaced by `***` (in the log and in errors). A non-zero exit raises
CommandError, or whatever subclass the caller's `classify` hook picks from stderr; a timeout
raises TransientCommandError.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from layover.errors import CommandError, LayoverError, TransientCommandError

log = logging.getLogger(__name__)

REDACTED = "***"

# Maps a failed command to the error to raise; returning None keeps the plain CommandError.
Classifier = Callable[[Sequence[str], int, str], LayoverError | None]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]  # secrets already redacted
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def redact(text: str, secrets: Sequence[str]) -> str:
    # Longest first, so a secret containing another one is not left half visible.
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,  # noqa: A002 - mirrors subprocess.run
    secrets: Sequence[str] = (),
    classify: Classifier | None = None,
    check: bool = True,
) -> Completed:
    """Run argv and return its output; raise a CommandError (subclass) if it fails.

    `env` replaces the environment entirely when given (pass `{**os.environ, ...}` to extend it).
    `check=False` returns non-zero results instead of raising (timeouts still raise).
    """
    if not argv:
        raise ValueError("run() needs a non-empty argv")
    argv = [os.fspath(a) for a in argv]
    shown = [redact(a, secrets) for a in argv]
    log.debug("run: %s", shlex.join(shown))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        stderr = redact(_decode(e.stderr), secrets)
        raise TransientCommandError(
            shown, -1, stderr + f"\ntimed out after {timeout:g} s",
            hint="the command hung; retry, or raise the timeout if the work is just slow",
        ) from None
    except FileNotFoundError:
        raise CommandError(
            shown, 127, f"{argv[0]}: command not found",
            hint="install it (scripts/setup.sh installs every tool Layover needs)",
        ) from None
    seconds = time.monotonic() - started
    stderr = redact(_decode(proc.stderr), secrets)
    result = Completed(tuple(shown), proc.returncode, proc.stdout, stderr, seconds)
    log.debug("run: %s exited %d after %.2f s", shown[0], proc.returncode, seconds)
    if proc.returncode != 0 and check:
        error = classify(shown, proc.returncode, stderr) if classify else None
        raise error or CommandError(shown, proc.returncode, stderr)
    return result


def start_detached(argv: Sequence[str]) -> int:
    """Start argv in its own session and do not wait: for background housekeeping that must not
    hold this process's GIL or die with it (deleting a discarded overlay upper). No shell, no
    output kept. Returns the pid."""
    log.debug("start detached: %s", shlex.join(argv))
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    return proc.pid


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")
