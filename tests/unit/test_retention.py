"""Archive retention's pure logic: the keep set, version order, the checked plan, status records,
and the CLI's dry run against storage trees and git repositories built in tmp_path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from layover.cli import app
from layover.errors import InputError, LayoverError, UsageError
from layover.imagelist import parse_text
from layover.reference import Digest
from layover.report import ReleaseReport, StageReport
from layover.retention import (
    ApplyProgress,
    KeptList,
    archive_status,
    check_idle,
    keep_set,
    plan_retention,
    recorded_releases,
    select_recent,
    version_key,
)
from layover.settings import RetentionRequest
from layover.storage.vacuum import apply_gc
from layover.workdir import WorkDir
from tests.gitrepo import list_repo as make_list_repo
from tests.unit.storage_builder import StorageBuilder, digest_of

REPO = Path(__file__).resolve().parents[2]
D1 = Digest("1" * 64)


def kept(text: str, source: str = "keep.list") -> KeptList:
    return KeptList(source, None, parse_text(text, source))


# --- the keep set -----------------------------------------------------------------------------


def test_keep_set_takes_tags_and_pinned_digests_from_every_list():
    a = parse_text(f"app:1\nbase@{D1}\nlib:2@{D1}\n")
    b = parse_text("app:1\nother:3\n")  # app:1 again: kept once
    keep = keep_set([a, b])
    assert keep.tags == {("app", "1"), ("lib", "2"), ("other", "3")}
    # a pinned entry keeps the exact manifest too, even if its tag has moved since
    assert keep.digests == {("base", D1), ("lib", D1)}


def test_keep_set_ignores_the_host_part_like_the_archive_does():
    keep = keep_set([parse_text("ci.example.com:5000/platform/web:7.2\n")])
    assert keep.tags == {("platform/web", "7.2")}


def test_version_order_compares_numbers_as_numbers():
    names = ["v1.10", "v1.9", "v2", "v10", "v1.9.1", "v1"]
    assert sorted(names, key=version_key) == ["v1", "v1.9", "v1.9.1", "v1.10", "v2", "v10"]


def test_select_recent_keeps_the_last_n_matches_oldest_first():
    refs = [
        "refs/tags/v1.9",
        "refs/tags/v1.10",
        "refs/tags/v1.2",
        "refs/tags/nightly-5",
        "refs/heads/main",
        "refs/heads/v1.11-wip",
    ]
    assert select_recent(refs, "v*", 2) == ["refs/tags/v1.10", "refs/heads/v1.11-wip"]
    assert select_recent(refs, "v*.*[0-9]", 2) == ["refs/tags/v1.9", "refs/tags/v1.10"]
    assert select_recent(refs, "v*", 100) == [
        "refs/tags/v1.2",
        "refs/tags/v1.9",
        "refs/tags/v1.10",
        "refs/heads/v1.11-wip",
    ]


def test_select_recent_a_tag_wins_over_a_branch_of_the_same_name():
    assert select_recent(["refs/heads/r1", "refs/tags/r1"], "r*", 5) == ["refs/tags/r1"]


def test_select_recent_refuses_no_match_and_zero():
    with pytest.raises(InputError, match="no tag or branch matches 'x\\*'"):
        select_recent(["refs/tags/v1"], "x*", 1, repo="/srv/git/images")
    with pytest.raises(UsageError, match="--keep-last 0"):
        select_recent(["refs/tags/v1"], "v*", 0)


# --- the plan ---------------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path) -> StorageBuilder:
    """An archive with three releases' images: shared base layer, one moved tag, one dropped repo."""
    sb = StorageBuilder(tmp_path / "work" / "lower")
    base = b"shared base layer"
    for repo, tag, salt in (
        ("app", "1", "a1"),
        ("app", "2", "a2"),
        ("app", "3", "a3"),
        ("old", "1", "o1"),
        ("lib", "1", "l1"),
    ):
        m = sb.image(repo, [base, f"{repo} {salt}".encode()], salt=salt)
        sb.tag(repo, tag, m)
    return sb


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path below root: mode and content (None for directories)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = (os.lstat(p).st_mode, None)
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = (os.lstat(p).st_mode, Path(p).read_bytes())
    return out


def test_plan_keeps_listed_tags_and_shared_blobs_and_drops_the_rest(archive):
    layout = archive.layout
    plan = plan_retention(layout, [kept("app:2\n"), kept("app:3\nlib:1\n")])
    assert plan.dropped == ("app:1", "old:1")
    assert plan.gc.removed_repositories == ("old",)
    shared = digest_of(b"shared base layer")
    assert shared.hex in plan.gc.kept_blob_hexes
    apply_gc(plan.gc)
    assert layout.blob_data(shared).is_file()
    assert not layout.tag_dir("app", "1").exists() and layout.tag_dir("app", "2").exists()
    assert not layout.tags("old").exists()
    again = plan_retention(layout, [kept("app:2\n"), kept("app:3\nlib:1\n")])
    assert again.empty and again.dropped == ()


