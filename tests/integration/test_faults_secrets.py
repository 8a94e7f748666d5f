"""Secrets and exposure: credentials for a source registry with basic auth, given through an
authfile and through a Prefect Secret block, never appear in logs, artifacts, exceptions or any
process's argv during a run. Registries Layover starts listen on 127.0.0.1 only, and the tarball
holds only regular files and directories with relative paths under docker/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest

from layover.errors import LayoverError
from layover.settings import ListFromFile, ReleaseRequest
from layover.testing.push import push_release
from layover.testing.releases import release
from layover.workdir import WorkDir
from tests.conftest import require
from tests.integration.flow_requests import release_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "ci-robot"


class Watch(threading.Thread):
    """Samples every process's argv and environment-free cmdline, and the listening TCP sockets
    of Layover's registry containers, every few ms while a run is going."""

    def __init__(self, docker_client, scope: str, needles: list[str]) -> None:
        super().__init__(daemon=True)
        self.docker, self.scope, self.needles = docker_client, scope, needles
        self.stop = threading.Event()
        self.argv_hits: list[str] = []
        self.argvs_seen = 0
        self.skopeo_seen = 0
        self.ports: set[int] = set()
        self.listeners: set[tuple[str, int]] = set()

    def run(self) -> None:
        last_docker = 0.0
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                text = raw.replace(b"\0", b" ").decode("utf-8", "replace")
                self.argvs_seen += 1
                self.skopeo_seen += "skopeo" in text and " copy " in text
                if any(n in text for n in self.needles):
                    self.argv_hits.append(text[:300])
            if time.monotonic() - last_docker > 0.5:
                last_docker = time.monotonic()
                for c in self.docker.containers.list(filters={"label": [f"layover.scope={self.scope}"]}):
                    addr = c.attrs["Config"].get("Env") or []
                    for e in addr:
                        if e.startswith("REGISTRY_HTTP_ADDR="):
                            self.ports.add(int(e.rpartition(":")[2]))
                self.listeners |= _listeners(self.ports)
            time.sleep(0.005)


