"""Where images come from (per reference, --source, --registry-map) and how `layover run`'s
settings are read: flags, else LAYOVER_* variables."""

from __future__ import annotations

import io

import pytest

from layover import imagelist
from layover.cli.progress_view import LinesProgress
from layover.errors import UsageError
from layover.reference import ImageRef
from layover.settings import ListFromGit, ReleaseRequest, RunSettings
from layover.sources import SourceMap, check_one_source_per_repository, parse_redirect


def test_a_references_own_host_wins_then_redirects_apply():
    sources = SourceMap("ci:5000", (("docker.io", "mirror:5000"),))
    assert sources.host_for(ImageRef.parse("team/app:1")) == "ci:5000"
    assert sources.host_for(ImageRef.parse("quay.io/team/app:1")) == "quay.io"
    assert sources.host_for(ImageRef.parse("docker.io/library/debian:12")) == "mirror:5000"
    refs = [ImageRef.parse(t) for t in ("a:1", "b:1", "quay.io/c/d:1")]
    assert sources.hosts(refs) == {"ci:5000": 2, "quay.io": 1}


def test_one_repository_path_may_come_from_one_source_only():
    lst = imagelist.parse_text("quay.io/t/a:1\nci:5000/t/a:2\nt/a:3\n", "l")
    # line 2 names the default source explicitly: the same registry as line 3
    with pytest.raises(Exception, match=r"l:2: .*t/a comes from ci:5000 here but from quay.io on line 1"):
        check_one_source_per_repository(lst, SourceMap("ci:5000"))
    # mapped to one registry, the same three lines are fine
    check_one_source_per_repository(lst, SourceMap("ci:5000", (("quay.io", "ci:5000"),)))


def test_the_same_image_listed_from_two_registries_is_caught_too():
    lst = imagelist.parse_text("a.example/t/a:1\nb.example/t/a:1\n", "l")
    assert lst.duplicates  # one key, two hosts: the parser keeps both spellings
    with pytest.raises(Exception, match=r"l:2: "):
        check_one_source_per_repository(lst, SourceMap("ci:5000"))


def test_a_redirect_is_from_equals_to():
    assert parse_redirect("docker.io=mirror:5000", "--registry-map") == ("docker.io", "mirror:5000")
    with pytest.raises(UsageError, match=r"--registry-map 'docker\.io': give FROM=TO"):
        parse_redirect("docker.io", "--registry-map")


def test_settings_come_from_flags_then_layover_variables(monkeypatch):
    monkeypatch.setenv("LAYOVER_SOURCE", "ci:5000")
    monkeypatch.setenv("LAYOVER_WORK_DIR", "/srv/work")
    monkeypatch.setenv("LAYOVER_REGISTRY_MAP", "docker.io=m:1, quay.io=m:2")
    monkeypatch.setenv("LAYOVER_COPY_RETRIES", "5")
    monkeypatch.setenv("LAYOVER_SRC_TLS_VERIFY", "false")
    req = RunSettings(images="r.list", output="/o/r.tar", source="flag:1").request()
    assert (req.source, str(req.work_dir), req.copy_retries, req.src_tls_verify) == (
        "flag:1",
        "/srv/work",
        5,
        False,
    )
    assert req.registry_map == ("docker.io=m:1", "quay.io=m:2")


def test_missing_and_contradictory_settings_name_the_flags(monkeypatch):
    for key in ("LAYOVER_SOURCE", "LAYOVER_WORK_DIR", "LAYOVER_OUTPUT", "LAYOVER_IMAGES"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UsageError, match=r"missing --source \(or LAYOVER_SOURCE\), --work-dir"):
        RunSettings(images="r.list").request()
    with pytest.raises(UsageError, match="--images-git needs --images-ref"):
        RunSettings(images_git="/repo", source="a:1", work_dir="/w", output="/o").request()
    with pytest.raises(UsageError, match=r"^--copy-retries: Input should be less than or equal to 10"):
        RunSettings(images="l", source="a:1", work_dir="/w", output="/o", copy_retries=11).request()
    with pytest.raises(UsageError, match=r"^--registry-map: 'x' is not FROM=TO"):
        RunSettings(images="l", source="a:1", work_dir="/w", output="/o", registry_map=("x",)).request()


def test_every_flow_parameter_is_reachable_from_the_cli():
    req = RunSettings(
        images_git="/repo",
        images_ref="v1",
        images_path="lists/i.list",
        source="a:1",
        work_dir="/w",
        output="/o",
        lock_wait=60,
        copy_timeout=30,
        copy_retries=1,
        src_cert_dir="/certs",
        src_credentials_block=None,
        concurrency=3,
        copier="skopeo",
        package_sync="registry",
        source_down_seconds=30,
        stage_deadline_seconds=600,
        attached="require",
        delta_from=("v1.0",),
    ).request()
    assert req.images == ListFromGit(repo="/repo", ref="v1", path="lists/i.list")
    assert (req.lock_wait_seconds, req.copy_timeout_seconds, req.copy_retries, req.concurrency) == (
        60,
        30,
        1,
        3,
    )
    settable = {
        "images",
        "source",
        "registry_map",
        "work_dir",
        "output",
        "concurrency",
        "src_tls_verify",
        "src_authfile",
        "src_cert_dir",
        "src_credentials_block",
        "lock_wait_seconds",
        "copy_timeout_seconds",
        "copy_retries",
        "copier",
        "package_sync",
        "source_down_seconds",
        "stage_deadline_seconds",
        "attached",
        "delta_from",
    }
    assert set(ReleaseRequest.model_fields) == settable
    assert (req.copier, req.package_sync, req.source_down_seconds, req.stage_deadline_seconds) == (
        "skopeo",
        "registry",
        30,
        600,
    )
    assert (req.attached, req.delta_from) == ("require", ("v1.0",))


def test_a_flow_run_is_named_after_the_list_and_the_source():
    file_req = RunSettings(
        images="/lists/release-7.2.list", source="ci:5000", work_dir="/w", output="/o"
    ).request()
    assert file_req.run_name == "release-7.2.list from ci:5000"
    git_req = RunSettings(
        images_git="/r", images_ref="v7.2", source="ci:5000", work_dir="/w", output="/o"
    ).request()
    assert git_req.run_name == "v7.2:images.list from ci:5000"


def test_progress_without_a_terminal_is_plain_lines():
    out = io.StringIO()
    view = LinesProgress(out, each_image=True, every=3600)
    view.stage_started("archive sync", images=2)
    view.image_started("archive sync", "a:1")
    view.image_done("archive sync", "a:1", bytes_copied=2048)
    view.image_done("archive sync", "b:1", ok=False)
    view.stage_finished("archive sync", ok=False)
    view.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "archive sync: started, 2 images"
    assert lines[1] == "archive sync: a:1: done, 2.0 KiB (1/2)"
    assert lines[2] == "archive sync: b:1: FAILED (2/2)"
    assert lines[3].startswith("archive sync: FAILED in ") and "(1/2 images, 1 failed, 2.0 KiB" in lines[3]
