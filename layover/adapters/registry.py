"""Registry containers (Docker SDK): start, health-check, restart, stop, clean up.

Every container runs with host networking on REGISTRY_HTTP_ADDR=127.0.0.1:<port>: no published
port, so no docker-proxy copying bytes in user space and no bridge address (docs/design.md §3). Each gets a
generated config with

- no blob-descriptor cache: it goes stale when links or blobs are deleted under it and then makes
  skopeo "skip" blobs that cannot be pulled (docs/design.md §3);
- upload purging off: it runs even in read-only mode and would write into the overlay lowerdir;
- read-only maintenance mode plus a `:ro` storage bind mount when `read_only`;
- the same `validation.manifests.urls.allow` on every registry of a manager, so foreign layers
  the archive accepted are accepted by the package registry too;
- the access log on, so tests can count upload requests (`access_log`).

Containers carry labels `layover=1`, `layover.scope=<scope>`, `layover.role=<role>`, so
`remove_scope()` can clear out what a crashed run left behind.

Never remount or delete storage under a running registry: `stop` it (or `restart` it after).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from layover.errors import RegistryError

log = logging.getLogger(__name__)

CONTAINER_STORAGE = "/var/lib/registry"
CONTAINER_CONFIG = "/etc/docker/registry/config.yml"
_SETUP_HINT = "is dockerd running? run scripts/setup.sh"
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def docker_client() -> docker.DockerClient:
    """A Docker SDK client for the local engine, or a RegistryError saying how to start one."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as e:
        raise RegistryError(f"cannot reach the docker engine ({e}); {_SETUP_HINT}") from None
    return client


@dataclass(frozen=True)
class Registry:
    """A running registry container, as `RegistryManager.start` returned it."""

    role: str
    container_id: str
    name: str
    host: str  # "127.0.0.1:<port>", for docker:// references
    storage: Path
    read_only: bool
    auth_htpasswd: Path | None = None  # basic auth (htpasswd, bcrypt) when set
    tls: tuple[Path, Path] | None = None  # (certificate, key) PEM files: serves https

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rpartition(":")[2])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONTAINER_HTPASSWD = "/etc/docker/registry/htpasswd"
CONTAINER_TLS_CERT = "/etc/docker/registry/tls.crt"
CONTAINER_TLS_KEY = "/etc/docker/registry/tls.key"


def render_config(
    port: int,
    *,
    read_only: bool,
    validation_urls_allow: Sequence[str],
    blob_cache: bool = False,
    auth_htpasswd: bool = False,
    tls: bool = False,
) -> str:
    """The registry config.yml. JSON-quoted strings are valid YAML and need no yaml library.

    `blob_cache` exists only for the negative-control test: the in-memory blob-descriptor cache
    goes stale when storage changes underneath a running registry (docs/design.md §3).
    """
    import json

    cache = "\n  cache:\n    blobdescriptor: inmemory" if blob_cache else ""

    allow = "".join(f"\n        - {json.dumps(p)}" for p in validation_urls_allow)
    # basic auth for test registries that stand in for a CI registry with credentials
    auth = (
        f"auth:\n  htpasswd:\n    realm: layover\n    path: {CONTAINER_HTPASSWD}\n" if auth_htpasswd else ""
    )
    # TLS for test registries that stand in for a customer's HTTPS registry
    tls_section = (
        f"\n  tls:\n    certificate: {CONTAINER_TLS_CERT}\n    key: {CONTAINER_TLS_KEY}" if tls else ""
    )
    return f"""\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {CONTAINER_STORAGE}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: {"true" if read_only else "false"}{cache}
http:
  addr: 127.0.0.1:{port}{tls_section}
validation:
  manifests:
    urls:
      allow:{allow if allow else " []"}
{auth}"""


