"""The deployments as an operator runs them: server, workers, `prefect deploy`, hook, UI.

One module-scoped setup, like two build hosts and a Prefect server host:
  PostgreSQL (Debian's, private cluster on 127.0.0.1) -> `prefect server start` on 127.0.0.1
  -> deployments/work-pool.sh -> `prefect deploy --all` from the repository's prefect.yaml
  -> two process workers (deployments/worker.sh: each polls `default` and its own queue),
     each with its own work dir -> a CI registry holding the sample releases -> a bare git repository with
     deployments/hooks/post-receive installed.
Every process is started in its own session and killed as a group in teardown.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from layover import imagelist
from layover.storage.verify import verify_tarball
from layover.testing.push import push_release
from layover.testing.releases import Release, release
from layover.workdir import WorkDir
from tests.conftest import require

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.prefect_server]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "build" / "test-artifacts"
RUN_TIMEOUT = 240.0
TIMEZONE = "Europe/Berlin"
FLOW = "layover-release"  # the @flow name in flows/release.py


# --- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,  # noqa: A002 - subprocess.run's own name
    timeout: float = 120,
) -> str:
    p = subprocess.run(
        argv, env=env, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Procs:
    """Long-running processes of this module, each in its own session, with its log file."""

    logs: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.started.append((name, p))
        return p

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        # Workers first (their flow-run children are in the same group), then the server.
        for _, p in reversed(self.started):
            _kill_group(p, signal.SIGTERM)
        for _, p in reversed(self.started):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill_group(p, signal.SIGKILL)
                p.wait(timeout=10)


def _kill_group(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    url: str  # postgresql+asyncpg://...


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if _pg_bin("initdb") is None and os.geteuid() == 0:
        # Debian's package; the same step scripts/setup.sh documents for a server host.
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            check=False,
            timeout=600,
        )
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    require(initdb is not None and pg_ctl is not None, "Debian's postgresql package is not installed")
    require(os.geteuid() == 0, "needs root to run PostgreSQL as the postgres user")
    try:
        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        require(False, "no postgres user")
        raise
    # Not under pytest's tmp dir: that is mode 0700 root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="layover-pg-"))
    os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    try:
        sh(
            [*as_pg, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            timeout=120,
        )
        sh(
            [
                *as_pg,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(base / "postgres.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
                "-c fsync=off -c max_connections=200",
                "start",
            ],
            timeout=90,
        )
        sh(
            [
                *as_pg,
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE prefect",
            ]
        )
        yield Postgres(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                check=False,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


# --- Prefect server, deployments, workers ---------------------------------------------------


@dataclass
class Stack:
    api: str  # http://127.0.0.1:PORT/api
    ui: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # client environment (CLI, workers)
    procs: Procs
    base: Path
    work: dict[str, Path]  # host -> work dir
    out: Path
    http: httpx.Client

    def deployment(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"/deployments/name/{FLOW}/{name}")
        r.raise_for_status()
        return r.json()

    def flow_run(self, run_id: str) -> dict[str, Any]:
        r = self.http.get(f"/flow_runs/{run_id}")
        r.raise_for_status()
        return r.json()

    def wait_final(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            fr = self.flow_run(run_id)
            return (
                fr
                if fr["state"] and fr["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
                else None
            )

        try:
            return wait_for(f"flow run {run_id} to finish", final, timeout, every=2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.explain(self.flow_run(run_id))}") from None

    def logs_of(self, run_id: str) -> str:
        r = self.http.post(
            "/logs/filter",
            json={"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200},
        )
        r.raise_for_status()
        return "\n".join(entry["message"] for entry in r.json())

    def explain(self, fr: dict[str, Any]) -> str:
        return (
            f"run {fr['name']} ended {fr['state']['type']}: {fr['state'].get('message')}\n"
            f"--- run logs ---\n{self.logs_of(fr['id'])[-4000:]}\n"
            f"--- worker host-a ---\n{self.procs.log('worker-host-a')[-3000:]}\n"
            f"--- worker host-b ---\n{self.procs.log('worker-host-b')[-2000:]}"
        )


def _client_env(home: Path, api: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "PREFECT_HOME": str(home),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
        }
    )
    if api:
        env["PREFECT_API_URL"] = api
    return env


@pytest.fixture(scope="module")
def project() -> Path:
    """The checkout the workers run from: this repository, exactly as shipped."""
    return REPO


@dataclass(frozen=True)
class CI:
    host: str
    rel: dict[int, Release]


@pytest.fixture(scope="module")
def ci(module_registries, tmp_path_factory) -> CI:
    """The CI registry: sample releases 1 and 2, plain HTTP on 127.0.0.1."""
    storage = tmp_path_factory.mktemp("ci-registry")
    reg = module_registries.start("ci", storage)
    rel = {n: release(n) for n in (1, 2)}
    for n in (1, 2):
        push_release(reg.host, rel[n])
    return CI(reg.host, rel)


@pytest.fixture(scope="module")
def stack(postgres: Postgres, project: Path, ci: CI) -> Iterator[Stack]:
    require(shutil.which("git") is not None, "git is not installed")
    base = Path(tempfile.mkdtemp(prefix="layover-deploy-"))
    (base / "logs").mkdir()
    procs = Procs(base / "logs")
    port = free_port()
    api, ui = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=api, timeout=30)
    try:
        server_env = _client_env(base / "server-home")
        server_env.update(
            {
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url,
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_UI_API_URL": api,
            }
        )
        procs.start(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            server_env,
        )
        wait_for("prefect server /api/health", lambda: http.get("/health").status_code == 200, timeout=150)

        env = _client_env(base / "client-home", api)
        work = {h: base / "hosts" / h / "work" for h in ("host-a", "host-b")}
        out = base / "releases"
        list_repo = base / "git" / "images.git"
        env.update(
            {
                "LAYOVER_LIST_REPO": str(list_repo),
                "LAYOVER_RELEASE_BRANCH": "release",
                "LAYOVER_SOURCE": ci.host,
                "LAYOVER_SRC_TLS_VERIFY": "false",  # the test's CI registry speaks plain HTTP
                "LAYOVER_WORK_DIR": str(work["host-a"]),
                "LAYOVER_OUTPUT_DIR": str(out),
                "LAYOVER_TIMEZONE": TIMEZONE,
            }
        )
        sh([str(project / "deployments" / "work-pool.sh"), "host-a", "host-b"], env=env)
        before = _fingerprint(project)
        sh([str(project / "deployments" / "deploy.sh")], env=env, cwd=project, timeout=180)
        assert _fingerprint(project) == before, "prefect deploy must not modify the checkout"

        for host in ("host-a", "host-b"):
            # the shipped script: polls `default` and the host's queue; started outside the
            # checkout, so only the deployments' pull step puts the run in it
            wenv = {
                **env,
                "LAYOVER_CHECKOUT": str(project),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            }
            procs.start(
                f"worker-{host}", ["sh", str(project / "deployments" / "worker.sh"), host], wenv, cwd=base
            )
        yield Stack(api, ui, env, procs, base, work, out, http)
    finally:
        http.close()
        procs.stop_all()
        try:
            _release_work_dirs(base / "hosts")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _release_work_dirs(hosts: Path) -> None:
    """Containers and overlay mounts a killed run may have left: never leak them."""
    from layover.adapters import overlay
    from layover.registries import remove_stale_containers
    from layover.workdir import WorkDir

    for work in sorted(hosts.glob("*/work")):
        wd = WorkDir.at(work)
        try:
            remove_stale_containers(wd)
        finally:
            if overlay.is_mounted(wd.merged):
                overlay.unmount(wd.merged)


def _fingerprint(project: Path) -> tuple[str, bool]:
    return (
        hashlib.sha256((project / "prefect.yaml").read_bytes()).hexdigest(),
        (project / ".prefect").exists(),
    )


# --- the images repository with the shipped hook ------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "release",
        "GIT_AUTHOR_EMAIL": "r@example.invalid",
        "GIT_COMMITTER_NAME": "release",
        "GIT_COMMITTER_EMAIL": "r@example.invalid",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    return sh(["git", *args], env=env, cwd=cwd).strip()


@dataclass(frozen=True)
class ImagesRepo:
    bare: Path
    clone: Path
    tag: str  # created locally, pushed by the tag test
    tag_commit: str  # list of release 1
    branch_commit: str  # list of release 2, committed after tagging


@pytest.fixture(scope="module")
def images_repo(stack: Stack, ci: CI, project: Path) -> ImagesRepo:
    bare = Path(stack.env["LAYOVER_LIST_REPO"])
    bare.parent.mkdir(parents=True)
    git(bare.parent, "init", "-q", "--bare", "-b", "release", str(bare))
    shutil.copy(project / "deployments" / "hooks" / "post-receive", bare / "hooks" / "post-receive")
    git(bare, "config", "layover.prefectApiUrl", stack.api)
    clone = bare.parent / "clone"
    git(bare.parent, "clone", "-q", str(bare), str(clone))
    git(clone, "checkout", "-q", "-b", "release")
    (clone / "images.list").write_text(ci.rel[1].list_text())
    git(clone, "add", "images.list")
    git(clone, "commit", "-q", "-m", "release 1")
    git(clone, "tag", "-a", "v1.0", "-m", "release 1.0")
    tag_commit = git(clone, "rev-parse", "HEAD")
    # The branch moves on after tagging: a run at the tag must still build release 1.
    (clone / "images.list").write_text(ci.rel[2].list_text())
    git(clone, "commit", "-q", "-am", "release 2")
    git(clone, "push", "-q", "origin", "release")  # a branch push sends no tag event
    return ImagesRepo(bare, clone, "v1.0", tag_commit, git(clone, "rev-parse", "HEAD"))


# --- runs -----------------------------------------------------------------------------------


def tarball_tags(path: Path) -> set[str]:
    pat = re.compile(r"docker/registry/v2/repositories/(.+)/_manifests/tags/([^/]+)/current/link$")
    with tarfile.open(path) as tf:
        return {f"{m[1]}:{m[2]}" for n in tf.getnames() if (m := pat.search(n))}


def assert_verified_release(tarball: Path, rel: Release, commit: str | None) -> None:
    """The tarball holds exactly `rel`, serves it (offline verifier), and names its commit."""
    assert tarball_tags(tarball) == {f"{i.repository}:{i.tag}" for i in rel.images}
    listed = imagelist.parse_bytes(rel.list_text().encode(), f"release {rel.number}")
    assert verify_tarball(tarball, listed).ok
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert Path(f"{tarball}.sha256").read_text().split()[0] == digest
    sidecar = json.loads(Path(f"{tarball}.json").read_text())
    assert sidecar["sha256"] == digest
    assert sidecar["list_commit"] == commit


def ui_run_request(name: str, request: dict[str, Any], queue: str) -> dict[str, Any]:
    """The body the UI's "Custom run" form posts to /deployments/{id}/create_flow_run."""
    return {
        "name": name,
        "parameters": {"request": request},
        "state": {
            "type": "SCHEDULED",
            "message": "Run from the Prefect UI",
            "state_details": {"scheduled_time": None},
        },
        "tags": [],
        "work_queue_name": queue,
        "job_variables": {},
        "enforce_parameter_schema": True,
    }