def test_plan_refuses_an_empty_keep_set_and_names_the_archive_lacks_unless_forced(archive):
    before = snapshot(archive.root)
    with pytest.raises(InputError, match="name no image"):
        plan_retention(archive.layout, [kept("# nothing\n")])
    with pytest.raises(InputError, match=r"2 kept image.* not in the archive .*app:9, gone:1"):
        plan_retention(archive.layout, [kept("app:2\napp:9\ngone:1\n")])
    assert snapshot(archive.root) == before
    forced = plan_retention(archive.layout, [kept("app:2\napp:9\n")], force=True)
    assert forced.gc.missing == ("app:9",) and "app:3" in forced.dropped
    everything = plan_retention(archive.layout, [], force=True)
    assert everything.gc.counts.blobs_deleted == everything.gc.counts.blobs


def test_plan_refuses_a_work_dir_without_an_archive(tmp_path):
    with pytest.raises(UsageError, match="no archive here"):
        plan_retention(WorkDir.at(tmp_path).archive, [kept("a:1\n")])


def test_check_idle_refuses_a_mounted_overlay_and_serving_containers(tmp_path):
    wd = WorkDir.at(tmp_path)
    check_idle(wd, merged_mounted=False, served_by=[])
    with pytest.raises(LayoverError, match=r"served by running container.*reg-1"):
        check_idle(wd, merged_mounted=False, served_by=["reg-1"])
    with pytest.raises(LayoverError, match="still mounted over the archive"):
        check_idle(wd, merged_mounted=True, served_by=[])


