"""What `layover run` shows and leaves: progress on a terminal (a pseudo-terminal) and without one
(a pipe, as in CI logs), -q and -v, the report files, and what Prefect records: the run named
after the release, a progress artifact, the report artifact also when the run fails, which then
says the stage, one line per failed image on stderr and skopeo's own text in the run's log.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from layover.testing.push import push_release
from layover.testing.releases import Release, release
from layover.workdir import WorkDir
from tests.cli_runs import Cli, layover, mounted_under

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Site:
    env: dict[str, str]
    base: Path
    ci: str
    rel: Release
    images: Path
    work: Path  # one archive for every run here: after the first, runs are incremental

    def args(self, out: Path, images: Path | None = None) -> list[str]:
        return [
            "run",
            "--images",
            str(images or self.images),
            "--source",
            self.ci,
            "--no-src-tls-verify",
            "--work-dir",
            str(self.work),
            "--output",
            str(out),
        ]

    def api(self, path: str, body: dict) -> list[dict]:
        return httpx.post(f"{self.env['PREFECT_API_URL']}{path}", json=body, timeout=10).json()

    def last_flow_run(self) -> dict:
        return self.api("/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 1})[0]


@pytest.fixture(scope="module")
def site(
    prefect_api, module_registries, require_root_overlay, skopeo_bin, tmp_path_factory
) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("cli-output")
    (base / "ci").mkdir()
    ci = module_registries.start("ci", base / "ci")
    rel = release(1, scale=0.3)
    push_release(ci.host, rel)
    images = base / "release-1.list"
    images.write_text(rel.list_text())
    work = base / "work"
    try:
        yield Site(prefect_api.env(), base, ci.host, rel, images, work)
    finally:
        scope = WorkDir.at(work).scope
        for c in module_registries.client.containers.list(
            all=True, filters={"label": [f"layover.scope={scope}"]}
        ):
            c.remove(force=True, v=True)
        for m in mounted_under(work):
            subprocess.run(["umount", "-l", m], check=False)


def test_without_a_terminal_progress_is_plain_lines_and_prefect_knows_the_release(site):
    out = site.base / "out" / "plain.tar"
    cli = Cli(layover(*site.args(out)), site.env)
    assert cli.wait(timeout=300) == 0, cli.text()[-3000:]
    raw = cli.text()
    n = len(site.rel.images)
    assert "\x1b[" not in raw, "no terminal codes in a log"
    for stage in (
        "preflight",
        "archive sync",
        "overlay reset",
        "manifest pruning",
        "package sync",
        "gc",
        "verify",
        "tarball",
    ):
        assert f"\n{stage}: done in " in "\n" + raw, stage
    assert f"archive sync: started, {n} images" in raw
    assert "archive sync: done in " in raw and f"({n}/{n} images" in raw
    assert "Finished in state" not in raw, "Prefect's own console lines stay out of the way"
    report = raw[raw.index("images.list: ") :]
    assert f"images: {n}" in report and "sha256: " in report

    # the sidecar: version, times, source, status; files with the umask's modes
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["status"] == "succeeded" and meta["source"] == site.ci and meta["layover_version"]
    assert meta["started"] <= meta["finished"] and meta["wall_seconds"] >= sum(
        s["seconds"] for s in meta["stages"]
    )
    for path in (out, out.with_name(out.name + ".sha256"), out.with_name(out.name + ".json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # the test process's umask is 022

    run = site.last_flow_run()
    assert run["name"] == f"release-1.list from {site.ci}"
    artifacts = site.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert (
        by_key["archive-sync-progress"]["type"] == "progress"
        and by_key["archive-sync-progress"]["data"] == 100.0
    )
    assert by_key["release-report"]["description"] == "Layover release report"


def test_on_a_terminal_progress_is_a_live_display(site):
    out = site.base / "out" / "tty.tar"
    cli = Cli(layover(*site.args(out)), site.env, tty=True)
    assert cli.wait(timeout=300) == 0, cli.text()[-3000:]
    text = cli.text()
    n = len(site.rel.images)
    assert "archive sync" in text and f"{n}/{n} images" in text
    assert "✓ tarball" in text
    assert "started," not in text, "the line-by-line view is for logs"
    assert "sha256: " in text


def test_quiet_and_verbose(site):
    out = site.base / "out" / "quiet.tar"
    quiet = Cli(layover("-q", *site.args(out)), site.env)
    assert quiet.wait(timeout=300) == 0
    assert "archive sync: " not in quiet.text() and "sha256: " in quiet.text()
    loud = Cli(layover("-v", *site.args(out)), site.env)
    assert loud.wait(timeout=300) == 0
    for img in site.rel.images:
        assert f"archive sync: {img.repository}:{img.tag}: done" in loud.text()


@pytest.mark.parametrize("copier", ["native", "skopeo"])
def test_a_failed_run_says_each_image_in_one_line_and_reports_where_it_stopped(site, copier):
    missing = site.base / "missing.list"
    good = site.rel.images[0]
    missing.write_text(f"{good.repository}:{good.tag}\nno/such-image:1\nno/other:2\n")
    out = site.base / "out" / "failed.tar"
    cli = Cli(layover(*site.args(out, missing), "--copier", copier), site.env)
    assert cli.wait(timeout=300) == 3, cli.text()[-3000:]  # every failed image: not found
    text = cli.text()
    assert "layover: error: archive sync: 2 image(s) failed" in text
    lines = text.splitlines()
    for name in ("no/such-image:1", "no/other:2"):
        said = [line for line in lines if line.startswith(f"  {name}: not found: ")]
        assert len(said) == 1 and site.ci in said[0], text[-3000:]
    assert "hint: the source registry has no such image" in text
    assert "level=fatal" not in text and "Traceback" not in text
    if copier == "skopeo":
        assert (
            f"  no/such-image:1: not found: reading manifest 1 in {site.ci}/no/such-image: manifest unknown"
            in text
        )
        details = next(line.split("details: ")[1] for line in lines if "details: " in line)
        assert 'level=fatal msg="initializing source' in Path(details).read_text()  # skopeo's text, kept
        assert Path(details).parent == site.work / "logs"

    failed = json.loads(out.with_name(out.name + ".failed.json").read_text())
    assert (failed["status"], failed["failed_stage"]) == ("failed", "archive sync")
    assert failed["failures"][0].startswith("no/such-image:1: not found")
    assert not out.exists()
    run = site.last_flow_run()
    assert run["state_type"] == "FAILED"
    art = site.api(
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [run["id"]]}, "key": {"any_": ["release-report"]}}},
    )
    assert art and "failed in archive sync" in art[0]["data"]
    logs = site.api("/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    if copier == "skopeo":
        assert any("level=fatal" in e["message"] for e in logs), "skopeo's text is in Prefect's logs"