def request_json(stack: Stack, ci: CI, host: str, output: str, **extra: Any) -> dict[str, Any]:
    return {
        "images": {
            "kind": "git",
            "repo": stack.env["LAYOVER_LIST_REPO"],
            "ref": "release",
            "path": "images.list",
        },
        "source": ci.host,
        "src_tls_verify": False,
        "work_dir": str(stack.work[host]),
        "output": str(stack.out / output),
        "concurrency": 4,
        **extra,
    }


def create_run(stack: Stack, deployment: str, body: dict[str, Any]) -> dict[str, Any]:
    dep = stack.deployment(deployment)
    r = stack.http.post(f"/deployments/{dep['id']}/create_flow_run", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def interval(fr: dict[str, Any]) -> tuple[float, float]:
    from datetime import datetime

    start = datetime.fromisoformat(fr["start_time"]).timestamp()
    end = datetime.fromisoformat(fr["end_time"]).timestamp()
    return start, end


@dataclass(frozen=True)
class ParallelRuns:
    a: dict[str, Any]
    b: dict[str, Any]


@pytest.fixture(scope="module")
def parallel_runs(stack: Stack, ci: CI, images_repo: ImagesRepo) -> ParallelRuns:
    """Two releases at once, one per build host (queue), each into its own work dir."""
    a = create_run(
        stack,
        "manual",
        ui_run_request("ui-host-a", request_json(stack, ci, "host-a", "ui-host-a.tar"), "host-a"),
    )
    b = create_run(
        stack,
        "manual",
        ui_run_request("ui-host-b", request_json(stack, ci, "host-b", "ui-host-b.tar"), "host-b"),
    )
    return ParallelRuns(stack.wait_final(a["id"]), stack.wait_final(b["id"]))


# --- tests ----------------------------------------------------------------------------------


def test_three_deployments_one_pool_nightly_cron(stack: Stack) -> None:
    deps = {n: stack.deployment(n) for n in ("nightly", "manual", "on-tag")}
    assert {d["work_pool_name"] for d in deps.values()} == {"layover-builds"}
    assert all(d["enforce_parameter_schema"] for d in deps.values())
    nightly = [
        (s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"])
        for s in deps["nightly"]["schedules"]
    ]
    assert nightly == [("30 1 * * *", TIMEZONE, True)]
    assert deps["manual"]["schedules"] == [] and deps["on-tag"]["schedules"] == []
    # the pull step is stored unresolved: each worker fills in its own checkout
    assert deps["manual"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $LAYOVER_CHECKOUT }}"}}
    ]
    # the typed default came through the Prefect variable as a JSON boolean
    assert deps["nightly"]["parameters"]["request"]["src_tls_verify"] is False
    # the form: the nested model with descriptions and bounds
    schema = deps["manual"]["parameter_openapi_schema"]
    req = schema["definitions"]["ReleaseRequest"]["properties"]
    assert (req["concurrency"]["minimum"], req["concurrency"]["maximum"]) == (1, 64)
    assert all(req[k].get("description") for k in ("source", "images", "output", "concurrency"))


