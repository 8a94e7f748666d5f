"""Prefect's temporary API server for one `layover run`, started the way Prefect starts it
(prefect/server/api/server.py, SubprocessASGIServer: uvicorn on 127.0.0.1 with the server app
factory, UI off, ephemeral services), with two differences:

- a session of its own: Ctrl-C in a terminal signals the whole foreground process group, and
  Prefect's own server, in the CLI's group, died with the same keystroke, before the run could
  record its end (the CLI then retried a dead server for 70 s);
- the kernel stops it when the CLI dies (PR_SET_PDEATHSIG), so a killed CLI leaves no server.

The CLI points Prefect at it with PREFECT_API_URL and stops it at exit, after Prefect has sent
its last logs and events (the atexit hook is registered before Prefect registers its own).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import httpx

from layover.adapters.registry import free_port
from layover.errors import LayoverError

_PR_SET_PDEATHSIG = 1
_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EmbeddedServer:
    """`launch()` returns at once (the server imports Prefect while the CLI does the same);
    `wait_ready()` blocks until /api/health answers; `stop()` is safe to call twice."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile(prefix="layover-prefect-server-")  # noqa: SIM115 - closed in stop()
        self.launched_at = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        spec = find_spec("prefect")
        if spec is None or spec.origin is None:
            raise LayoverError("prefect is not installed in this environment; run scripts/setup.sh")
        app_dir = str(Path(spec.origin).parent.parent)
        self.port = free_port()
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                app_dir,
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            },
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # preexec_fn is unsafe with threads; the CLI launches this before it starts any
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)

    def wait_ready(self, timeout: float = 120) -> float:
        """Block until the server answers; the seconds since launch."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, trust_env=False) as http:
            while True:
                assert self.proc is not None, "launch() first"
                status = self.proc.poll()
                if status == _PORT_IN_USE:  # another process took the port meanwhile
                    self.launch()
                    continue
                if status is not None:
                    raise LayoverError(
                        f"Prefect's temporary server exited {status} while starting: {self._tail()}"
                    )
                try:
                    if http.get(f"{self.api_url}/health").status_code == 200:
                        return time.monotonic() - self.launched_at
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise LayoverError(
                        f"Prefect's temporary server did not answer within {timeout:g} s; "
                        "set PREFECT_API_URL to a standing server instead"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not self._log.closed and proc is not None:
            self._log.close()

    def _tail(self) -> str:
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-5:]) or "(no output)"