def test_apply_progress_says_files_per_second_at_most_every_interval():
    now = [100.0]
    lines: list[str] = []
    p = ApplyProgress(2048, lines.append, every=2.0, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 1.0
        p.advance(512)
    assert lines == [
        "pruning: 1024/2048 paths (50%), 512 files/s",
        "pruning: 2048/2048 paths (100%), 512 files/s",
    ]


# --- status -----------------------------------------------------------------------------------


def _record(wd: WorkDir, sha: str, source: str, copied: int, moved: int, mtime: float) -> None:
    report = ReleaseReport(
        source,
        None,
        3,
        f"/out/{source}.tar",
        sha,
        4096,
        (StageReport("archive sync", 1.0, 3, copied, 0, moved),),
    )
    wd.releases.mkdir(parents=True, exist_ok=True)
    path = wd.releases / f"{sha}.json"
    path.write_text(report.to_json())
    os.utime(path, (mtime, mtime))


def test_status_counts_the_archive_and_reads_recorded_releases_oldest_first(archive, tmp_path):
    wd = WorkDir.at(tmp_path / "work")
    _record(wd, "b" * 64, "r2.list", 2, 2048, 1_800_000_000)
    _record(wd, "a" * 64, "r1.list", 9, 9000, 1_700_000_000)
    (wd.releases / "broken.json").write_text("{not json")
    st = archive_status(wd, plan_retention(wd.archive, [kept("app:3\n")]))
    assert (st.repositories, st.tags) == (3, 5)
    assert st.blobs == 5 * 3 + 1  # 5 images: manifest, config, own layer each; the base layer once
    assert [r.list_source for r in st.releases] == ["r1.list", "r2.list"]
    assert (st.releases[0].added_blobs, st.releases[0].added_bytes) == (9, 9000)
    assert st.unreadable == (str(wd.releases / "broken.json"),)
    assert st.prune is not None and st.prune.images_deleted == ("app:1", "app:2", "lib:1", "old:1")
    text = st.to_text()
    assert "releases recorded: 2, oldest 2023-11-14" in text and "would delete 4 images" in text
    assert json.loads(st.to_json())["releases"][1]["sha256"] == "b" * 64


def test_recorded_releases_of_a_work_dir_without_any(tmp_path):
    assert recorded_releases(tmp_path / "nope") == ([], [])


# --- the CLI ----------------------------------------------------------------------------------

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture
def list_repo(tmp_path) -> Path:
    """images.list at tags v1 (app:1 old:1), v2 (app:2 lib:1), v10 (app:3 lib:1); main: app:3."""
    return make_list_repo(
        tmp_path / "lists", {"v1": "app:1\nold:1\n", "v2": "app:2\nlib:1\n", "v10": "app:3\nlib:1\n"}
    )


def test_cli_dry_run_prints_the_plan_and_changes_nothing(archive, list_repo, tmp_path):
    work = tmp_path / "work"
    before = snapshot(work / "lower")
    r = runner.invoke(
        app,
        [
            "archive",
            "prune",
            str(work),
            "--keep-git",
            str(list_repo),
            "--keep-last",
            "2",
            "--tags",
            "v*",
            "--dry-run",
        ],
    )
    assert r.exit_code == 0, r.output
    assert f"{list_repo}:images.list@refs/tags/v2" in r.output  # v10 and v2 kept: version order
    assert f"{list_repo}:images.list@refs/tags/v10" in r.output
    assert "delete 2 images (tags):\n  app:1\n  old:1\n" in r.output
    assert "dry run, nothing deleted" in r.output
    assert snapshot(work / "lower") == before
    assert stat.S_ISDIR(os.stat(work / "lower").st_mode)


def test_cli_prune_then_status_json(archive, list_repo, tmp_path):
    work = tmp_path / "work"
    keep = tmp_path / "extra.list"
    keep.write_text("old:1\n")
    r = runner.invoke(
        app,
        [
            "archive",
            "prune",
            str(work),
            "--keep",
            str(keep),
            "--keep-git",
            str(list_repo),
            "--keep-last",
            "1",
            "--tags",
            "v*",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "pruned: removed" in r.output and "files/s" in r.output
    r = runner.invoke(app, ["archive", "status", str(work), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert (doc["repositories"], doc["tags"]) == (3, 3)  # old:1 from the file; app:3, lib:1 from v10
    assert doc["prune"] is None
    assert sorted(os.listdir(WorkDir.at(work).archive.tags("app"))) == ["3"]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        ([], 2, "say what to keep"),
        (["--keep-git", "/x"], 2, "go together"),
        (["--keep", "LIST", "--tags", "v*"], 2, "apply to --keep-git"),
        (["--keep", "LIST"], 3, "not in the archive"),
        (["--keep", "EMPTY"], 3, "name no image"),
    ],
)
def test_cli_prune_refusals_change_nothing(archive, tmp_path, args, code, needle):
    work = tmp_path / "work"
    (tmp_path / "k.list").write_text("app:2\nmissing:1\n")
    (tmp_path / "e.list").write_text("# nothing\n")
    args = [
        str(tmp_path / "k.list") if a == "LIST" else str(tmp_path / "e.list") if a == "EMPTY" else a
        for a in args
    ]
    before = snapshot(work / "lower")
    r = runner.invoke(app, ["archive", "prune", str(work), *args])
    assert r.exit_code == code, r.output
    assert r.output.startswith("layover: error: ") and needle in r.output
    assert snapshot(work / "lower") == before


# --- the deployment ---------------------------------------------------------------------------


def test_retention_request_is_a_dry_run_unless_asked():
    req = RetentionRequest(work_dir=Path("/w"))
    assert req.dry_run is True and req.keep_lists == () and req.keep_recent is None
    schema = RetentionRequest.model_json_schema()
    assert schema["properties"]["dry_run"]["default"] is True


def test_the_archive_retention_deployment_is_weekly_and_its_parameters_validate():
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    dep = next(d for d in doc["deployments"] if d["name"] == "archive-retention")
    assert dep["entrypoint"] == "flows/retention.py:archive_retention"
    assert dep["enforce_parameter_schema"] is True
    (schedule,) = dep["schedules"]
    _minute, _hour, dom, month, dow = schedule["cron"].split()
    assert dom == month == "*" and dow != "*", "weekly"
    params = json.loads(
        json.dumps(dep["parameters"])
        .replace("{{ $LAYOVER_WORK_DIR }}", "/srv/w")
        .replace("{{ $LAYOVER_LIST_REPO }}", "/srv/git/images.git")
        .replace("{{ $LAYOVER_RELEASE_BRANCH }}", "release")
    )
    req = RetentionRequest.model_validate(params["request"])
    assert req.dry_run is True
    assert req.keep_recent is not None and req.keep_lists


def empty_dirs(root: Path) -> set[str]:
    """Empty directories outside repositories' internal `_*` dirs."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if not dirnames and not filenames and "/_" not in dirpath:
            out.add(os.path.relpath(dirpath, root))
    return out


def test_prune_after_an_interrupted_one_removes_the_empty_dirs_it_left(archive, tmp_path):
    """An apply killed before its last step leaves empty blob prefix and repository dirs that no
    plan names; every package built from the archive would carry them."""
    import shutil

    work = tmp_path / "work"
    layout = archive.layout
    plan = plan_retention(layout, [kept("app:3\nlib:1\n")])
    # what the kill left: the dropped repository's internals and a blob dir, parents not yet removed
    for d in plan.gc.deletions:
        if d.kind.value in ("repository", "blob"):
            shutil.rmtree(d.path)
    assert {"docker/registry/v2/repositories/old"} <= empty_dirs(work / "lower")
    keep = tmp_path / "k.list"
    keep.write_text("app:3\nlib:1\n")
    r = runner.invoke(app, ["archive", "prune", str(work), "--keep", str(keep)])
    assert r.exit_code == 0, r.output
    assert "empty dirs an interrupted prune left" in r.output
    assert empty_dirs(work / "lower") == set()
    assert (layout.layers("app")).is_dir()  # a kept repository's internals are never swept


def test_list_refs_reads_tags_and_branches_from_a_path_and_a_url(list_repo):
    from layover.adapters.git import list_refs

    expected = ["refs/heads/main", "refs/tags/v1", "refs/tags/v10", "refs/tags/v2"]
    assert list_refs(str(list_repo)) == expected
    assert list_refs(f"file://{list_repo}") == expected
    with pytest.raises(LayoverError, match="no such directory, and not a URL"):
        list_refs(str(list_repo / "nope"))
