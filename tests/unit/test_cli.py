"""The CLI's contract for scripts: exact options, exit codes, reasons on stderr."""

import pytest
from typer.testing import CliRunner

from layover import naming
from layover.cli import app


@pytest.fixture(autouse=True)
def _names_back_to_prefect():
    yield
    naming.use("prefect")  # `layover run` switched this process to flag names


runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def _run(*args):
    return runner.invoke(app, list(args))


def _run_release(tmp_path, *extra: str, images: str = "a:1\n", source: str = "ci:5000"):
    """`layover run` of an images.list holding `images`, into tmp_path/w and tmp_path/r.tar."""
    lst = tmp_path / "images.list"
    lst.write_text(images)
    return _run(
        "run",
        "--images",
        str(lst),
        "--source",
        source,
        "--work-dir",
        str(tmp_path / "w"),
        "--output",
        str(tmp_path / "r.tar"),
        *extra,
    )


def test_run_lists_every_bad_line_and_exits_3_before_anything_starts(tmp_path):
    bad, work = tmp_path / "images.list", tmp_path / "w"
    r = _run_release(tmp_path, images="ok/a:1\nBad/a:1\n\nno-tag\n", source="127.0.0.1:5000")
    assert r.exit_code == 3  # input error
    assert r.output.startswith("layover: error: ")
    assert f"{bad}:2:" in r.output and f"{bad}:4:" in r.output
    assert not work.exists()


def test_run_rejects_a_scheme_in_source(tmp_path):
    r = _run_release(tmp_path, source="https://ci:5000")
    assert r.exit_code == 2 and "without a scheme" in r.output  # usage


def test_run_has_exactly_the_documented_options():
    r = _run("run", "--help")
    assert r.exit_code == 0
    for opt in (
        "--images",
        "--images-git",
        "--images-ref",
        "--images-path",
        "--source",
        "--registry-map",
        "--work-dir",
        "--output",
        "--concurrency",
        "--src-tls-verify",
        "--no-src-tls-verify",
        "--src-authfile",
        "--src-cert-dir",
        "--src-credentials-block",
        "--lock-wait",
        "--copy-timeout",
        "--copy-retries",
        "--heartbeat-seconds",
    ):
        assert opt in r.output


def test_help_renders_brackets_fits_80_columns_and_answers_to_h():
    narrow = CliRunner(env={"COLUMNS": "80", "NO_COLOR": "1"})
    for args in (["-h"], ["run", "-h"], ["gc", "--help"], ["verify", "-h"]):
        r = narrow.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert max(len(line) for line in r.output.splitlines()) <= 80, r.output
    r = narrow.invoke(app, ["run", "-h"])
    assert "[default: twice the CPUs, 2-8]" in " ".join(r.output.split())


def test_version():
    from layover import version

    r = _run("--version")
    assert r.exit_code == 0 and r.output == f"layover {version()}\n"


def test_a_layover_variable_of_the_wrong_type_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYOVER_CONCURRENCY", "many")
    r = _run_release(tmp_path)
    assert r.exit_code == 2 and "LAYOVER_CONCURRENCY: Input should be a valid integer" in r.output


def test_run_rejects_a_heartbeat_prefect_would_refuse(tmp_path):
    work = tmp_path / "w"
    r = _run_release(tmp_path, "--heartbeat-seconds", "10")
    assert r.exit_code == 2 and "--heartbeat-seconds 10: Prefect needs 30 or more" in r.output
    assert not work.exists()


def test_gc_and_verify_name_a_missing_storage_dir(tmp_path):
    r = _run("gc", str(tmp_path))
    assert r.exit_code == 2 and "docker/registry/v2" in r.output
    lst = tmp_path / "images.list"
    lst.write_text("a:1\n")
    r = _run("verify", str(tmp_path / "nope"), "--images", str(lst))
    assert r.exit_code == 2 and "no such directory or tarball" in r.output


def test_gc_dry_run_lists_what_would_go_and_json_gives_all_of_it(tmp_path):
    import json

    from tests.unit.storage_builder import StorageBuilder

    sb = StorageBuilder(tmp_path)
    kept = sb.image("app", layers=[b"kept"])
    sb.tag("app", "1", kept)
    for i in range(60):  # untagged: all of it goes
        sb.image("app", layers=[f"gone-{i}".encode()])
    before = sb.files()
    r = _run("gc", str(tmp_path), "--dry-run")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("GC plan: ")
    assert sum(line.startswith("  would delete ") for line in lines) == 50
    assert lines[-1].startswith("  ... and ") and lines[-1].endswith("more (--json lists every one)")
    r = _run("gc", str(tmp_path), "--dry-run", "--json")
    plan = json.loads(r.output)
    assert len(plan["deletions"]) > 50 and {"kind", "path", "repo", "size"} <= set(plan["deletions"][0])
    assert sb.files() == before, "a dry run changes nothing"
    assert _run("gc", str(tmp_path), "--json").exit_code == 2


def test_verify_says_how_many_problems_it_did_not_print(tmp_path):
    from tests.unit.storage_builder import StorageBuilder

    sb = StorageBuilder(tmp_path)
    lst = tmp_path / "images.list"
    lst.write_text("".join(f"app{i}:1\n" for i in range(8)))  # none of them is there
    r = _run("verify", str(sb.root), "--images", str(lst))
    assert r.exit_code == 1
    assert "... and 3 more problem(s) not shown (--json lists every one)" in r.output
