"""Running `layover` as a user does, for the CLI's integration tests: a standing Prefect server,
the CLI in a pipe or in a pseudo-terminal, and ways to catch a run at a moment.

    PrefectServer(home)        `prefect server start` on 127.0.0.1 in its own session, SQLite under
                               `home`; .start(), .stop(), .env() for runs against it (one per
                               module: the prefect_api fixture, tests/integration/conftest.py)
    base_env(home)             the environment of a run or server with PREFECT_HOME=home and none
                               of this host's PREFECT_/LAYOVER_ settings
    Cli(argv, env, tty=False)  a running `layover ...` in its own session; .text(), .saw(),
                               .wait(), .wait_until(), .freeze(), .thaw(), .freeze_at(), .kill()
    kill_group(pgid)           SIGKILL a process group (a session leader's pid)
    wait_stopped(pgid)         until every member of a process group is stopped (SIGSTOP)
    finished(task)             the log line of a task run that completed (needs task_logs=True)
    descendants(pid)           every process below pid (for "nothing left running")
    started_servers(home)      Prefect server processes started with PREFECT_HOME=home
    mounted_under(path)        mount points at or below path

Waits are for events (a process state, a log line, an HTTP answer, an empty pipe), never a fixed
sleep that hopes the event happened.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from layover.adapters.registry import free_port

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")


def layover(*args: str) -> list[str]:
    """argv for this checkout's `layover` (the worktree's code, whatever venv runs it)."""
    return [sys.executable, "-m", "layover.cli", *args]


def run_argv(images: Path, source: str, work: Path, output: Path, *extra: str) -> list[str]:
    """`layover run` of a list from a plain-HTTP test registry, 4 copies at a time."""
    return layover(
        "run",
        "--images",
        str(images),
        "--source",
        source,
        "--no-src-tls-verify",
        "--work-dir",
        str(work),
        "--output",
        str(output),
        "--concurrency",
        "4",
        *extra,
    )


def base_env(home: Path, *, task_logs: bool = False) -> dict[str, str]:
    """task_logs: Prefect's INFO console lines (a task run's "Finished in state Completed") in
    the CLI's output, for tests that watch a run's tasks; without it the CLI keeps Prefect's
    console quiet (layover/cli/app.py), which is what a user sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAYOVER_"))}
    env.update(
        PREFECT_HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),
        COLUMNS="100",
    )
    if task_logs:
        env["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
    return env


def finished(task: str) -> str:
    """The log line of a task run that completed."""
    return rf"Task run '{task}[^']*' - Finished in state Completed"


def kill_group(pgid: int) -> None:
    """SIGKILL every process in group `pgid` (stopped ones too); a group already gone is fine.
    The caller reaps its own child."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class PrefectServer:
    """`prefect server start` on 127.0.0.1 in its own session (a frozen or killed run's group
    never includes it); a restart keeps the port and the database."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self, *, task_logs: bool = False) -> dict[str, str]:
        """The environment for clients (the CLI, workers) of this server."""
        return {**base_env(self.home, task_logs=task_logs), "PREFECT_API_URL": self.api}

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = open(self.home / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=base_env(self.home, task_logs=True),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"prefect server did not answer within {timeout:g} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.proc.wait(timeout=30)
            self.proc = None

    def log(self) -> str:
        return (self.home / f"server-{self.starts}.log").read_text(errors="replace")


class Cli:
    """`layover ...` running in its own session, in a pipe (stdout and stderr together) or in a
    pseudo-terminal (what a user's terminal is: Ctrl-C is the byte 0x03)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], *, tty: bool = False, embedded: bool = False
    ) -> None:
        self.home = Path(env.get("PREFECT_HOME", ""))
        self.embedded = embedded  # Prefect's temporary server (no PREFECT_API_URL)
        self.started = time.monotonic()
        self.ended: float | None = None
        self._chunks: list[bytes] = []
        self._reading = threading.Lock()  # held from a read to its append (see _drain)
        self.tty = tty
        if tty:
            pid, fd = pty.fork()
            if pid == 0:  # the child: a session leader with the pty as its terminal
                try:
                    os.execvpe(argv[0], argv, env)
                finally:
                    os._exit(127)
            self.pid, self._fd = pid, fd
            self.proc: subprocess.Popen[bytes] | None = None
        else:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.pid, self._fd = self.proc.pid, self.proc.stdout.fileno()  # type: ignore[union-attr]
        self.returncode: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.2)
            except OSError:
                return
            if not ready:
                if self.returncode is not None:
                    return
                continue
            with self._reading:
                try:
                    data = os.read(self._fd, 65536)
                except OSError:  # EIO: the pty's other end is gone
                    return
                if not data:
                    return
                self._chunks.append(data)

    def _drain(self, timeout: float = 10) -> None:
        """Until the reader has taken everything written so far (the run is frozen)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                waiting = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * 4))[0]
            except OSError:  # closed: the reader has had it all
                return
            if waiting == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the reader did not take the run's output")
            time.sleep(0.005)
        with self._reading:  # a read already under way has appended what it took
            pass

    def text(self) -> str:
        """Everything printed so far, terminal control sequences removed."""
        return ANSI.sub("", b"".join(self._chunks).decode("utf-8", "replace"))

    def saw(self, pattern: str) -> bool:
        return re.search(pattern, self.text(), re.MULTILINE) is not None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.ended = time.monotonic()
        return self.returncode

    def wait(self, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"layover did not end within {timeout:g} s:\n{self.text()[-3000:]}")
            time.sleep(0.02)
        self._reader.join(timeout=10)
        assert self.returncode is not None
        return self.returncode

    def wait_until(self, moment: Callable[[], bool], timeout: float = 180, what: str = "the moment") -> None:
        """Poll tightly until `moment()` holds (the run must still be going)."""
        deadline = time.monotonic() + timeout
        while not moment():
            if self.poll() is not None:
                raise AssertionError(f"the run ended before {what}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{what} never came within {timeout:g} s:\n{self.text()[-4000:]}")
            time.sleep(0.002)

    def freeze(self) -> None:
        """SIGSTOP the whole process group (the CLI and its commands; not a server in a session
        of its own); returns once every member is stopped and the output so far is read. The
        moment stays as it is until thaw()."""
        os.killpg(self.pid, signal.SIGSTOP)
        wait_stopped(self.pid)
        self._drain()

    def freeze_at(self, moment: Callable[[], bool], timeout: float = 180, what: str = "the moment") -> None:
        self.wait_until(moment, timeout, what)
        self.freeze()

    def thaw(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to its foreground process group."""
        assert self.tty, "Ctrl-C needs the pseudo-terminal"
        os.write(self._fd, b"\x03")

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the group (frozen or not) and reap the CLI."""
        kill_group(self.pid)
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"layover (pid {self.pid}) outlived SIGKILL for {timeout:g} s")
            time.sleep(0.005)
        self._reader.join(timeout=10)


def _processes() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            found[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return found


def wait_stopped(pgid: int, timeout: float = 10) -> None:
    """Until every live member of process group `pgid` is in state T (stopped)."""
    deadline = time.monotonic() + timeout
    while any(f[0] not in ("T", "t", "Z", "X") for f in _processes().values() if int(f[2]) == pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {pgid} did not stop")
        time.sleep(0.005)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process below `pid`."""
    parents = {p: int(f[1]) for p, f in _processes().items()}
    found, frontier = [], {pid}
    while frontier:
        children = {p for p, pp in parents.items() if pp in frontier}
        for p in children:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:  # gone meanwhile
                continue
            found.append((p, cmd))
        frontier = children
    return found


def started_servers(home: Path) -> list[int]:
    """Pids of Prefect server processes whose environment has PREFECT_HOME=home."""
    needle = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"uvicorn" not in cmd and b"server" not in cmd:
                continue
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(int(entry))
        except OSError:
            continue
    return found


def mounted_under(path: Path) -> list[str]:
    return [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(path))
    ]
