"""Fixtures for flow-level integration tests: one Prefect engine per session, registries per module."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server for the whole session (starting one costs ~20 s here)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def module_registries(docker_client, registry_image):
    """Registry factory shared by one module's tests; removes its containers at module end."""
    from layover.adapters.registry import RegistryManager

    mgr = RegistryManager(docker_client, registry_image, f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield mgr
    finally:
        mgr.remove_scope()
        mgr.close()