def _listeners(ports: set[int]) -> set[tuple[str, int]]:
    """(local address hex, port) of LISTEN sockets on the given ports, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            addr, port = parts[1].rsplit(":", 1)
            if parts[3] == "0A" and int(port, 16) in ports:
                found.add((addr, int(port, 16)))
    return found


@pytest.fixture(scope="module")
def auth_ci(prefect_harness, module_registries, tmp_path_factory):
    htpasswd = shutil.which("htpasswd")
    require(htpasswd is not None, "htpasswd is missing (apt-get install apache2-utils; scripts/setup.sh)")
    base = tmp_path_factory.mktemp("faults-secrets")
    password = f"pw-{uuid.uuid4().hex}"
    line = subprocess.run(
        [htpasswd, "-nbB", USER, password], check=True, capture_output=True, text=True
    ).stdout.strip()  # argv of a test helper, before any run
    (base / "htpasswd").write_text(line + "\n")
    (base / "ci").mkdir()
    # The CI registry is filled without auth, then restarted with it on the same storage.
    open_ci = module_registries.start("ci-open", base / "ci")
    rel = release(1, scale=0.3)
    push_release(open_ci.host, rel)
    module_registries.stop(open_ci)
    ci = module_registries.start("ci-auth", base / "ci", read_only=True, auth_htpasswd=base / "htpasswd")
    import httpx

    assert httpx.get(f"{ci.url}/v2/", timeout=10).status_code == 401, "the CI registry must demand auth"
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    images = base / "release.list"
    images.write_text("".join(f"{i.repository}:{i.tag}\n" for i in rel.images[:4]))
    return ci, password, token, images, base


def _flow_run_text(flow_run_id) -> str:
    """Everything the Prefect API holds about a flow run: its logs, artifacts, states, params."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter

    with get_client(sync_client=True) as client:
        # log rows arrive a few seconds after the run ends: read until the count settles
        logs: list = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = client.read_logs(LogFilter(flow_run_id={"any_": [flow_run_id]}), limit=200)
            if got and len(got) == len(logs):
                break
            logs = got
            time.sleep(2)
        arts = client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        fr = client.read_flow_run(flow_run_id)
        states = client.read_flow_run_states(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    parts = [entry.message for entry in logs]
    parts += [json.dumps(a.data, default=str) + str(a.description) for a in arts]
    parts += [fr.model_dump_json(), *(s.model_dump_json() for s in states)]
    parts += [t.model_dump_json() for t in task_runs]
    assert logs, "no logs were found for the run: the scan would prove nothing"
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("via", "copier"), [("authfile", "skopeo"), ("secret-block", "skopeo"), ("authfile", "native")]
)
def test_credentials_never_leak_and_registries_stay_on_loopback(
    auth_ci, docker_client, tmp_path, via, copier
):
    from prefect.blocks.system import Secret

    from flows.release import release as release_flow

    ci, password, token, images, _base = auth_ci
    auth_doc = {"auths": {ci.host: {"auth": token}}}
    kw = {}
    if via == "authfile":
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps(auth_doc))
        authfile.chmod(0o600)
        kw["src_authfile"] = authfile
    else:
        name = f"layover-src-{uuid.uuid4().hex[:8]}"
        Secret(value=json.dumps(auth_doc)).save(name, overwrite=True)
        kw["src_credentials_block"] = name
    needles = [password, token]
    work, out = tmp_path / "work", tmp_path / "out" / "release.tar"
    watch = Watch(docker_client, WorkDir.at(work).scope, needles)
    watch.start()
    try:
        state = release_flow(
            release_request(ci.host, images, work, out, concurrency=2, copier=copier, **kw),
            return_state=True,
        )
    finally:
        watch.stop.set()
        watch.join(timeout=10)
    assert state.is_completed(), state.message

    if copier == "skopeo":
        assert watch.skopeo_seen, "the watcher never saw a skopeo copy: the argv scan proved nothing"
    else:  # the native copier copies in process: no argv for a secret to be in
        assert watch.skopeo_seen == 0
    assert watch.argv_hits == [], "a secret was in some process's argv"
    text = _flow_run_text(state.state_details.flow_run_id)
    for n in needles:
        assert n not in text, "a secret is in the run's logs, artifacts, states or parameters"
    for side in out.parent.iterdir():  # tarball, .sha256, .json report
        data = side.read_bytes()
        assert not any(n.encode() in data for n in needles), side
    assert not WorkDir.at(work).src_auth.exists(), "the decoded credentials outlived the run"

    # Registries started by this run listened on 127.0.0.1 only (0100007F is 127.0.0.1).
    assert watch.ports and watch.listeners
    assert {addr for addr, _ in watch.listeners} == {"0100007F"}, watch.listeners

    with tarfile.open(out) as tf:
        members = tf.getmembers()
    assert members
    assert members[0].name == "layover/contents.json", "the contents file leads the tarball"
    for m in members[1:]:
        assert m.isfile() or m.isdir(), f"{m.name} is neither a file nor a directory"
        assert m.name == "docker" or m.name.startswith("docker/"), m.name
        assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name


def test_a_failed_login_names_no_secret(auth_ci, tmp_path):
    """A wrong password fails at once (not retried) and its exception carries no credential."""
    from flows.release import release as release_flow

    ci, password, token, images, _base = auth_ci
    wrong = base64.b64encode(f"{USER}:{password}-wrong".encode()).decode()
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {ci.host: {"auth": wrong}}}))
    with pytest.raises(LayoverError) as info:
        release_flow(
            ReleaseRequest(
                images=ListFromFile(path=str(images)),
                source=ci.host,
                src_tls_verify=False,
                work_dir=tmp_path / "work",
                output=tmp_path / "out.tar",
                src_authfile=authfile,
            )
        )
    text = "".join(traceback.format_exception(info.value))
    assert "unauthorized" in text.lower() or "authentication required" in text.lower(), text[-2000:]
    for n in (password, token, wrong):
        assert n not in text
