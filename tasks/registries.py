"""Registry containers for one work dir: started, restarted read-only, stopped, cleaned up.

Every container is labelled with the work dir's scope, so the next run removes whatever a
crashed run left behind.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from layover.adapters import overlay
from layover.adapters.registry import Registry, RegistryManager, docker_client
from layover.adapters.registry_image import ensure_registry_image
from layover.workdir import WorkDir


@functools.cache
def manager(wd: WorkDir) -> RegistryManager:
    client = docker_client()
    wd.run.mkdir(parents=True, exist_ok=True)
    return RegistryManager(client, ensure_registry_image(client), wd.scope, config_dir=wd.run)


_revive_lock = threading.Lock()


def revive(wd: WorkDir, registry: Registry) -> None:
    """Restart `registry` if it stopped answering; one copy task at a time does it."""
    with _revive_lock:
        if manager(wd).ensure_serving(registry):
            get_run_logger().warning("registry %s stopped answering and was restarted", registry.name)


@task(name="start-registry", cache_policy=NO_CACHE)
def start_registry(wd: WorkDir, role: str, storage: Path, read_only: bool = False) -> Registry:
    storage.mkdir(parents=True, exist_ok=True)
    return manager(wd).start(role, storage, read_only=read_only)


@task(name="stop-registry", cache_policy=NO_CACHE)
def stop_registry(wd: WorkDir, registry: Registry) -> None:
    manager(wd).stop(registry)


def _release_all(wd: WorkDir) -> tuple[int, bool]:
    """Remove this work dir's containers and unmount its overlay; say what was there."""
    removed = len(manager(wd).remove_scope())
    mounted = overlay.is_mounted(wd.merged)
    if mounted:
        overlay.unmount(wd.merged)
    return removed, mounted


@task(name="clear-stale-state", cache_policy=NO_CACHE)
def clear_stale(wd: WorkDir, output: Path) -> None:
    """Undo what a killed run of this work dir left behind: containers, the overlay mount,
    half-written tarballs, a decoded credentials file.

    Archive sync must not run while anything is mounted over `lower` (DESIGN §1)."""
    removed, mounted = _release_all(wd)
    partial = sorted(output.parent.glob(f".{output.name}.*.partial")) if output.parent.is_dir() else []
    for p in partial:
        p.unlink(missing_ok=True)
    wd.src_auth.unlink(missing_ok=True)
    if removed or mounted or partial:
        get_run_logger().warning(
            "cleaned up after an earlier run: %d container(s) removed, overlay %s, "
            "%d partial tarball(s) removed",
            removed, "unmounted" if mounted else "was not mounted", len(partial),
        )


@task(name="teardown", cache_policy=NO_CACHE)
def teardown(wd: WorkDir) -> None:
    """Stop every registry of this work dir and unmount the overlay, on success and failure."""
    wd.src_auth.unlink(missing_ok=True)
    _release_all(wd)
