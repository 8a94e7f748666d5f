"""One run per work dir on this host: an fcntl lock the kernel drops when the holder dies.

The lock file also holds a one-line description of the holder (run name, pid, host, start
time) so that a second run can say who is in the way. A crashed holder never blocks the next
run: its flock died with its process, and the stale description is simply overwritten.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layover.errors import LockedError


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "an unknown holder"
    return (
        f"run {info.get('run', '?')!r} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
        f"since {info.get('since', '?')})"
    )


@contextmanager
def work_dir_lock(path: Path, holder: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the lock for the body; wait up to `wait_seconds`, then raise LockedError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"work dir {path.parent} is in use by {_describe(path)}; wait for it to "
                        "finish, or use another --work-dir"
                    ) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        info = {
            "run": holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def holder(path: Path) -> str | None:
    """Who holds the lock now, or None if nobody does (a missing file: nobody)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(path)
    finally:
        os.close(fd)  # closing drops a lock we got
    return None
