"""The one subprocess runner. Every external command Layover runs goes through `run`.

argv lists only, never a shell. The command line is logged with `shlex.join` at DEBUG, with
every `secrets` substring replaced by `***` (in the log and in errors). A non-zero exit raises
CommandError, or whatever subclass the caller's `classify` hook picks from stderr; a timeout
raises TransientCommandError.

Every command running is known here, so a stopping run (Ctrl-C, SIGTERM) can end them all at
once with `stop_all` and start no new one: a command killed that way, or by the terminal's own
SIGINT, raises Interrupted, which nothing retries.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from layover.errors import CommandError, Interrupted, LayoverError, TransientCommandError

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


_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
_stopping: int | None = None  # the signal that stops this process's run, once one did


def stop_all(signal_number: int) -> int:
    """Kill every command running now and refuse new ones; how many were killed."""
    global _stopping
    with _live_lock:
        _stopping = signal_number
        procs = list(_live)
    for proc in procs:
        try:
            proc.kill()  # skopeo keeps nothing worth a graceful end: the archive only ever adds
        except ProcessLookupError:
            pass
    if procs:
        log.info("stopped %d running command(s)", len(procs))
    return len(procs)


def stopping() -> int | None:
    """The signal the run is stopping for, or None."""
    return _stopping


def resume() -> None:
    """Allow commands again (a new run in the same process, e.g. a test)."""
    global _stopping
    with _live_lock:
        _stopping = None


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
    cleanup: bool = False,
) -> Completed:
    """Run argv and return its output; raise a CommandError (subclass) if it fails.

    `env` replaces the environment entirely when given (pass `{**os.environ, ...}` to extend it).
    `check=False` returns non-zero results instead of raising (timeouts still raise).
    `cleanup=True`: part of ending a run (an unmount), so it runs while the run is stopping and
    `stop_all` leaves it alone.
    """
    if not argv:
        raise ValueError("run() needs a non-empty argv")
    argv = [os.fspath(a) for a in argv]
    shown = [redact(a, secrets) for a in argv]
    log.debug("run: %s", shlex.join(shown))
    started = time.monotonic()
    try:
        with _live_lock:
            if _stopping is not None and not cleanup:
                raise Interrupted(f"not starting {shown[0]}: the run is stopping", _stopping)
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else None,
            )
            if not cleanup:
                _live.add(proc)
    except FileNotFoundError:
        raise CommandError(
            shown,
            127,
            f"{argv[0]}: command not found",
            hint="install it (scripts/setup.sh installs every tool Layover needs)",
        ) from None
    try:
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            stderr = redact(_decode(err), secrets)
            raise TransientCommandError(
                shown,
                -1,
                stderr + f"\ntimed out after {timeout:g} s",
                hint="the command hung; retry, or raise the timeout if the work is just slow",
            ) from None
    finally:
        with _live_lock:
            _live.discard(proc)
    stopped = proc.returncode in (-signal.SIGINT, -signal.SIGTERM) or (
        _stopping is not None and proc.returncode != 0
    )
    if stopped and not cleanup:
        sig = _stopping or -proc.returncode
        raise Interrupted(f"{shown[0]} was stopped ({signal.Signals(sig).name})", sig)
    seconds = time.monotonic() - started
    stderr = redact(_decode(err), secrets)
    result = Completed(tuple(shown), proc.returncode, out, stderr, seconds)
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
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")
