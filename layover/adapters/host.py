"""This machine, as preflight asks about it (layover.preflight.Host): files, space, tools, the
Docker engine, and whether a source registry answers.

Nothing here starts anything: a probe file is created and removed at once, the engine is only
pinged, a registry only gets GET /v2/ (and a token request when it asks for one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx

from layover.adapters import lock
from layover.adapters.credential_helper import resolver
from layover.adapters.registry_client import SOURCE, Endpoint, RegistryClient
from layover.errors import (
    AuthError,
    CredentialsError,
    RegistryError,
    RegistryHTTPError,
    TLSError,
    brief,
)
from layover.preflight import Need, Ping, Reach, need_from_report


class LocalHost:
    def is_root(self) -> bool:
        return os.geteuid() == 0

    def which(self, tool: str) -> str | None:
        return shutil.which(tool)

    def docker_problem(self) -> str | None:
        return docker_ping(os.environ.get("DOCKER_HOST", ""))

    def cannot_write(self, directory: Path) -> str | None:
        try:
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".layover-preflight-")
        except OSError as e:
            return e.strerror or type(e).__name__
        os.close(fd)
        os.unlink(probe)
        return None

    def lock_holder(self, path: Path) -> str | None:
        return lock.holder(path)

    def free_bytes(self, path: Path) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def same_filesystem(self, a: Path, b: Path) -> bool:
        return os.stat(a).st_dev == os.stat(b).st_dev

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def env(self, key: str) -> str | None:
        return os.environ.get(key)

    def last_need(self, work_dir: Path, output: Path) -> Need | None:
        """The newest report of a release built into this output or from this work dir."""
        candidates = [output.with_name(output.name + ".json")]
        releases = work_dir / "releases"  # one report per package built (archive status)
        if releases.is_dir():
            candidates += releases.glob("*.json")
        found: list[tuple[float, Need]] = []
        for path in candidates:
            try:
                mtime = path.stat().st_mtime
                need = need_from_report(json.loads(path.read_bytes()), str(path))
            except (OSError, ValueError):
                continue
            if need is not None:
                found.append((mtime, need))
        return max(found, key=lambda x: x[0])[1] if found else None

    def ping(
        self, host: str, *, tls_verify: bool, cert_dir: Path | None, authfile: Path | None, timeout: float
    ) -> Ping:
        return ping_registry(
            host, tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile, timeout=timeout
        )


def docker_ping(docker_host: str, timeout: float = 5.0) -> str | None:
    """Why the Docker engine does not answer GET /_ping, or None. Spoken with httpx over the
    socket: the Docker SDK alone takes longer to import than every other check takes to run."""
    if docker_host.startswith("tcp://") and os.environ.get("DOCKER_TLS_VERIFY"):
        return _docker_sdk_ping()  # TLS client certificates: the SDK knows where they are
    if not docker_host or docker_host.startswith("unix://"):
        socket = docker_host.removeprefix("unix://") or "/var/run/docker.sock"
        transport = httpx.HTTPTransport(uds=socket)
        url = "http://docker/_ping"
    elif docker_host.startswith("tcp://"):
        transport, url = httpx.HTTPTransport(), "http://" + docker_host.removeprefix("tcp://") + "/_ping"
    else:
        return _docker_sdk_ping()  # ssh:// and friends
    try:
        with httpx.Client(transport=transport, timeout=timeout, trust_env=False) as http:
            resp = http.get(url)
    except httpx.HTTPError as e:
        return f"{url.removesuffix('/_ping')}: {_reason(e)}"
    return None if resp.status_code == 200 else f"GET /_ping answered {resp.status_code}"


def _docker_sdk_ping() -> str | None:
    import docker

    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except docker.errors.DockerException as e:
        return " ".join(str(e).split())[:200]
    return None


# --- GET /v2/ -------------------------------------------------------------------------------
def ping_registry(
    host: str, *, tls_verify: bool, cert_dir: Path | None, authfile: Path | None, timeout: float
) -> Ping:
    """Does a registry answer at `host`, and does it take the credentials skopeo would send?
    (RegistryClient speaks TLS and cert dirs as skopeo does; the resolver searches for
    credentials where skopeo searches.)"""
    found = resolver(authfile, SOURCE.authfile)
    try:
        creds = found.for_repository(host, None)
    except CredentialsError as e:  # a broken file of the search: preflight names it
        return Ping(Reach.REFUSED, brief(e))
    where = creds.source if creds is not None else ""
    try:
        with RegistryClient(
            Endpoint(host, tls_verify=tls_verify, cert_dir=cert_dir, flags=SOURCE), found, timeout=timeout
        ) as client:
            client.ping()
            if creds is None:
                return Ping(Reach.OK, "answered", "")  # 200, or 401: up, and skopeo will go anonymous
            client.login()
    except TLSError as e:
        return Ping(Reach.TLS, brief(e))
    except AuthError as e:
        return Ping(Reach.REFUSED, _status_of(e), where)
    except RegistryHTTPError as e:
        if e.status == 0:  # no answer at all: refused, reset, unknown host, timed out
            return Ping(Reach.UNREACHABLE, e.brief.partition(" returned 0: ")[2] or brief(e))
        return Ping(Reach.NOT_A_REGISTRY, f"HTTP {e.status}")
    except RegistryError as e:
        return Ping(Reach.UNREACHABLE, brief(e))
    return Ping(Reach.OK, "200", where)


def _status_of(e: AuthError) -> str:
    """ "HTTP 401 Unauthorized" out of RegistryClient's message."""
    m = re.search(r"\((40[13])[^)]*\)", str(e))
    if m is None:
        return brief(e)
    return f"HTTP {m.group(1)} {'Unauthorized' if m.group(1) == '401' else 'Forbidden'}"


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
