"""The registries one release run owns, as one context manager the flow holds:

    with registries(wd) as regs:
        archive = regs.serve_archive()                  # writable: archive sync adds to lower/
        archive = regs.serve_archive(read_only=True)    # restarted read-only, `:ro` bind mount
        package = regs.serve_package()                  # on the overlay's merged view
        regs.stop(package)                              # before GC: never delete under it

Entering removes the containers a killed run of this work dir left (they carry the work dir's
label scope); leaving removes every container of the scope and closes the HTTP clients, on
success and failure alike. Clients are one per registry, shared by the copy threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from layover.adapters.credential_helper import resolver
from layover.adapters.registry import Registry, RegistryManager, docker_client
from layover.adapters.registry_api import RegistryAPI
from layover.adapters.registry_client import DESTINATION, SOURCE, Endpoint, RegistryClient
from layover.adapters.registry_image import ensure_registry_image
from layover.adapters.source_probe import SourceProbe
from layover.diagnose import damaged_storage, disk_full
from layover.errors import LayoverError
from layover.reference import Digest, ImageRef
from layover.sources import SourceMap
from layover.workdir import WorkDir

log = logging.getLogger(__name__)


def manager_for(wd: WorkDir) -> RegistryManager:
    """A container manager labelled with this work dir's scope (configs under run/)."""
    client = docker_client()
    wd.run.mkdir(parents=True, exist_ok=True)
    return RegistryManager(client, ensure_registry_image(client), wd.scope, config_dir=wd.run)


class RunRegistries:
    def __init__(self, wd: WorkDir, manager: RegistryManager) -> None:
        self.wd = wd
        self.manager = manager
        self._serving: dict[str, Registry] = {}  # role -> running registry
        self._clients: dict[str, RegistryAPI] = {}
        self._probes: list[SourceProbe] = []
        self._remote: list[RegistryClient] = []  # source clients, closed at the end
        self._lock = threading.Lock()
        # Starting, stopping and reviving take turns: a copy thread must never revive a
        # registry that the run's teardown (or an interrupt) has just removed.
        self._life = threading.RLock()

    # --- lifecycle -----------------------------------------------------------------------
    def serve_archive(self, *, read_only: bool = False) -> Registry:
        """The archive registry on lower/, (re)started in the mode asked for."""
        return self._serve("archive", self.wd.lower, read_only)

    def serve_package(self) -> Registry:
        """The package registry on the overlay's merged view."""
        return self._serve("package", self.wd.merged, False)

    def _serve(self, role: str, storage: Path, read_only: bool) -> Registry:
        with self._life:
            running = self._serving.get(role)
            if running is not None:
                self.stop(running)
            storage.mkdir(parents=True, exist_ok=True)
            reg = self._serving[role] = self.manager.start(role, storage, read_only=read_only)
            return reg

    def stop(self, reg: Registry) -> None:
        with self._life:
            if self._serving.get(reg.role) == reg:
                del self._serving[reg.role]
            client = self._clients.pop(reg.host, None)
            if client is not None:
                client.close()
            self.manager.stop(reg)

    def stop_all(self) -> int:
        """Remove every container of this work dir, ours or a killed run's; how many there were."""
        with self._life:
            self._serving.clear()
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            return len(self.manager.remove_scope())

    def revive(self, regs: Iterable[Registry]) -> None:
        """Restart those of `regs` that stopped answering, if the run still means them to serve
        (a registry stopped on purpose, or removed by teardown, stays down)."""
        with self._life:
            for reg in regs:
                if self._serving.get(reg.role) == reg and self.manager.ensure_serving(reg):
                    log.warning("registry %s stopped answering and was restarted", reg.name)

    def close(self) -> None:
        self.stop_all()
        for probe in self._probes:
            probe.close()
        self._probes.clear()
        for remote in self._remote:
            remote.close()
        self._remote.clear()

    # --- clients -------------------------------------------------------------------------
    def api(self, reg: Registry) -> RegistryAPI:
        with self._lock:
            client = self._clients.get(reg.host)
            if client is None:
                client = self._clients[reg.host] = RegistryAPI(reg.host)
            return client

    def source(
        self,
        host: str,
        *,
        tls_verify: bool,
        authfile: Path | None,
        timeout: float,
        cert_dir: Path | None = None,
    ) -> RegistryClient:
        """A client for a source registry, finding credentials where skopeo would. `timeout`:
        how long one request may stay silent."""
        client = RegistryClient(
            Endpoint(host, tls_verify=tls_verify, cert_dir=cert_dir, flags=SOURCE),
            resolver(authfile, SOURCE.authfile),
            timeout=timeout,
        )
        self._remote.append(client)
        return client

    def client(self, reg: Registry) -> RegistryClient:
        """A client for a registry of ours (127.0.0.1, plain HTTP), for uploads and mounts."""
        client = RegistryClient(
            Endpoint(reg.host, tls_verify=False, loopback_only=True, flags=DESTINATION), timeout=300
        )
        self._remote.append(client)
        return client

    def probe(
        self, host: str, *, tls_verify: bool, authfile: Path | None, cert_dir: Path | None = None
    ) -> SourceProbe:
        probe = SourceProbe(host, tls_verify=tls_verify, authfile=authfile, cert_dir=cert_dir)
        self._probes.append(probe)
        return probe

    def probes(
        self,
        sources: SourceMap,
        refs: Iterable[ImageRef],
        *,
        tls_verify: bool,
        authfile: Path | None,
        cert_dir: Path | None = None,
    ) -> SourceProbes:
        """One probe per source registry the refs are read from, behind one `digest(ref)`; each
        finds its host's credentials where skopeo does."""
        return SourceProbes(
            sources,
            {
                h: self.probe(h, tls_verify=tls_verify, authfile=authfile, cert_dir=cert_dir)
                for h in sources.hosts(refs)
            },
        )

    def guard(self, *own: Registry, destination: Registry) -> StageGuard:
        return StageGuard(self, own, destination)

    def logs(self, reg: Registry) -> str:
        try:
            return self.manager.logs(reg)
        except LayoverError:
            return ""


