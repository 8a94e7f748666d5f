"""Fixtures for flow-level integration tests: one Prefect engine per session, registries per module.

prefect_harness    (session) a temporary Prefect server
prefect_api        (module) a standing `prefect server start` on 127.0.0.1: a started
                   tests/cli_runs.py PrefectServer; .env() for CLI runs and workers against it
module_registries  (module) RegistryManager with a unique label scope; containers removed at
                   module end
cached_registries  (module) the same with the registry's in-memory blob-descriptor cache on (as a
                   customer's may run)
ci_site            (module) factory(name, *, scale, number=1) -> CiSite: a CI registry (from
                   module_registries) holding sample release `number`, and its images.list
                   (ci_release(registries, base, ...) does it in a dir of the caller's)
packages           (module) three releases built by the flow on one work dir
                   (tests/integration/customer_site.py build_packages)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.testing.push import push_release
from layover.testing.releases import Release, release


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server for the whole session (starting one costs ~20 s here)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _module_manager(docker_client, registry_image, **options):
    from layover.adapters.registry import RegistryManager

    mgr = RegistryManager(docker_client, registry_image, f"test-{uuid.uuid4().hex[:12]}", **options)
    try:
        yield mgr
    finally:
        mgr.remove_scope()
        mgr.close()


@pytest.fixture(scope="module")
def module_registries(docker_client, registry_image):
    """Registry factory shared by one module's tests; removes its containers at module end."""
    yield from _module_manager(docker_client, registry_image)


@pytest.fixture(scope="module")
def cached_registries(docker_client, registry_image):
    """Registries with the in-memory blob-descriptor cache on; removed at module end."""
    yield from _module_manager(docker_client, registry_image, blob_cache=True)


@pytest.fixture(scope="module")
def packages(prefect_harness, module_registries, skopeo_bin, tmp_path_factory):
    """Releases 1, 2 and 3 built by the flow (tests/integration/customer_site.py)."""
    from tests.integration.customer_site import build_packages

    return build_packages(module_registries, tmp_path_factory.mktemp("vendor"), skopeo_bin)


@dataclass(frozen=True)
class CiSite:
    ci_host: str
    rel: Release
    images: Path  # the release's images.list
    base: Path  # the module's temp dir (the CI registry's storage is base / "ci")


@pytest.fixture(scope="module")
def ci_site(module_registries, tmp_path_factory) -> Callable[..., CiSite]:
    """Factory: ci_site(name, *, scale, number=1) -> CiSite. Starts the module's "ci" registry
    (one per module: its containers go with module_registries), pushes sample release `number`
    at `scale` and writes base / "release-N.list"."""

    def make(name: str, *, scale: float, number: int = 1) -> CiSite:
        return ci_release(module_registries, tmp_path_factory.mktemp(name), scale=scale, number=number)

    return make


def ci_release(registries, base: Path, *, scale: float, number: int = 1) -> CiSite:
    """A "ci" registry (storage base / "ci") holding sample release `number` at `scale`, and
    base / "release-N.list"."""
    (base / "ci").mkdir()
    ci = registries.start("ci", base / "ci")
    rel = release(number, scale=scale)
    push_release(ci.host, rel)
    images = base / f"release-{number}.list"
    images.write_text(rel.list_text())
    return CiSite(ci.host, rel, images, base)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 for this module's runs: the PrefectServer."""
    from tests.cli_runs import PrefectServer

    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
