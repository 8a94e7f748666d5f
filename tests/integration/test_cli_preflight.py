"""`layover run` fails before anything starts: each preflight problem is one line naming the
flag, with its exit code, and nothing was started: no registry container of the work dir, no
mount, no Prefect server (not even its database).

The CLI runs as a user runs it (a subprocess), against real parts: a registry container, one
with htpasswd auth, a closed port, a read-only filesystem, a tiny tmpfs, a held lock.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.adapters.registry import free_port
from layover.workdir import WorkDir
from tests.cli_runs import Cli, base_env, layover, mounted_under, started_servers
from tests.conftest import require
from tests.tls import write_htpasswd

pytestmark = [pytest.mark.integration]

USER = "ci-robot"
TIMES: dict[str, float] = {}


@dataclass(frozen=True)
class Site:
    ci: str  # an open registry, HOST:PORT
    auth_ci: str  # one that demands basic auth
    password: str
    base: Path


@pytest.fixture(scope="module")
def site(module_registries, skopeo_bin, tmp_path_factory) -> Iterator[Site]:
    htpasswd = shutil.which("htpasswd")
    require(htpasswd is not None, "htpasswd is missing (apt-get install apache2-utils; scripts/setup.sh)")
    base = tmp_path_factory.mktemp("cli-preflight")
    for d in ("ci", "auth-ci"):
        (base / d).mkdir()
    password = f"pw-{uuid.uuid4().hex}"
    write_htpasswd(base / "htpasswd", USER, password)
    ci = module_registries.start("ci", base / "ci")
    auth_ci = module_registries.start("auth-ci", base / "auth-ci", auth_htpasswd=base / "htpasswd")
    yield Site(ci.host, auth_ci.host, password, base)
    print("\nseconds from `layover run` to its exit, per preflight failure:")
    for name, seconds in TIMES.items():
        print(f"  {name:<28} {seconds:.2f}")


@dataclass
class Case:
    site: Site
    tmp: Path
    home: Path
    work: Path
    output: Path
    images: Path

    def argv(self, *extra: str, source: str | None = None) -> list[str]:
        return layover(
            "run",
            "--images",
            str(self.images),
            "--source",
            source or self.site.ci,
            "--no-src-tls-verify",
            "--work-dir",
            str(self.work),
            "--output",
            str(self.output),
            *extra,
        )

    def env(self, **more: str) -> dict[str, str]:
        env = base_env(self.home)
        env.pop("REGISTRY_AUTH_FILE", None)
        env["XDG_RUNTIME_DIR"] = str(self.tmp / "runtime")  # no stray credentials of this host
        env["HOME"] = str(self.tmp / "home")
        return {**env, **more}

    def fails(
        self, name: str, argv: list[str], code: int, line: str, env: dict[str, str] | None = None
    ) -> str:
        """Run, expect `code` and an error line containing `line`; check nothing started."""
        started = time.monotonic()
        cli = Cli(argv, env or self.env())
        got = cli.wait(timeout=120)
        TIMES[name] = time.monotonic() - started
        out = cli.text()
        assert got == code, out
        errors = [x for x in out.splitlines() if x.startswith("layover: error: ")]
        assert errors, out
        assert line in out, out
        assert "Traceback" not in out, out
        self.nothing_started()
        return out

    def nothing_started(self) -> None:
        import docker

        client = docker.from_env()
        try:
            scope = WorkDir.at(self.work).scope
            assert not client.containers.list(all=True, filters={"label": [f"layover.scope={scope}"]})
        finally:
            client.close()
        assert not mounted_under(self.work), "nothing may be mounted"
        assert not started_servers(self.home), "no Prefect server may have been started"
        assert not (self.home / "prefect.db").exists(), "Prefect's database was created: a server ran"
        assert not self.work.exists() or not any(self.work.iterdir()), "the work dir was written"


@pytest.fixture
def case(site, tmp_path) -> Case:
    images = tmp_path / "release.list"
    images.write_text("team/app:1\n")
    (tmp_path / "home").mkdir()
    return Case(
        site, tmp_path, tmp_path / "prefect-home", tmp_path / "work", tmp_path / "out" / "r.tar", images
    )


def test_output_is_a_directory(case):
    case.output.mkdir(parents=True)
    out = case.fails("output is a directory", case.argv(), 2, f"--output {case.output}: is a directory")
    assert out.count("layover: error:") == 1


def test_output_directory_is_read_only(case):
    require(os.geteuid() == 0, "needs root to mount a read-only tmpfs")
    ro = case.tmp / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        case.output = ro / "r.tar"
        case.fails("output read-only", case.argv(), 2, f"cannot write in {ro} (Read-only file system)")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_missing_authfile(case):
    auth = case.tmp / "nope.json"
    case.fails(
        "missing authfile", case.argv("--src-authfile", str(auth)), 3, f"--src-authfile {auth}: no such file"
    )


def test_authfile_that_is_not_json_is_named_never_quoted(case):
    auth = case.tmp / "auth.json"
    auth.write_text('{"auths": {"x": {"auth": "c2VjcmV0LXZhbHVl"}')  # truncated
    out = case.fails(
        "authfile not JSON",
        case.argv("--src-authfile", str(auth)),
        3,
        f"--src-authfile {auth}: is not JSON at line 1",
    )
    assert "c2VjcmV0LXZhbHVl" not in out


def test_a_bad_registry_auth_file_is_named_as_the_variable(case):
    auth = case.tmp / "env-auth.json"
    auth.write_text("[]")
    case.fails(
        "bad REGISTRY_AUTH_FILE",
        case.argv(),
        3,
        f"REGISTRY_AUTH_FILE={auth}: is not a containers-auth",
        env=case.env(REGISTRY_AUTH_FILE=str(auth)),
    )


def test_an_empty_list(case):
    case.images.write_text("# nothing yet\n\n")
    case.fails("empty list", case.argv(), 3, f"--images {case.images}: the list names no image")


def test_unreachable_source_fails_in_a_second_not_after_48_copies(case):
    dead = f"127.0.0.1:{free_port()}"
    case.fails("source unreachable", case.argv(source=dead), 4, f"--source {dead}: no registry answers")


def test_wrong_credentials_are_refused_naming_the_file_and_no_secret(case):
    wrong = base64.b64encode(f"{USER}:{case.site.password}-wrong".encode()).decode()
    auth = case.tmp / "auth.json"
    auth.write_text(json.dumps({"auths": {case.site.auth_ci: {"auth": wrong}}}))
    out = case.fails(
        "wrong credentials",
        case.argv("--src-authfile", str(auth), source=case.site.auth_ci),
        3,
        f"refused the credentials from {auth} (--src-authfile), entry",
    )
    assert "(HTTP 401 Unauthorized)" in out
    assert case.site.password not in out and wrong not in out


def test_no_credentials_at_a_registry_that_wants_them_is_not_a_preflight_error(case, site):
    # 401 without credentials only says the registry is up: preflight lets the run go on (the
    # copy then fails naming the image); here we only check preflight passed, via --debug
    cli = Cli(layover("--debug", "run", *case.argv(source=site.auth_ci)[4:]), case.env())
    cli.wait_until(lambda: cli.saw("preflight passed in"), what="preflight's verdict", timeout=60)
    cli.kill()


def test_tls_to_a_plain_http_registry(case):
    argv = [a for a in case.argv() if a != "--no-src-tls-verify"]
    out = case.fails("TLS", argv, 3, f"--source {case.site.ci}: TLS certificate did not verify")
    assert "--src-cert-dir" in out and "--src-tls-verify" in out


def test_skopeo_missing(case):
    env = case.env(PATH="/nonexistent")
    case.fails("skopeo missing", case.argv(), 1, "skopeo is not installed", env=env)


def test_docker_engine_not_answering(case):
    env = case.env(DOCKER_HOST=f"unix://{case.tmp}/no-docker.sock")
    case.fails("docker not answering", case.argv(), 1, "the Docker engine does not answer", env=env)


def test_no_space_on_the_work_dirs_filesystem(case):
    require(os.geteuid() == 0, "needs root to mount a small tmpfs")
    small = case.tmp / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        case.work, case.output = small / "work", small / "out" / "r.tar"
        case.fails("no space", case.argv(), 5, f"{small}: 64.0 MiB free, the run needs about")
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_work_dir_another_run_holds(case):
    case.work.mkdir()
    lock = case.work / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"run": "nightly", "pid": os.getpid(), "host": "h", "since": "t"}).encode())
        cli = Cli(case.argv(), case.env())
        assert cli.wait(timeout=120) == 1
        assert f"is in use by run 'nightly' (pid {os.getpid()}" in cli.text(), cli.text()
        assert "use another --work-dir" in cli.text()
    finally:
        os.close(fd)


def test_every_problem_at_once_flags_first(case):
    case.output.mkdir(parents=True)
    dead = f"127.0.0.1:{free_port()}"
    out = case.fails(
        "two problems",
        case.argv("--src-authfile", str(case.tmp / "nope.json"), source=dead),
        2,
        "3 problems found before starting; nothing was started",
    )
    lines = [x.strip() for x in out.splitlines() if x.startswith("  ")]
    assert lines[0].startswith("--output") and lines[1].startswith("--src-authfile")
    assert lines[2].startswith(f"--source {dead}")


def test_preflight_that_passes_takes_well_under_a_second(site, tmp_path):
    """Measured in process (the CLI adds Python's start-up): the median of 5 checks."""
    from layover import imagelist, naming, preflight
    from layover.adapters.host import LocalHost
    from layover.settings import RunSettings

    naming.use("cli")
    try:
        lst = tmp_path / "r.list"
        lst.write_text("".join(f"team/app{i}:1\n" for i in range(50)))
        request = RunSettings(
            images=lst,
            source=site.ci,
            src_tls_verify=False,
            work_dir=tmp_path / "w",
            output=tmp_path / "o" / "r.tar",
        ).request()
        images = imagelist.load(lst)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            preflight.check(preflight.plan_for(request, images), LocalHost())
            times.append(time.perf_counter() - started)
    finally:
        naming.use("prefect")
    times.sort()
    TIMES["passing preflight (in process)"] = times[2]
    print(f"\npassing preflight, 5 runs: median {times[2]:.3f} s, range {times[0]:.3f}-{times[-1]:.3f} s")


def test_in_prefect_the_flows_first_task_names_the_parameter(prefect_harness, site, tmp_path):
    from flows.release import release
    from layover.errors import UsageError
    from layover.settings import ListFromFile, ReleaseRequest

    out = tmp_path / "out"
    out.mkdir()
    lst = tmp_path / "r.list"
    lst.write_text("team/app:1\n")
    request = ReleaseRequest(
        images=ListFromFile(path=str(lst)),
        source=site.ci,
        src_tls_verify=False,
        work_dir=tmp_path / "work",
        output=out,
    )
    with pytest.raises(UsageError, match=r"^request.output .*: is a directory"):
        release(request)
    assert not (tmp_path / "work").exists(), "the flow stopped at its first task"