class SourceProbes:
    """SourceProbe's `digest(ref)`, asked of the registry each ref is read from."""

    def __init__(self, sources: SourceMap, probes: dict[str, SourceProbe]) -> None:
        self.sources = sources
        self.probes = probes

    def digest(self, ref: ImageRef) -> Digest | None:
        probe = self.probes.get(self.sources.host_for(ref))
        return probe.digest(ref) if probe is not None else None


class StageGuard:
    """layover.copy.Guard for one stage: explains failures from the registries' logs and
    storage, and revives a registry of ours that stopped answering (killed, engine restart)."""

    def __init__(self, regs: RunRegistries, own: tuple[Registry, ...], destination: Registry) -> None:
        self.regs = regs
        self.own = own
        self.destination = destination

    def explain(self, ref: ImageRef, error: LayoverError) -> LayoverError | None:
        dst = self.destination
        full = disk_full(ref, dst.storage, self.regs.logs(dst))
        if full is not None:
            return full
        return damaged_storage(ref, [reg.storage for reg in self.own], error, self.regs.wd.root)

    def revive(self) -> None:
        self.regs.revive(self.own)  # one copy thread restarts it; the others find it answering


@contextmanager
def registries(wd: WorkDir) -> Iterator[RunRegistries]:
    regs = RunRegistries(wd, manager_for(wd))
    stale = regs.stop_all()
    if stale:
        log.warning("removed %d registry container(s) a killed run of %s left", stale, wd.root)
    try:
        yield regs
    finally:
        regs.close()


def remove_stale_containers(wd: WorkDir) -> int:
    """Remove every container labelled with this work dir (for cleanup outside a run)."""
    if not os.path.isdir(wd.root):
        return 0
    return len(manager_for(wd).remove_scope())
