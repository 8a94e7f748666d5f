"""Processes and servers that die, and what a run holds while it lives (issue 17), on real parts:
one standing `prefect server start` (SQLite) for the module, a CI registry with sample release 1,
`layover run` processes, and for the worker case the shipped deployments (work-pool.sh,
deploy.sh, prefect.yaml) with a `prefect worker start` (worker.sh) running flows/release.py.

    pinned digests      `repo@sha256:…` and `repo:tag@sha256:…` (one whose tag has moved on at
                        the source) through the whole pipeline; the package serves the pins
    credentials file    the Secret block decoded to WorkDir.src_auth is 0600 while the run holds
                        it, and gone after the run (and after a killed run's successor)
    worker killed       SIGKILL of the worker's process group mid-release: its flow run (a
                        process group of its own) is orphaned and completes
    worker + run killed both groups (a host or cgroup kill): the run stays RUNNING until the
                        next run on the work dir marks it CRASHED, cleans up and builds the
                        uninterrupted run's sha256
    server restarted    the server is killed mid-release and back 20 s later; the run finishes
                        or fails cleanly and leaves no registry, mount or credentials behind

The server restart runs last: it is the one test that takes the module's server away.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from layover import imagelist
from layover.adapters.registry_api import RegistryAPI
from layover.storage.verify import verify_tarball
from layover.testing.images import seeded_image
from layover.testing.push import push_image, push_release
from layover.testing.releases import Release, release
from layover.workdir import WorkDir
from tests.cli_runs import Cli, PrefectServer, kill_group, mounted_under, run_argv, wait_stopped
from tests.snapshot import sha256_of

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.prefect_server]

SCALE = 0.3
FLOW = "layover-release"  # the @flow name in flows/release.py


def _wait_for(what: str, check, timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(every)


@dataclass
class Site:
    server: PrefectServer
    ci_host: str
    rel: Release
    images: Path
    base: Path
    docker: Any
    registries: Any
    runs: list[Cli] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.server.api

    def env(self) -> dict[str, str]:
        return {**self.server.env(task_logs=True), "PYTHONPATH": str(REPO)}

    def start(self, work: Path, output: Path, *extra: str, images: Path | None = None) -> Cli:
        run = Cli(run_argv(images or self.images, self.ci_host, work, output, *extra), self.env())
        self.runs.append(run)
        return run

    def complete(self, work: Path, output: Path, *extra: str, images: Path | None = None) -> Cli:
        run = self.start(work, output, *extra, images=images)
        code = run.wait(timeout=240)
        assert code == 0, run.text()[-5000:]
        return run

    def containers(self, wd: WorkDir) -> list[str]:
        """The names of the work dir's registry containers. The SDK lists ids, then inspects each:
        a container a run removes in between is NotFound, so the listing is taken again."""
        import docker

        for _ in range(10):
            try:
                found = self.docker.containers.list(
                    all=True, filters={"label": [f"layover.scope={wd.scope}"]}
                )
                return [c.name for c in found]
            except docker.errors.NotFound:
                continue
        raise AssertionError(f"the containers of {wd.scope} kept changing under 10 listings")

    def assert_clean(self, wd: WorkDir) -> None:
        assert not self.containers(wd), "a registry container outlived the run"
        assert not mounted_under(wd.merged), "the overlay is still mounted"
        assert not wd.src_auth.exists(), "the decoded credentials outlived the run"


@pytest.fixture(scope="module")
def site(module_registries, docker_client, tmp_path_factory) -> Iterator[Site]:
    # Not under pytest's tmp dir: deployments run as root too, but keep paths short and obvious
    base = Path(tempfile.mkdtemp(prefix="layover-faults-proc-"))
    (base / "prefect").mkdir()
    server = PrefectServer(base / "prefect")
    s: Site | None = None
    try:
        server.start()
        (base / "ci").mkdir()
        ci = module_registries.start("ci", base / "ci")
        rel = release(1, scale=SCALE)
        push_release(ci.host, rel)
        images = base / "release-1.list"
        images.write_text(rel.list_text())
        s = Site(server, ci.host, rel, images, base, docker_client, module_registries)
        yield s
    finally:
        try:
            for run in s.runs if s is not None else ():
                if run.poll() is None:
                    run.kill()
            for work in base.glob("work*"):
                wd = WorkDir.at(work)
                for c in docker_client.containers.list(
                    all=True, filters={"label": [f"layover.scope={wd.scope}"]}
                ):
                    c.remove(force=True, v=True)
                if mounted_under(wd.merged):
                    subprocess.run(["umount", "-l", str(wd.merged)], check=False)
        finally:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def baseline(site: Site) -> str:
    """The sha256 of an uninterrupted run of release 1: what every recovered run must give."""
    out = site.base / "out" / "baseline.tar"
    site.complete(site.base / "work-baseline", out)
    return sha256_of(out)


# --- pinned digests -----------------------------------------------------------------------------


def test_a_list_pinned_by_digest_goes_through_the_pipeline(site: Site, tmp_path: Path) -> None:
    """`repo@sha256:…` (an index with untagged children), `repo:tag@sha256:…`, and a pin whose
    tag the source has since moved: the package holds and serves exactly the pinned manifests."""
    moved_old = seeded_image("pins/moved", "1.0", seed="pinned-old", layers=1)
    moved_new = seeded_image("pins/moved", "1.0", seed="pinned-new", layers=1)
    with RegistryAPI(site.ci_host) as api:
        push_image(api, moved_old)
        push_image(api, moved_new)  # the tag moves on: the source serves moved_new at 1.0 now
        assert api.manifest("pins/moved", "1.0").digest == moved_new.digest
    gateway, metrics, web = (
        site.rel.image(r) for r in ("platform/gateway", "platform/metrics", "apps/team-a/web")
    )
    assert gateway.is_index and metrics.is_index
    lines = [
        f"platform/gateway@{gateway.digest}",  # digest only: no tag keeps it alive in GC
        f"platform/metrics:{metrics.tag}@{metrics.digest}",
        f"pins/moved:1.0@{moved_old.digest}",  # pinned to what the tag was
        f"apps/team-a/web:{web.tag}",  # and a plain tag beside them
    ]
    listed = tmp_path / "pinned.list"
    listed.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "pinned.tar"
    work = site.base / "work-pinned"
    site.complete(work, out, images=listed)
    site.assert_clean(WorkDir.at(work))

    assert verify_tarball(out, imagelist.parse_bytes(listed.read_bytes(), str(listed))).ok
    # Serve the package as the customer would (a registry on its unpacked storage) and ask it.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(unpacked)], check=True)
    served = site_registry(site, unpacked)
    with RegistryAPI(served) as api:
        assert api.manifest("platform/gateway", gateway.digest).digest == gateway.digest
        for child in gateway.children:  # an index's platforms, untagged, come along
            assert api.manifest("platform/gateway", child.digest).digest == child.digest
        assert api.tags("platform/gateway") == (), "a digest-only entry gets no tag"
        assert api.manifest("platform/metrics", metrics.tag).digest == metrics.digest
        assert api.manifest("pins/moved", "1.0").digest == moved_old.digest, "the pin, not the moved tag"
        assert not api.manifest_exists("pins/moved", moved_new.digest)
        assert api.manifest("apps/team-a/web", web.tag).digest == web.digest
        assert set(api.catalog()) == {"platform/gateway", "platform/metrics", "pins/moved", "apps/team-a/web"}


def site_registry(site: Site, unpacked: Path) -> str:
    """A read-only registry on an unpacked package (removed with the module's registries)."""
    return site.registries.start(f"served-{uuid.uuid4().hex[:6]}", unpacked, read_only=True).host


# --- the decoded credentials file ---------------------------------------------------------------


def _secret_block(site: Site) -> str:
    """A Prefect Secret block on the module's server holding a containers-auth.json document (the
    CI registry asks for no login: skopeo sends it and the registry ignores it)."""
    name = f"layover-src-{uuid.uuid4().hex[:8]}"
    token = base64.b64encode(f"robot:{uuid.uuid4().hex}".encode()).decode()
    doc = json.dumps({"auths": {site.ci_host: {"auth": token}}})
    code = "import sys; from prefect.blocks.system import Secret; Secret(value=sys.stdin.read()).save(sys.argv[1])"
    subprocess.run(
        [sys.executable, "-c", code, name], input=doc, text=True, env=site.env(), check=True, timeout=120
    )
    return name


class ModeWatch(threading.Thread):
    """Samples the mode and owner of one path every millisecond or so while a run is going."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.seen: set[tuple[int, int]] = set()  # (st_mode, st_uid)
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                pass
            else:
                self.seen.add((st.st_mode, st.st_uid))
                self.samples += 1
            time.sleep(0.001)


def test_the_decoded_credentials_file_is_0600_while_held(site: Site, baseline: str) -> None:
    block = _secret_block(site)
    wd = WorkDir.at(site.base / "work-credentials")
    out = site.base / "out" / "credentials.tar"
    watch = ModeWatch(wd.src_auth)
    watch.start()
    try:
        site.complete(wd.root, out, "--src-credentials-block", block)
    finally:
        watch.stop.set()
        watch.join(timeout=10)
    assert watch.samples, "the watch never saw the credentials file: it proved nothing"
    assert watch.seen == {(stat.S_IFREG | 0o600, os.getuid())}, {(oct(m), u) for m, u in watch.seen}
    site.assert_clean(wd)
    assert sha256_of(out) == baseline, "credentials change nothing in the package"

    # Killed while it holds the file: the file stays (0600) and the next run removes it.
    run = site.start(wd.root, out, "--src-credentials-block", block)
    run.freeze_at(lambda: wd.src_auth.exists() and run.saw(r"Task run 'source-credentials[^']*' - Finished"))
    assert stat.S_IMODE(wd.src_auth.stat().st_mode) == 0o600
    run.kill()
    assert wd.src_auth.exists(), "the killed run left its credentials file (the next run's job)"
    site.complete(wd.root, out)  # no block this time: nothing may be left from the killed one
    site.assert_clean(wd)
    assert sha256_of(out) == baseline


# --- a worker killed mid-release -----------------------------------------------------------------


@dataclass
class Deployed:
    env: dict[str, str]  # the operator's environment (deploy.sh, worker.sh)
    procs: Any  # test_deployments.Procs: the workers, each in its own session
    http: httpx.Client
    work: Path

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        wenv = {
            **self.env,
            "LAYOVER_CHECKOUT": str(REPO),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        }
        return self.procs.start(name, ["sh", str(REPO / "deployments" / "worker.sh"), "host-a"], wenv)

    def create_run(self, site: Site, name: str, output: Path) -> dict[str, Any]:
        from tests.integration.test_deployments import ui_run_request

        request = {
            "images": {"kind": "file", "path": str(site.images)},
            "source": site.ci_host,
            "src_tls_verify": False,
            "work_dir": str(self.work),
            "output": str(output),
            "concurrency": 4,
        }
        dep = self.http.get(f"/deployments/name/{FLOW}/manual").raise_for_status().json()
        body = ui_run_request(name, request, "host-a")
        # A SQLite server answers 503 while its database is busy; Prefect's own client retries those.
        r = _wait_for(
            "the server to take the run",
            lambda: (
                (r := self.http.post(f"/deployments/{dep['id']}/create_flow_run", json=body)).status_code
                != 503
                and r
            ),
            timeout=60,
            every=0.5,
        )
        assert r.status_code == 201, r.text
        return r.json()

    def state(self, run_id: str) -> dict[str, Any]:
        return self.http.get(f"/flow_runs/{run_id}").raise_for_status().json()["state"]

    def wait_final(self, run_id: str, timeout: float = 240) -> dict[str, Any]:
        final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        return _wait_for(
            f"flow run {run_id} to end", lambda: (s := self.state(run_id))["type"] in final and s, timeout
        )


@pytest.fixture(scope="module")
def deployed(site: Site) -> Iterator[Deployed]:
    """The shipped deployments on the module's server: work-pool.sh, deploy.sh (prefect.yaml)."""
    from tests.integration.test_deployments import Procs, sh

    (site.base / "worker-logs").mkdir()
    env = {
        **site.env(),
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PREFECT_CLI_PROMPT": "false",
        "LAYOVER_LIST_REPO": str(site.base / "unused.git"),  # the manual runs here name a file
        "LAYOVER_RELEASE_BRANCH": "release",
        "LAYOVER_SOURCE": site.ci_host,
        "LAYOVER_SRC_TLS_VERIFY": "false",
        "LAYOVER_WORK_DIR": str(site.base / "work-worker"),
        "LAYOVER_OUTPUT_DIR": str(site.base / "out"),
        "LAYOVER_TIMEZONE": "UTC",
    }
    sh([str(REPO / "deployments" / "work-pool.sh"), "host-a"], env=env)
    sh([str(REPO / "deployments" / "deploy.sh")], env=env, cwd=REPO, timeout=180)
    procs = Procs(site.base / "worker-logs")
    http = httpx.Client(base_url=site.api, timeout=30)
    try:
        yield Deployed(env, procs, http, site.base / "work-worker")
    finally:
        http.close()
        procs.stop_all()


def _holder_mid_release(site: Site, deployed: Deployed, run: dict[str, Any]) -> dict[str, Any]:
    """Once the run holds the work dir and its archive registry is up: the lock's holder record."""
    wd = WorkDir.at(deployed.work)
    holder = _wait_for(
        f"{run['name']} to hold the work dir",
        lambda: wd.lock.exists() and run["id"] in wd.lock.read_text() and json.loads(wd.lock.read_text()),
        timeout=120,
        every=0.02,
    )
    _wait_for(f"the registry of {run['name']}", lambda: site.containers(wd), timeout=60, every=0.02)
    return holder


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_orphans_its_run_which_finishes(
    site: Site, baseline: str, deployed: Deployed
) -> None:
    """`kill -9` of the worker (its whole process group): Prefect's process worker starts each
    flow run in a process group of its own, so the run is orphaned, not killed, and completes."""
    worker = deployed.start_worker("worker-1")
    out = site.base / "out" / "orphaned.tar"
    run = deployed.create_run(site, "orphaned", out)
    holder = _holder_mid_release(site, deployed, run)
    assert os.getpgid(holder["pid"]) != worker.pid, "the flow run has a process group of its own"
    kill_group(worker.pid)
    assert _alive(holder["pid"]), "the flow run outlived its worker"
    state = deployed.wait_final(run["id"])
    assert state["type"] == "COMPLETED", state
    assert sha256_of(out) == baseline
    site.assert_clean(WorkDir.at(deployed.work))


def test_a_worker_killed_with_its_run_is_marked_crashed_by_the_next(
    site: Site, baseline: str, deployed: Deployed
) -> None:
    """The worker and its flow run killed together (a host or cgroup kill: systemd's stop of
    the worker unit, the OOM killer's cgroup kill): nobody is left to report, and the server
    does not notice on its own (no heartbeat automation). The next run of the work dir finds the
    dead holder, marks its run CRASHED, cleans up and builds the uninterrupted run's sha256."""
    wd = WorkDir.at(deployed.work)
    worker = deployed.start_worker("worker-2")
    victim = deployed.create_run(site, "killed-with-worker", site.base / "out" / "killed.tar")
    holder = _holder_mid_release(site, deployed, victim)
    groups = [worker.pid, os.getpgid(holder["pid"])]
    for g in groups:  # freeze, look, then kill: the state asserted is the state killed in
        os.killpg(g, signal.SIGSTOP)
    for g in groups:
        wait_stopped(g)
    assert deployed.state(victim["id"])["type"] == "RUNNING"
    assert site.containers(wd), "killed while its registry ran"
    for g in groups:
        os.killpg(g, signal.SIGKILL)
    worker.wait(timeout=30)
    _wait_for("the flow run to die", lambda: not _alive(holder["pid"]), timeout=30, every=0.02)
    assert deployed.state(victim["id"])["type"] == "RUNNING", "nothing marks it crashed yet"

    deployed.start_worker("worker-3")
    out = site.base / "out" / "after-worker-kill.tar"
    after = deployed.create_run(site, "after-worker-kill", out)
    state = deployed.wait_final(after["id"])
    assert state["type"] == "COMPLETED", deployed.procs.log("worker-3")[-4000:]
    assert sha256_of(out) == baseline, "the recovered run gives the uninterrupted run's tarball"
    site.assert_clean(wd)
    victim_state = deployed.state(victim["id"])
    print(f"\nvictim: {victim_state['type']}: {victim_state['message']}")
    assert victim_state["type"] == "CRASHED", victim_state


# --- the server restarted mid-release (last: it takes the module's server away) -----------------

DOWN_SECONDS = 20.0


def test_the_server_restarted_mid_release(site: Site, baseline: str) -> None:
    wd = WorkDir.at(site.base / "work-server-restart")
    out = site.base / "out" / "server-restart.tar"
    run = site.start(wd.root, out)
    # Mid-release: archive sync is copying (a run's copies are most of its time).
    _wait_for(
        "archive sync", lambda: run.saw(r"Task run 'archive-sync: ") or run.poll() is not None, 120, 0.01
    )
    assert run.poll() is None, run.text()[-3000:]
    site.server.stop()
    down_at = time.monotonic()
    assert not site.server.healthy()
    time.sleep(DOWN_SECONDS)  # the fault itself: the server is away this long
    site.server.start()
    back_at = time.monotonic()
    code = run.wait(timeout=300)
    ended_at = time.monotonic()
    print(
        f"\nserver down {back_at - down_at:.1f} s; the run ended {ended_at - back_at:.1f} s after it was "
        f"back, exit {code}"
    )
    # Prefect's client retries each request 5 times, 2-4-8-16-32 s apart (about a minute): a
    # 20 s outage is ridden out and the run completes with the uninterrupted run's package.
    assert code == 0, run.text()[-4000:]
    assert sha256_of(out) == baseline
    site.assert_clean(wd)

    def recorded() -> dict[str, Any] | None:
        runs = httpx.post(
            f"{site.api}/flow_runs/filter",
            # CLI runs only (the deployments' scheduled runs have no start time yet), newest first
            json={
                "flow_runs": {"deployment_id": {"is_null_": True}, "start_time": {"is_null_": False}},
                "sort": "START_TIME_DESC",
                "limit": 1,
            },
            timeout=30,
        ).json()
        return runs[0] if runs and runs[0]["state"]["type"] == "COMPLETED" else None

    fr = _wait_for("the server to record the run COMPLETED", recorded, timeout=60)
    assert fr["parameters"]["request"]["output"] == str(out), "the newest CLI run is this one"
