"""Preflight's rules, on a fake machine: every problem found at once, each one line naming the
flag (or the Prefect parameter), in the order a user fixes them."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from layover import imagelist, naming
from layover.errors import (
    AuthError,
    CredentialsError,
    DiskFullError,
    ImageListError,
    InputError,
    LockedError,
    PreflightFailed,
    SourceUnreachableError,
    TLSError,
    UsageError,
)
from layover.preflight import (
    SPACE_FLOOR,
    Need,
    Ping,
    Plan,
    Reach,
    check,
    find_problems,
    need_from_report,
    passed_already,
    remember_passed,
)
from layover.sources import SourceMap

GiB = 1 << 30


@dataclass
class FakeHost:
    root: bool = True
    tools: tuple[str, ...] = ("skopeo",)
    docker: str | None = None
    unwritable: dict[Path, str] = field(default_factory=dict)
    locked: str | None = None
    free: int = 100 * GiB
    same_fs: bool = True
    files: dict[Path, bytes] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    need: Need | None = None
    pings: dict[str, Ping] = field(default_factory=dict)
    pinged: list[tuple[str, bool, Path | None, Path | None]] = field(default_factory=list)

    def is_root(self):
        return self.root

    def which(self, tool):
        return f"/usr/bin/{tool}" if tool in self.tools else None

    def docker_problem(self):
        return self.docker

    def cannot_write(self, directory):
        return self.unwritable.get(directory)

    def lock_holder(self, lock):
        return self.locked

    def free_bytes(self, path):
        return self.free

    def same_filesystem(self, a, b):
        return self.same_fs

    def env(self, key):
        return self.environ.get(key)

    def last_need(self, work_dir, output):
        return self.need

    def read(self, path):
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def ping(self, host, *, tls_verify, cert_dir, authfile, timeout):
        self.pinged.append((host, tls_verify, cert_dir, authfile))
        return self.pings.get(host, Ping(Reach.OK, "200"))


@pytest.fixture(autouse=True)
def _cli_names():
    naming.use("cli")
    yield
    naming.use("prefect")


def _plan(tmp_path: Path, text: str = "team/app:1\n", **kw) -> Plan:
    defaults = {
        "images": imagelist.parse_text(text, "rel.list"),
        "images_field": "images",
        "sources": SourceMap("ci:5000"),
        "work_dir": tmp_path / "work",
        "output": tmp_path / "out" / "r.tar",
    }
    return Plan(**{**defaults, **kw})


def test_all_well_passes_and_pings_each_source_once_with_the_runs_tls_and_credentials(tmp_path):
    host = FakeHost()
    auth = tmp_path / "auth.json"
    host.files[auth] = b'{"auths": {}}'
    text = "team/app:1\nteam/web:1\nother.example/x/y:2\n"
    check(_plan(tmp_path, text, src_authfile=auth, src_tls_verify=False), host)
    assert sorted(host.pinged) == [("ci:5000", False, None, auth), ("other.example", False, None, auth)]


def test_an_empty_list_is_an_input_error_naming_the_flag(tmp_path):
    with pytest.raises(InputError, match=r"^--images rel.list: the list names no image"):
        check(_plan(tmp_path, "# nothing yet\n"), FakeHost())


def test_output_a_directory_or_unwritable_is_a_usage_error_naming_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match=r"^--output .*/out: is a directory; give the tarball's file name"):
        check(_plan(tmp_path, output=out), FakeHost())
    host = FakeHost(unwritable={out: "Read-only file system"})
    with pytest.raises(
        UsageError, match=r"--output .*/out/r.tar: cannot write in .*/out \(Read-only file system\)"
    ):
        check(_plan(tmp_path), host)


def test_the_nearest_existing_parent_is_what_must_be_writable(tmp_path):
    host = FakeHost(unwritable={tmp_path: "Permission denied"})
    problems = find_problems(_plan(tmp_path, output=tmp_path / "a" / "b" / "r.tar"), host)
    assert any("cannot write in " + str(tmp_path) + " (Permission denied)" in str(p) for p in problems)


def test_a_work_dir_in_use_names_the_holder(tmp_path):
    (tmp_path / "work").mkdir()
    host = FakeHost(locked="run 'x' (pid 7 on h, since t)")
    with pytest.raises(LockedError, match=r"is in use by run 'x' \(pid 7.*use another --work-dir"):
        check(_plan(tmp_path), host)
    check(_plan(tmp_path, check_lock=False), host)  # --lock-wait: the flow waits instead


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "no such file"),
        (b"{not json", "is not JSON at line 1 column 2"),
        (b'{"auths": []}', 'is not a containers-auth.json: "auths" must be an object'),
    ],
)
def test_a_bad_authfile_is_a_credentials_error_naming_the_flag_never_its_content(tmp_path, content, why):
    auth = tmp_path / "auth.json"
    host = FakeHost()
    if content is not None:
        host.files[auth] = content
    with pytest.raises(CredentialsError) as e:
        check(_plan(tmp_path, src_authfile=auth), host)
    assert str(e.value).startswith(f"--src-authfile {auth}: {why}")
    assert e.value.exit_code == 3


def test_a_bad_registry_auth_file_is_named_as_the_variable(tmp_path):
    host = FakeHost(environ={"REGISTRY_AUTH_FILE": str(tmp_path / "nope.json")})
    with pytest.raises(CredentialsError, match=r"^REGISTRY_AUTH_FILE=.*nope.json: no such file"):
        check(_plan(tmp_path), host)


def test_space_is_checked_against_the_last_release_and_a_floor(tmp_path):
    need = Need(archive_bytes=3 * GiB, tarball_bytes=2 * GiB, source="/o/r.tar.json")
    with pytest.raises(
        DiskFullError,
        match=r"4.0 GiB free, the run needs about 5.0 GiB \(estimated from the last "
        r"release \(/o/r.tar.json\)\); free space, or give --work-dir",
    ):
        check(_plan(tmp_path), FakeHost(free=4 * GiB, need=need))
    # on two filesystems each needs its own part
    need = Need(archive_bytes=1 * GiB, tarball_bytes=3 * GiB, source="/o/r.tar.json")
    with pytest.raises(DiskFullError, match=r"needs about 3.0 GiB .* give --output on a bigger filesystem"):
        check(_plan(tmp_path), FakeHost(free=int(2.5 * GiB), need=need, same_fs=False))
    with pytest.raises(DiskFullError, match="the minimum for any release") as e:
        check(_plan(tmp_path), FakeHost(free=SPACE_FLOOR // 2))
    assert e.value.exit_code == 5


def test_the_estimate_comes_from_a_runs_report():
    doc = {
        "tarball_bytes": 100,
        "stages": [{"name": "archive sync", "bytes_moved": 40}, {"name": "tarball", "bytes_moved": 100}],
    }
    assert need_from_report(doc, "f") == Need(40, 100, "f")
    assert need_from_report({"status": "failed"}, "f") is None


def test_missing_tools_each_get_a_line(tmp_path):
    host = FakeHost(root=False, tools=(), docker="connection refused")
    with pytest.raises(PreflightFailed) as e:
        check(_plan(tmp_path), host)
    lines = e.value.lines()
    assert [line.split(" ")[0] for line in lines] == ["layover", "skopeo", "the"]
    assert "needs root" in lines[0] and "install it" in lines[1] and "start dockerd" in lines[2]


@pytest.mark.parametrize(
    ("ping", "error", "text"),
    [
        (
            Ping(Reach.UNREACHABLE, "connection refused"),
            SourceUnreachableError,
            "--source ci:5000: no registry answers (connection refused)",
        ),
        (Ping(Reach.NOT_A_REGISTRY, "HTTP 404"), SourceUnreachableError, "GET /v2/ answered HTTP 404"),
        (Ping(Reach.TLS, "certificate verify failed"), TLSError, "--src-cert-dir DIR"),
        (
            Ping(Reach.REFUSED, "HTTP 401", "/root/auth.json"),
            AuthError,
            "refused the credentials from /root/auth.json (HTTP 401)",
        ),
    ],
)
def test_the_source_must_answer_and_take_the_credentials(tmp_path, ping, error, text):
    with pytest.raises(error) as e:
        check(_plan(tmp_path), FakeHost(pings={"ci:5000": ping}))
    assert text in str(e.value)
    assert "\n" not in str(e.value)


def test_401_without_credentials_means_the_registry_is_up(tmp_path):
    check(_plan(tmp_path), FakeHost(pings={"ci:5000": Ping(Reach.ANONYMOUS, "401")}))


def test_a_mapped_source_is_named_with_its_redirect(tmp_path):
    sources = SourceMap("ci:5000", (("docker.io", "mirror:5000"),))
    host = FakeHost(pings={"mirror:5000": Ping(Reach.UNREACHABLE, "connection refused")})
    with pytest.raises(
        SourceUnreachableError,
        match=r"^source registry mirror:5000 \(via --registry-map "
        r"docker.io=mirror:5000\), named by 1 image",
    ):
        check(_plan(tmp_path, "docker.io/library/debian:12\nteam/app:1\n", sources=sources), host)


def test_two_sources_for_one_repository_path_is_an_input_error_naming_both_lines(tmp_path):
    text = "a.example/team/app:1\nteam/web:1\nb.example/team/app:2\n"
    with pytest.raises(ImageListError) as e:
        check(_plan(tmp_path, text), FakeHost())
    assert "rel.list:3:" in str(
        e.value
    ) and "team/app comes from b.example here but from a.example on line 1" in str(e.value)


def test_in_prefect_the_same_problem_names_the_parameter(tmp_path):
    naming.use("prefect")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match=r"^request.output .*: is a directory"):
        check(_plan(tmp_path, output=out), FakeHost())


def test_several_problems_are_reported_together_flags_first(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    host = FakeHost(tools=(), pings={"ci:5000": Ping(Reach.UNREACHABLE, "refused")})
    with pytest.raises(PreflightFailed) as e:
        check(_plan(tmp_path, output=out), host)
    assert e.value.exit_code == 2  # the first: a usage error
    assert len(e.value.problems) == 3


def test_a_plan_remembered_as_passed_is_known_in_its_context_lock_aside_and_no_other(tmp_path):
    def in_context() -> None:
        plan = _plan(tmp_path, "team/app:1\nteam/web:1\n")
        assert not passed_already(plan)
        remember_passed(plan)  # `layover run` checked it, with the lock
        assert passed_already(replace(plan, check_lock=False))  # the flow's task, without the lock
        assert not passed_already(_plan(tmp_path, "team/app:1\n"))  # the list changed meanwhile
        assert not passed_already(replace(plan, src_tls_verify=False))

    contextvars.copy_context().run(in_context)
    assert not passed_already(
        _plan(tmp_path, "team/app:1\nteam/web:1\n")
    )  # another context: a run Prefect started
