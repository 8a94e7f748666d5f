"""Running `layover` as a user does, for the CLI's integration tests: a standing Prefect server,
the CLI in a pipe or in a pseudo-terminal, and ways to catch a run at a moment.

    standing_prefect(home)        -> (env for CLI runs against it, stop)
    Cli(argv, env, tty=False)     a running `layover ...`; .text(), .wait(), .freeze(), .thaw()
    descendants(pid)              every process below pid (for "nothing left running")
    started_servers(home)         Prefect server processes started with PREFECT_HOME=home
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
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


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAYOVER_"))}
    env.update(
        PREFECT_HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),
        COLUMNS="100",
    )
    return env


def standing_prefect(home: Path) -> tuple[dict[str, str], Callable[[], None]]:
    """`prefect server start` on 127.0.0.1 in its own session; the env to point runs at it."""
    home.mkdir(parents=True, exist_ok=True)
    env = base_env(home)
    port = free_port()
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed by stop()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"

    def stop() -> None:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=30)
        log.close()

    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop()
            raise AssertionError((home / "server.log").read_text()[-3000:])
        time.sleep(0.3)
    return {**env, "PREFECT_API_URL": api}, stop


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
                if not ready:
                    if self.returncode is not None:
                        return
                    continue
                data = os.read(self._fd, 65536)
            except OSError:  # EIO: the pty's other end is gone
                return
            if not data:
                return
            self._chunks.append(data)

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
        self._reader.join(timeout=5)
        assert self.returncode is not None
        return self.returncode

    def wait_until(self, moment: Callable[[], bool], timeout: float = 180, what: str = "the moment") -> None:
        """Poll tightly until `moment()` holds (the run must still be going)."""
        deadline = time.monotonic() + timeout
        while not moment():
            if self.poll() is not None:
                raise AssertionError(f"the run ended before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{what} never came within {timeout:g} s:\n{self.text()[-3000:]}")
            time.sleep(0.005)

    def freeze(self) -> None:
        """SIGSTOP the whole process group (the CLI and its commands; not a server in a session
        of its own): the moment stays as it is until thaw()."""
        os.killpg(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to its foreground process group."""
        assert self.tty, "Ctrl-C needs the pseudo-terminal"
        os.write(self._fd, b"\x03")

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.poll()


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process below `pid`."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        cmdlines[int(entry)] = cmd
    found, frontier = [], {pid}
    while frontier:
        children = {p for p, pp in parents.items() if pp in frontier}
        found += [(p, cmdlines[p]) for p in children]
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
