"""This machine, as preflight asks about it (layover.preflight.Host): files, space, tools, the
Docker engine, and whether a source registry answers.

Nothing here starts anything: a probe file is created and removed at once, the engine is only
pinged, a registry only gets GET /v2/ (and a token request when it asks for one).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import tempfile
from pathlib import Path

import httpx

from layover.adapters import lock
from layover.preflight import Need, Ping, Reach, need_from_report

_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


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
# SEAM(remote): the `remote` branch brings layover/adapters/registry_client.py (RegistryClient:
# TLS and cert dirs as skopeo, Basic/Bearer) and layover/auth.py (skopeo's whole credential
# search: credHelpers, registries.conf helpers, namespaced keys). Once they are on main, build
# this ping from RegistryClient(Endpoint(host, tls_verify, cert_dir, flags=SOURCE),
# credential_helper.resolver(authfile, "--src-authfile")) and drop `_credentials` and `_tls`.
def ping_registry(
    host: str, *, tls_verify: bool, cert_dir: Path | None, authfile: Path | None, timeout: float
) -> Ping:
    """Does a registry answer at `host`, and does it take the credentials skopeo would send?"""
    creds, where = _credentials(host, authfile)
    # like skopeo: https first; plain http only when verification is off
    schemes = ["https"] if tls_verify else ["https", "http"]
    last = Ping(Reach.UNREACHABLE, "no answer")
    with httpx.Client(verify=_tls(host, tls_verify, cert_dir), timeout=timeout, trust_env=False) as http:
        for scheme in schemes:
            url = f"{scheme}://{host}/v2/"
            try:
                resp = http.get(url)
            except httpx.TimeoutException:
                last = Ping(Reach.UNREACHABLE, f"no answer within {timeout:g} s")
                continue
            except httpx.TransportError as e:
                reason = _reason(e)
                tls_failed = scheme == "https" and tls_verify and _is_tls(e)
                last = Ping(Reach.TLS if tls_failed else Reach.UNREACHABLE, reason)
                continue
            return _answered(http, resp, creds, where)
    return last


def _answered(http: httpx.Client, resp: httpx.Response, creds: tuple[str, str] | None, where: str) -> Ping:
    if resp.status_code == 200:
        return Ping(Reach.OK, "200", where if creds else "")
    if resp.status_code != 401:
        return Ping(Reach.NOT_A_REGISTRY, f"HTTP {resp.status_code}")
    if creds is None:
        return Ping(Reach.ANONYMOUS, "401 without credentials")
    challenge = resp.headers.get("WWW-Authenticate", "")
    scheme = challenge.split(" ", 1)[0].lower()
    try:
        if scheme == "basic":
            again = http.get(resp.request.url, auth=creds)
        elif scheme == "bearer":
            params = dict(_CHALLENGE.findall(challenge))
            realm = params.pop("realm", "")
            if not realm:
                return Ping(Reach.OK, "bearer without realm", where)
            again = http.get(realm, params={**params, "account": creds[0]}, auth=creds)
        else:
            return Ping(Reach.OK, f"unknown auth scheme {scheme!r}", where)
    except httpx.HTTPError as e:
        return Ping(Reach.UNREACHABLE, f"while logging in: {_reason(e)}")
    if again.status_code in (401, 403):
        return Ping(Reach.REFUSED, f"HTTP {again.status_code} {again.reason_phrase}", where)
    return Ping(Reach.OK, f"HTTP {again.status_code}", where)


def credentials_file(host: str, authfile: Path | None = None) -> Path | None:
    """The auth file skopeo takes `host`'s credentials from, or None."""
    _, where = _credentials(host, authfile)
    return Path(where) if where else None


def _credentials(host: str, authfile: Path | None) -> tuple[tuple[str, str] | None, str]:
    """(user, password) for `host` from the auth files skopeo reads, in its order, and which
    file they came from. Never logged; the caller only ever shows the file name."""
    env = os.environ
    home = Path(env.get("HOME") or Path.home())
    files: list[Path] = []
    if authfile is not None:
        files.append(authfile)
    elif env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    elif env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    else:
        files.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    files.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json")
    files.append(Path(env.get("DOCKER_CONFIG") or home / ".docker") / "config.json")
    for path in files:
        try:
            auths = json.loads(path.read_bytes()).get("auths") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key in (host, f"https://{host}", f"http://{host}", f"{host}/v2/", f"https://{host}/v2/"):
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict) and entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    continue
                return (user, password), str(path)
    return None, ""


def _tls(host: str, tls_verify: bool, cert_dir: Path | None) -> ssl.SSLContext | bool:
    if not tls_verify:
        return False
    ctx = ssl.create_default_context()
    candidates = (
        [cert_dir]
        if cert_dir is not None
        else [Path("/etc/containers/certs.d") / host, Path("/etc/docker/certs.d") / host]
    )
    for directory in candidates:
        if directory is None or not directory.is_dir():
            continue
        for ca in sorted(directory.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(ca))
        for cert in sorted(directory.glob("*.cert")):
            key = cert.with_suffix(".key")
            if key.exists():
                ctx.load_cert_chain(str(cert), str(key))
        break
    return ctx


def _is_tls(e: BaseException) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    return "CERTIFICATE_VERIFY_FAILED" in text or "WRONG_VERSION_NUMBER" in text or "SSL" in text


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
