"""The retry policy of the Prefect copy tasks (tasks/retry.py) on real parts: a real skopeo copy
between real registries, a fault proxy answering 503, a registry demanding a login, and Prefect's
own retry machinery. Attempts are counted twice: by the task body, and by Prefect's run_count.

    transient (503 on every manifest request)   attempts = retries + 1, then Failed
    401 (wrong password)                        one attempt
    unknown image (no such tag)                 one attempt
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from layover.adapters import skopeo
from layover.errors import AuthError, ImageNotFoundError, Transient
from tasks.package_sync import copy_manifests_to_package
from tasks.retry import COPY_RETRY, transient_only
from tests.conftest import require
from tests.faultproxy import Fault, FaultProxy, Rule

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def sites(module_registries, tmp_path_factory, skopeo_bin):
    from layover.adapters.registry_api import RegistryAPI
    from layover.testing.images import seeded_image
    from layover.testing.push import push_image

    htpasswd = shutil.which("htpasswd")
    require(htpasswd is not None, "htpasswd is missing (apt-get install apache2-utils; scripts/setup.sh)")
    base = tmp_path_factory.mktemp("retry-policy")
    for d in ("src", "dst"):
        (base / d).mkdir()
    src = module_registries.start("src", base / "src")
    with RegistryAPI(src.host) as api:
        push_image(api, seeded_image("apps/web", "1.0", seed="retry-policy", layers=1))
    module_registries.stop(src)
    password = uuid.uuid4().hex
    line = subprocess.run(
        [htpasswd, "-nbB", "robot", password], check=True, capture_output=True, text=True
    ).stdout.strip()
    (base / "htpasswd").write_text(line + "\n")
    open_src = module_registries.start("src-open", base / "src", read_only=True)
    auth_src = module_registries.start(
        "src-auth", base / "src", read_only=True, auth_htpasswd=base / "htpasswd"
    )
    dst = module_registries.start("dst", base / "dst")
    wrong = base / "wrong-auth.json"
    token = base64.b64encode(f"robot:{password}-wrong".encode()).decode()
    wrong.write_text(json.dumps({"auths": {auth_src.host: {"auth": token}}}))
    wrong.chmod(0o600)
    return open_src.host, auth_src.host, dst.host, wrong


def _counted_copy(attempts: list[str]):
    """A task with the copy tasks' exact retry policy, backoff set to 0 (the count, not the
    waiting, is under test), whose body is one real skopeo copy."""
    from prefect import task

    @task(name="counted-copy", **{**COPY_RETRY, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def counted(src: str, dst: str, authfile: Path | None) -> None:
        attempts.append(src)
        skopeo.copy(src, dst, src_tls_verify=False, dest_tls_verify=False, src_authfile=authfile)

    return counted


def _run(src: str, dst: str, authfile: Path | None = None) -> tuple[int, int, BaseException]:
    """(attempts the body saw, Prefect's run_count, the final exception)."""
    from prefect.client.orchestration import get_client

    attempts: list[str] = []
    state = _counted_copy(attempts)(src, dst, authfile, return_state=True)
    assert state.is_failed(), state
    with pytest.raises(Exception) as info:
        state.result()
    with get_client(sync_client=True) as client:
        run_count = client.read_task_run(state.state_details.task_run_id).run_count
    return len(attempts), run_count, info.value


def test_the_copy_tasks_share_one_policy():
    assert copy_manifests_to_package.retries == COPY_RETRY["retries"] == 3
    assert copy_manifests_to_package.retry_condition_fn is transient_only


def test_a_transient_error_is_tried_retries_plus_one_times(prefect_harness, sites):
    src, _, dst, _ = sites
    with FaultProxy(src, rules=[Rule("/manifests/", Fault.HTTP_503)]) as proxy:
        body, runs, err = _run(f"{proxy.host}/apps/web:1.0", f"{dst}/apps/web:1.0")
        faulted = [e for e in proxy.events if e.fault is Fault.HTTP_503]
    assert isinstance(err, Transient), err
    assert body == runs == COPY_RETRY["retries"] + 1
    assert len(faulted) >= body, "every attempt reached the proxy and got its 503"


def test_a_refused_login_is_tried_once(prefect_harness, sites):
    _, auth_src, dst, wrong = sites
    body, runs, err = _run(f"{auth_src}/apps/web:1.0", f"{dst}/apps/web:1.0", wrong)
    assert isinstance(err, AuthError), err
    assert (body, runs) == (1, 1)


def test_an_unknown_image_is_tried_once(prefect_harness, sites):
    src, _, dst, _ = sites
    body, runs, err = _run(f"{src}/apps/web:no-such-tag", f"{dst}/apps/web:no-such-tag")
    assert isinstance(err, ImageNotFoundError), err
    assert (body, runs) == (1, 1)