class RegistryManager:
    """Starts and tracks registry containers for one scope (one run, or one test).

    `config_dir` receives the generated config files; without it a temp dir is used and removed
    by `remove_scope()`/`close()`.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        label_scope: str,
        *,
        config_dir: Path | None = None,
        validation_urls_allow: Sequence[str] = (".*",),
        blob_cache: bool = False,
    ) -> None:
        self.client = client
        self.image = image
        self.label_scope = label_scope
        self.validation_urls_allow = tuple(validation_urls_allow)
        self.blob_cache = blob_cache
        self._own_config_dir = config_dir is None
        self._config_dir = config_dir

    # --- public API --------------------------------------------------------------------
    def start(
        self,
        role: str,
        storage: Path,
        *,
        read_only: bool = False,
        port: int | None = None,
        auth_htpasswd: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> Registry:
        """Create and start a registry serving `storage`, and wait until it answers /v2/.

        A stale container of the same scope and role (a crashed run) is removed first.
        `auth_htpasswd` (an htpasswd file with bcrypt entries) turns on basic auth; `tls`
        (certificate, key) makes it serve https only.
        """
        storage = Path(storage).resolve()
        if not storage.is_dir():
            raise RegistryError(f"registry storage {storage} is not a directory; create it first")
        name = self.container_name(role)
        self._remove_by_name(name)
        # Picking a port and binding it later races with other processes; retry on a fresh port.
        attempts = 1 if port is not None else 3
        last: RegistryError | None = None
        for _ in range(attempts):
            chosen = port if port is not None else free_port()
            reg = self._create(role, name, storage, read_only, chosen, auth_htpasswd, tls)
            try:
                self.wait_healthy(reg)
                return reg
            except RegistryError as e:
                last = e
                logs = self.logs(reg)
                self._remove_by_name(name)
                if "address already in use" not in logs:
                    raise
        assert last is not None
        raise last

    def restart(self, reg: Registry, timeout: float = 30) -> Registry:
        """Restart the container (dropping every in-memory state) and wait until it answers.

        If the container is gone it is recreated with the same role, storage, mode and port.
        """
        try:
            self.client.containers.get(reg.container_id).restart(timeout=10)
        except docker.errors.NotFound:
            log.warning("registry %s vanished; recreating it", reg.name)
            new = self._create(
                reg.role, reg.name, reg.storage, reg.read_only, reg.port, reg.auth_htpasswd, reg.tls
            )
            self.wait_healthy(new, timeout=timeout)
            return new
        except docker.errors.APIError as e:
            raise RegistryError(f"cannot restart registry {reg.name}: {e}; {_SETUP_HINT}") from None
        self.wait_healthy(reg, timeout=timeout)
        return reg

    def ensure_serving(self, reg: Registry, timeout: float = 30) -> bool:
        """Bring `reg` back if it stopped answering (killed, engine restarted). True if revived.

        Looks the container up by name, not id: a recreated container keeps the name and port.
        """
        try:
            if _get(reg).status_code in _answering(reg):
                return False
        except httpx.HTTPError:
            pass
        log.warning("registry %s (%s) is not answering; restarting it", reg.name, reg.url)
        try:
            container = self.client.containers.get(reg.name)
            container.restart(timeout=2)
            current = dataclasses.replace(reg, container_id=container.id)
        except docker.errors.NotFound:
            current = self._create(
                reg.role, reg.name, reg.storage, reg.read_only, reg.port, reg.auth_htpasswd, reg.tls
            )
        except docker.errors.APIError as e:
            raise RegistryError(f"cannot restart registry {reg.name}: {e}; {_SETUP_HINT}") from None
        self.wait_healthy(current, timeout=timeout)
        return True

    def stop(self, reg: Registry) -> None:
        """Stop and remove the container (no error if it is already gone)."""
        self._remove_by_name(reg.name)
        if self._config_dir is not None:
            self._config_path(reg.role).unlink(missing_ok=True)

    def remove_scope(self) -> list[str]:
        """Remove every container labelled with this scope, running or not. Returns their names."""
        containers = []
        try:
            containers = self.client.containers.list(
                all=True, filters={"label": [f"layover.scope={self.label_scope}"]}
            )
            for c in containers:
                c.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise RegistryError(
                f"cannot remove registry containers of scope {self.label_scope}: {e}; {_SETUP_HINT}"
            ) from None
        self.close()
        return [c.name for c in containers]

    def close(self) -> None:
        """Remove the temporary config dir, if this manager made one."""
        if self._own_config_dir and self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None

    def wait_healthy(self, reg: Registry, timeout: float = 30) -> None:
        """Wait until GET /v2/ answers 200; fail fast if the container exits."""

        def probe() -> None:
            try:
                r = _get(reg)
            except httpx.HTTPError:
                status = self._status(reg)  # asked only while it does not answer: ~10 ms a call
                if status in ("exited", "dead"):
                    raise _Exited(status) from None
                raise
            if r.status_code not in _answering(reg):
                raise httpx.HTTPStatusError(f"{r.status_code}", request=r.request, response=r)

        try:
            for attempt in Retrying(
                stop=stop_after_delay(timeout),
                # a registry answers ~50 ms after its start: polls 10, 20, 40 ms apart, then 0.1 s
                wait=wait_exponential(multiplier=0.01, max=0.1),
                retry=retry_if_exception_type(httpx.HTTPError),
                reraise=False,
            ):
                with attempt:
                    probe()
        except _Exited as e:
            raise RegistryError(
                f"registry {reg.name} ({reg.url}) {e.status} while starting; its log ends:\n"
                f"{_tail(self.logs(reg))}"
            ) from None
        except RetryError as e:
            cause = e.last_attempt.exception()
            raise RegistryError(
                f"registry {reg.name} did not answer GET {reg.url}/v2/ with 200 within {timeout:g} s "
                f"(last: {cause!r}); its log ends:\n{_tail(self.logs(reg))}"
            ) from None

    def access_log(self, reg: Registry) -> str:
        """The container's stdout: the HTTP access log (one line per request)."""
        return self._logs(reg, stdout=True, stderr=False)

    def logs(self, reg: Registry) -> str:
        """Everything the container printed (access log and application log)."""
        return self._logs(reg, stdout=True, stderr=True)

    def container_name(self, role: str) -> str:
        return _NAME_UNSAFE.sub("-", f"layover-{self.label_scope}-{role}")

    # --- internals ---------------------------------------------------------------------
    def _config_path(self, role: str) -> Path:
        if self._config_dir is None:
            self._config_dir = Path(tempfile.mkdtemp(prefix="layover-registry-config-"))
        self._config_dir.mkdir(parents=True, exist_ok=True)
        return self._config_dir / f"{_NAME_UNSAFE.sub('-', role)}.yml"

    def _create(
        self,
        role: str,
        name: str,
        storage: Path,
        read_only: bool,
        port: int,
        auth_htpasswd: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> Registry:
        config = self._config_path(role)
        config.write_text(
            render_config(
                port,
                read_only=read_only,
                validation_urls_allow=self.validation_urls_allow,
                blob_cache=self.blob_cache,
                auth_htpasswd=auth_htpasswd is not None,
                tls=tls is not None,
            )
        )
        volumes = {
            str(storage): {"bind": CONTAINER_STORAGE, "mode": "ro" if read_only else "rw"},
            str(config): {"bind": CONTAINER_CONFIG, "mode": "ro"},
        }
        if auth_htpasswd is not None:
            volumes[str(Path(auth_htpasswd).resolve())] = {"bind": CONTAINER_HTPASSWD, "mode": "ro"}
        if tls is not None:
            tls = (Path(tls[0]).resolve(), Path(tls[1]).resolve())
            volumes[str(tls[0])] = {"bind": CONTAINER_TLS_CERT, "mode": "ro"}
            volumes[str(tls[1])] = {"bind": CONTAINER_TLS_KEY, "mode": "ro"}
        try:
            container = self.client.containers.run(
                self.image,
                command=["serve", CONTAINER_CONFIG],
                name=name,
                detach=True,
                network_mode="host",
                environment={"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}"},
                volumes=volumes,
                labels={
                    "layover": "1",
                    "layover.scope": self.label_scope,
                    "layover.role": role,
                },
            )
        except docker.errors.ImageNotFound:
            raise RegistryError(
                f"registry image {self.image} is not in the engine; run scripts/setup.sh "
                "(python -m layover.adapters.registry_image builds one offline)"
            ) from None
        except docker.errors.APIError as e:
            raise RegistryError(f"cannot start registry {name}: {e}; {_SETUP_HINT}") from None
        log.info(
            "registry %s (%s) on 127.0.0.1:%d serving %s%s",
            name,
            role,
            port,
            storage,
            " read-only" if read_only else "",
        )
        return Registry(role, container.id, name, f"127.0.0.1:{port}", storage, read_only, auth_htpasswd, tls)

    def _remove_by_name(self, name: str) -> None:
        try:
            self.client.containers.get(name).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code == 409 and "already in progress" in str(e):
                return  # another remove is racing us; it will finish the job
            raise RegistryError(f"cannot remove container {name}: {e}; {_SETUP_HINT}") from None

    def _status(self, reg: Registry) -> str:
        try:
            c = self.client.containers.get(reg.container_id)
        except docker.errors.NotFound:
            return "dead"
        return c.status

    def _logs(self, reg: Registry, *, stdout: bool, stderr: bool) -> str:
        try:
            raw = self.client.containers.get(reg.container_id).logs(stdout=stdout, stderr=stderr)
        except docker.errors.NotFound:
            return ""
        except docker.errors.APIError as e:
            raise RegistryError(f"cannot read logs of {reg.name}: {e}; {_SETUP_HINT}") from None
        return raw.decode("utf-8", "replace")


def _get(reg: Registry) -> httpx.Response:
    # A health check of our own loopback container: its certificate is the test's, not ours to
    # verify here (the clients that use the registry verify it).
    return httpx.get(f"{reg.url}/v2/", timeout=2.0, verify=False)


def _answering(reg: Registry) -> tuple[int, ...]:
    # with basic auth on, an anonymous GET /v2/ gets 401: the registry is up
    return (200, 401) if reg.auth_htpasswd is not None else (200,)


class _Exited(Exception):
    def __init__(self, status: str) -> None:
        self.status = status


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"
