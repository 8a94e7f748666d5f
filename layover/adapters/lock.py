"""One run per work dir on this host: an fcntl lock the kernel drops when the holder dies.

The lock file also holds a one-line description of the holder (run name, pid, host, start
time, Prefect flow-run id) so that a second run can say who is in the way. A crashed holder never
blocks the next run: its flock died with its process. A holder that lets go empties the file
first, so a description found by the next holder is one a dead process left: `Held.dead` (the
release flow marks that Prefect run crashed, since nothing else would).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DeadHolder:
    """What a holder that died without letting go wrote into the lock file."""

    run: str
    pid: int | None
    host: str
    since: str
    run_id: str | None  # its Prefect flow run, if it had one


@dataclass(frozen=True)
class Held:
    """What the lock file said when this process got the lock: nothing, or a dead holder."""

    dead: DeadHolder | None


@contextmanager
def work_dir_lock(
    path: Path, holder: str, *, wait_seconds: float = 0.0, run_id: str | None = None
) -> Iterator[Held]:
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
        left = os.pread(fd, 65536, 0)
        info = {
            "run": holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **({"run_id": run_id} if run_id else {}),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield Held(_parse(left))
        finally:
            os.ftruncate(fd, 0)  # let go cleanly: only a dead holder leaves a description
    finally:
        os.close(fd)  # closing drops the flock


def _parse(data: bytes) -> DeadHolder | None:
    try:
        info = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    pid = info.get("pid")
    run_id = info.get("run_id")
    return DeadHolder(
        run=str(info.get("run", "?")),
        pid=pid if isinstance(pid, int) else None,
        host=str(info.get("host", "")),
        since=str(info.get("since", "?")),
        run_id=str(run_id) if run_id else None,
    )


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
