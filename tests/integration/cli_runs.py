"""`layover run` as a process, against a standing `prefect server start`: what the tests that kill,
freeze or starve a run share.

    PrefectServer(home).start() / .stop() / .restart()   one server on 127.0.0.1, SQLite under
                                                         `home`, the same port across restarts
    start_cli(argv, env) -> Run                          its own session; output read by a thread
    stop_when(run, moment)                               poll until moment(), then SIGSTOP the group
                                                         and wait until every member is stopped
    kill_group(proc)                                     SIGKILL the group and reap it

Waits are for events (a process state, a log line, an HTTP answer, an empty pipe), never a
fixed sleep that hopes the event happened.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from layover.adapters.registry import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"


def prefect_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO",
    )
    return env


class PrefectServer:
    """`prefect server start` on 127.0.0.1 in its own session; restarts keep port and database."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def env(self) -> dict[str, str]:
        """The environment for clients (the CLI, workers) of this server."""
        return {**prefect_env(self.home), "PREFECT_API_URL": self.api}

    def start(self, timeout: float = 180) -> None:
        self.starts += 1
        log = open(self.home / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=prefect_env(self.home),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            assert self.proc.poll() is None, self.log()[-3000:]
            assert time.monotonic() < deadline, f"prefect server did not answer within {timeout:g} s"
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None

    def log(self) -> str:
        return (self.home / f"server-{self.starts}.log").read_text(errors="replace")


@dataclass
class Run:
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def text(self) -> str:
        return "".join(self.lines)

    def saw(self, pattern: str) -> bool:
        return re.search(pattern, self.text(), re.MULTILINE) is not None

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        assert self.reader is not None
        self.reader.join(timeout=10)
        return code


def start_cli(argv: list[str], env: dict[str, str]) -> Run:
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    run = Run(proc)
    assert proc.stdout is not None
    run.reader = threading.Thread(
        target=lambda: run.lines.extend(iter(proc.stdout.readline, "")), daemon=True
    )
    run.reader.start()
    return run


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    if sig == signal.SIGKILL:
        proc.wait(timeout=30)


def group_members(pgid: int) -> list[int]:
    """Every live process in process group `pgid` (from /proc)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def wait_stopped(pgid: int, timeout: float = 10) -> None:
    """Until every member of the group is in state T (stopped) or gone."""
    deadline = time.monotonic() + timeout
    while any(_state(pid) not in ("T", "t", "gone", "Z") for pid in group_members(pgid)):
        assert time.monotonic() < deadline, "the process group did not stop"
        time.sleep(0.005)


def drain(run: Run, timeout: float = 10) -> None:
    """Until the reader thread has taken everything the (stopped) run had written."""
    assert run.proc.stdout is not None
    fd = run.proc.stdout.fileno()
    buf = bytearray(4)
    deadline = time.monotonic() + timeout
    while True:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        if int.from_bytes(buf, "little") == 0:
            return
        assert time.monotonic() < deadline, "the reader did not drain the run's output"
        time.sleep(0.005)


def stop_when(run: Run, moment: Callable[[], bool], timeout: float = 180) -> None:
    """Poll tightly until `moment()` holds, then freeze the whole run with SIGSTOP; returns once
    every process of the run is stopped and its output so far is read."""
    deadline = time.monotonic() + timeout
    while not moment():
        if run.proc.poll() is not None:
            pytest.fail(f"the run ended before the moment came:\n{run.text()[-4000:]}")
        if time.monotonic() > deadline:
            kill_group(run.proc)
            pytest.fail(f"the moment never came within {timeout:g} s:\n{run.text()[-4000:]}")
        time.sleep(0.002)
    os.killpg(run.proc.pid, signal.SIGSTOP)
    wait_stopped(run.proc.pid)
    drain(run)


def resume(run: Run) -> None:
    os.killpg(run.proc.pid, signal.SIGCONT)


def finished(task: str) -> str:
    """The log line of a task run that completed."""
    return rf"Task run '{task}[^']*' - Finished in state Completed"