def test_archive_retention_is_weekly_and_a_dry_run_by_default(stack: Stack) -> None:
    r = stack.http.get("/deployments/name/layover-archive-retention/archive-retention")
    r.raise_for_status()
    dep = r.json()
    assert dep["work_pool_name"] == "layover-builds" and dep["enforce_parameter_schema"]
    assert [
        (s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"]) for s in dep["schedules"]
    ] == [("0 4 * * 0", TIMEZONE, True)]
    request = dep["parameters"]["request"]
    assert request["dry_run"] is True and request["keep_recent"]["last"] == 3
    form = dep["parameter_openapi_schema"]["definitions"]["RetentionRequest"]["properties"]
    assert form["dry_run"]["default"] is True and form["keep_recent"].get("description")


def test_on_tag_trigger_is_an_automation(stack: Stack) -> None:
    r = stack.http.post("/automations/filter", json={})
    r.raise_for_status()
    dep = stack.deployment("on-tag")
    mine = [a for a in r.json() if any(act.get("deployment_id") == dep["id"] for act in a["actions"])]
    assert len(mine) == 1, r.json()
    trigger = mine[0]["trigger"]
    assert trigger["expect"] == ["git.tag.pushed"]
    assert trigger["match"] == {"prefect.resource.id": "git.repo.*"}


def test_schema_is_enforced_for_ui_runs(stack: Stack, ci: CI) -> None:
    bad = request_json(stack, ci, "host-a", "never.tar", concurrency=0)
    dep = stack.deployment("manual")
    r = stack.http.post(
        f"/deployments/{dep['id']}/create_flow_run", json=ui_run_request("bad", bad, "host-a")
    )
    assert r.status_code == 409, r.text
    assert "concurrency" in r.text


def test_ui_json_runs_on_two_hosts_at_once(
    stack: Stack, ci: CI, images_repo: ImagesRepo, parallel_runs: ParallelRuns
) -> None:
    for fr, out in ((parallel_runs.a, "ui-host-a.tar"), (parallel_runs.b, "ui-host-b.tar")):
        assert fr["state"]["type"] == "COMPLETED", stack.explain(fr)
        assert_verified_release(stack.out / out, ci.rel[2], images_repo.branch_commit)
    (a0, a1), (b0, b1) = interval(parallel_runs.a), interval(parallel_runs.b)
    assert a0 < b1 and b0 < a1, "the two hosts' releases should have run at the same time"
    # each host's worker ran its own run
    # named as created, then after the release (flows/release.py)
    workers = {
        fr["name"]: stack.flow_run(fr["id"])["work_queue_name"] for fr in (parallel_runs.a, parallel_runs.b)
    }
    release = f"release:images.list from {ci.host}"
    assert workers == {f"ui-host-a: {release}": "host-a", f"ui-host-b: {release}": "host-b"}


# --- the tag trigger, and one work dir shared by three runs ---------------------------------


def task_runs(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    r = stack.http.post(
        "/task_runs/filter",
        json={"task_runs": {"flow_run_id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"},
    )
    r.raise_for_status()
    return r.json()


def locked_window(stack: Stack, run_id: str) -> tuple[float, float]:
    """From the first task inside the work-dir lock to the last one (rows arrive late: poll)."""
    from datetime import datetime

    def window() -> tuple[float, float] | None:
        trs = {t["name"].rsplit("-", 1)[0]: t for t in task_runs(stack, run_id)}
        first, last = trs.get("clear-stale-state"), trs.get("teardown")
        if not (first and last and first["start_time"] and last["end_time"]):
            return None
        return (
            datetime.fromisoformat(first["start_time"]).timestamp(),
            datetime.fromisoformat(last["end_time"]).timestamp(),
        )

    return wait_for(f"task runs of {run_id}", window, timeout=30)


@pytest.fixture(scope="module")
def tag_run(stack: Stack, images_repo: ImagesRepo, parallel_runs: ParallelRuns) -> dict[str, Any]:
    """Push the tag to the bare repository; its post-receive hook emits git.tag.pushed."""
    on_tag = stack.deployment("on-tag")

    def triggered() -> list[dict[str, Any]]:
        r = stack.http.post(
            "/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [on_tag["id"]]}}}
        )
        r.raise_for_status()
        return r.json()

    assert triggered() == [], "a branch push must not start a tag build"
    git(images_repo.clone, "push", "-q", "origin", images_repo.tag)  # the hook runs here
    runs = wait_for("the trigger to create a run", triggered, timeout=90)
    assert len(runs) == 1, runs
    return stack.wait_final(runs[0]["id"])


def test_tag_push_builds_the_list_as_it_was_at_the_tag(
    stack: Stack, ci: CI, images_repo: ImagesRepo, tag_run: dict[str, Any]
) -> None:
    fr = tag_run
    assert fr["state"]["type"] == "COMPLETED", stack.explain(fr)
    images = fr["parameters"]["request"]["images"]
    assert images == {
        "kind": "git",
        "repo": str(images_repo.bare),
        "ref": images_repo.tag,
        "path": "images.list",
    }
    tarball = stack.out / f"release-{images_repo.tag}.tar"
    assert fr["parameters"]["request"]["output"] == str(tarball)
    # release 1's list, although the branch had moved on to release 2 before the push
    assert_verified_release(tarball, ci.rel[1], images_repo.tag_commit)
    assert images_repo.tag_commit in artifact(stack, fr["id"])["data"]


class SilentRegistry:
    """A registry that answers GET /v2/ (so a run's preflight finds it up) and nothing else:
    every other request waits, until `close()` resets the connections. A TLS handshake is
    dropped at once, so clients fall back to plain HTTP without waiting.

    A run copying from it sits inside the work-dir lock for as long as the test wants."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []  # the connections held silent
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    head += chunk
                    if not chunk or head.startswith(b"\x16"):  # closed, or a TLS ClientHello
                        conn.close()
                        return
                if head.startswith(b"GET /v2/ "):
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                    )
                    continue
                self.conns.append(conn)  # anything else: never answered
                return
        except OSError:
            return

    def close(self) -> None:
        # shutdown() first: close() alone leaves the socket listening while accept() blocks on
        # it, and new connections would then hang in the backlog instead of being refused.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()


@dataclass(frozen=True)
class SharedWorkDir:
    blocker: dict[str, Any]  # holds the lock while its source hangs
    waiter: dict[str, Any]  # lock_wait_seconds=300: builds after the blocker lets go
    refused: dict[str, Any]  # lock_wait_seconds=0: fails at once
    waiter_loaded_before_release: bool


@pytest.fixture(scope="module")
def shared_work_dir(stack: Stack, ci: CI, tag_run: dict[str, Any]) -> Iterator[SharedWorkDir]:
    """Three runs aimed at host-a's work dir while the first one holds it."""

    def make(name: str, wait: float, source: str) -> dict[str, Any]:
        req = {
            **request_json(stack, ci, "host-a", f"{name}.tar"),
            "lock_wait_seconds": wait,
            "source": source,
            "copy_retries": 0,
        }
        return create_run(stack, "manual", ui_run_request(name, req, "host-a"))

    silent = SilentRegistry()
    try:
        blocker = make("blocker", 0, silent.host)
        lock = stack.work["host-a"] / "lock"
        wait_for(
            "the blocker to hold the work dir",
            lambda: lock.exists() and blocker["name"] in lock.read_text() and silent.conns,
            timeout=120,
            every=0.25,
        )
        waiter = make("waiter", 300, ci.host)
        refused = make("refused", 0, ci.host)
        refused = stack.wait_final(refused["id"])

        def waiter_loaded() -> bool:
            return any(
                t["name"].startswith("load-images") and t["state_type"] == "COMPLETED"
                for t in task_runs(stack, waiter["id"])
            )

        wait_for("the waiter to be waiting for the lock", waiter_loaded, timeout=60)
        loaded = waiter_loaded() and stack.flow_run(blocker["id"])["state"]["type"] == "RUNNING"
    finally:
        silent.close()  # the blocker's copies fail now, and it lets go of the work dir
    return SharedWorkDir(stack.wait_final(blocker["id"]), stack.wait_final(waiter["id"]), refused, loaded)


def test_one_work_dir_one_release_at_a_time(stack: Stack, ci: CI, shared_work_dir: SharedWorkDir) -> None:
    blocker, waiter, refused = (shared_work_dir.blocker, shared_work_dir.waiter, shared_work_dir.refused)
    # the refused run did not wait, and its failure names the run holding the work dir
    assert refused["state"]["type"] == "FAILED", stack.explain(refused)
    why = refused["state"]["message"] + stack.logs_of(refused["id"])
    assert f"in use by run '{blocker['name']}" in why, why
    assert not (stack.out / "refused.tar").exists()
    # the waiter was ready while the blocker held the lock, and built only after it let go
    assert shared_work_dir.waiter_loaded_before_release
    assert blocker["state"]["type"] == "FAILED", stack.explain(blocker)
    assert waiter["state"]["type"] == "COMPLETED", stack.explain(waiter)
    assert locked_window(stack, waiter["id"])[0] >= interval(blocker)[1] - 1.0
    assert_verified_release(
        stack.out / "waiter.tar", ci.rel[2], git(Path(stack.env["LAYOVER_LIST_REPO"]), "rev-parse", "release")
    )


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(re.search(r"^PPid:\s+(\d+)", status, re.M)[1])
    return False


def test_a_killed_holder_does_not_block_the_next_run(
    stack: Stack, ci: CI, parallel_runs: ParallelRuns, docker_client
) -> None:
    """kill -9 the flow-run process while it holds host-b's work dir; the next run builds."""

    def make(name: str) -> dict[str, Any]:
        req = {**request_json(stack, ci, "host-b", f"{name}.tar"), "lock_wait_seconds": 0}
        return create_run(stack, "manual", ui_run_request(name, req, "host-b"))

    victim = make("killed-holder")
    lock = stack.work["host-b"] / "lock"
    holder = wait_for(
        "the victim to hold the lock",
        lambda: lock.exists() and victim["name"] in lock.read_text() and json.loads(lock.read_text()),
        timeout=120,
        every=0.05,
    )
    worker = next(p for name, p in stack.procs.started if name == "worker-host-b")
    assert _descends_from(holder["pid"], worker.pid), "only kill what this test started"
    # An incremental release takes only seconds: freeze the holder the moment its first
    # registry container exists (the next run must clean that up), then kill it.
    scope = WorkDir.at(stack.work["host-b"]).scope
    wait_for(
        "the victim's registry",
        lambda: docker_client.containers.list(all=True, filters={"label": [f"layover.scope={scope}"]}),
        timeout=60,
        every=0.02,
    )
    os.kill(holder["pid"], signal.SIGSTOP)
    status = Path(f"/proc/{holder['pid']}/status")
    wait_for(
        "the victim to stop (not to finish)",
        lambda: status.exists() and "\tT" in status.read_text().split("State:")[1][:4],
        timeout=5,
        every=0.01,
    )
    os.kill(holder["pid"], signal.SIGKILL)
    assert stack.wait_final(victim["id"])["state"]["type"] in {"CRASHED", "FAILED"}
    after = stack.wait_final(make("after-kill")["id"])
    assert after["state"]["type"] == "COMPLETED", stack.explain(after)
    assert_verified_release(
        stack.out / "after-kill.tar",
        ci.rel[2],
        git(Path(stack.env["LAYOVER_LIST_REPO"]), "rev-parse", "release"),
    )


# --- the Prefect UI, rendered by Debian's chromium ------------------------------------------


def artifact(stack: Stack, run_id: str) -> dict[str, Any]:
    def find() -> list[dict[str, Any]]:
        r = stack.http.post(
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": ["release-report"]}}},
        )
        r.raise_for_status()
        return r.json()

    return wait_for(f"the release-report artifact of {run_id}", find, timeout=30)[0]


def chromium(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    exe = shutil.which("chromium")
    assert exe is not None
    argv = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--window-size=1400,1100",
        # Nothing leaves loopback: no background services, and every other host is unresolvable.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-pings",
        "--disable-domain-reliability",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000",
    ]
    argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    p = subprocess.run([*argv, url], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def visible_text(html: str) -> str:
    html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_ui_shows_the_run_and_its_report(stack: Stack, parallel_runs: ParallelRuns) -> None:
    require(
        shutil.which("chromium") is not None, "Debian's chromium is not installed (apt-get install chromium)"
    )
    fr = parallel_runs.a
    art = artifact(stack, fr["id"])
    profile = stack.base / "chromium"
    run_url = f"{stack.ui}/runs/flow-run/{fr['id']}"
    page = visible_text(chromium(run_url, profile))
    for expected in (fr["name"], "Completed", FLOW, "manual", "layover-builds"):
        assert expected in page, f"{expected!r} not on the flow-run page: {page[:3000]}"
    report_page = visible_text(chromium(f"{stack.ui}/artifacts/artifact/{art['id']}", profile))
    sha = json.loads((stack.out / "ui-host-a.tar.json").read_text())["sha256"]
    assert "release-report" in report_page and sha in report_page, report_page[:3000]
    assert f"Flow Run {fr['name']}" in report_page, report_page[:3000]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "prefect-ui-release-report.txt").write_text(report_page)
    for name, url in (
        ("flow-run", run_url),
        ("release-report", f"{stack.ui}/artifacts/artifact/{art['id']}"),
    ):
        shot = ARTIFACTS / f"prefect-ui-{name}.png"
        shot.unlink(missing_ok=True)
        chromium(url, profile, screenshot=shot)
        assert shot.stat().st_size > 10_000, shot


def test_the_manual_form_has_plain_fields_for_the_list(stack: Stack) -> None:
    """The list's location is a choice of two small forms (a file; a git repo, ref and path),
    not a raw JSON editor: a discriminated union (`oneOf`) renders as one, `anyOf` does not."""
    require(
        shutil.which("chromium") is not None, "Debian's chromium is not installed (apt-get install chromium)"
    )
    dep = stack.deployment("manual")
    images = dep["parameter_openapi_schema"]["definitions"]["ReleaseRequest"]["properties"]["images"]
    assert "anyOf" in images and "discriminator" not in images, images
    url = f"{stack.ui}/deployments/deployment/{dep['id']}/run"
    page = visible_text(chromium(url, stack.base / "chromium"))
    form = page[
        page.index("Where the release's images.list comes from") : page.index("Registry to copy from")
    ]
    for label in ("images.list file", "images.list in git", "Repo", "Ref", "Path"):
        assert label in form, f"{label!r} not in the list's form: {form}"
    assert '"kind"' not in form, f"the list is a JSON editor: {form}"
    shot = ARTIFACTS / "prefect-ui-manual-form.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    chromium(url, stack.base / "chromium", screenshot=shot)
    assert shot.stat().st_size > 10_000, shot


# --- the hook and the CI script on their own (fast: a stub HTTP server, no Prefect) -------------


@pytest.fixture
def events_sink() -> Iterator[tuple[str, list[Any]]]:
    """A POST /api/events stub on 127.0.0.1 that records each body."""
    import http.server
    import threading

    got: list[Any] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api", got
    finally:
        server.shutdown()
        server.server_close()


def _valid_event(body: Any) -> dict[str, Any]:
    from prefect.events import Event

    assert isinstance(body, list) and len(body) == 1
    Event.model_validate(body[0])  # what the server will parse
    return body[0]


def test_hook_sends_one_valid_event_per_new_tag(tmp_path: Path, events_sink) -> None:
    api, got = events_sink
    bare = tmp_path / "images.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    shutil.copy(REPO / "deployments" / "hooks" / "post-receive", bare / "hooks" / "post-receive")
    git(bare, "config", "layover.prefectApiUrl", api)
    git(bare, "config", "layover.tagPattern", "v*")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    (clone / "images.list").write_text("a:1\n")
    git(clone, "add", ".")
    git(clone, "commit", "-q", "-m", "one")
    commit = git(clone, "rev-parse", "HEAD")
    git(clone, "tag", "-a", 'v1."quoted"', "-m", "odd but legal")
    git(clone, "tag", "nightly-1")  # filtered out by layover.tagPattern
    git(clone, "push", "-q", "origin", "main", "--tags")
    assert len(got) == 1, got
    path, ctype, body = got[0]
    assert (path, ctype) == ("/api/events", "application/json")
    event = _valid_event(body)
    assert event["event"] == "git.tag.pushed"
    assert event["resource"] == {"prefect.resource.id": "git.repo.images", "prefect.resource.name": "images"}
    assert event["payload"] == {"repo": str(bare.resolve()), "tag": 'v1."quoted"', "commit": commit}
    git(clone, "push", "-q", "origin", "--delete", 'v1."quoted"')  # deleting starts nothing
    assert len(got) == 1


def test_hook_never_fails_a_push_when_prefect_is_down(tmp_path: Path) -> None:
    bare = tmp_path / "images.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    shutil.copy(REPO / "deployments" / "hooks" / "post-receive", bare / "hooks" / "post-receive")
    git(bare, "config", "layover.prefectApiUrl", f"http://127.0.0.1:{free_port()}/api")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    git(clone, "commit", "-q", "--allow-empty", "-m", "one")
    git(clone, "tag", "v2")
    p = subprocess.run(
        ["git", "-C", str(clone), "push", "origin", "main", "v2"], capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    assert "could not send git.tag.pushed for v2" in p.stderr


def test_ci_script_sends_the_event_with_curl_alone(tmp_path: Path, events_sink) -> None:
    api, got = events_sink
    # PATH without the venv: the script must fall back to curl
    env = {"PATH": "/usr/bin:/bin", "PREFECT_API_URL": api, "HOME": str(tmp_path)}
    sh(
        [
            "sh",
            str(REPO / "deployments" / "ci" / "emit-tag-event.sh"),
            "ssh://git@git.example.invalid/images.git",
            "v3.1",
        ],
        env=env,
    )
    event = _valid_event(got[0][2])
    assert event["resource"]["prefect.resource.id"] == "git.repo.images"
    assert event["payload"] == {"repo": "ssh://git@git.example.invalid/images.git", "tag": "v3.1"}
