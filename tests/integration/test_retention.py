"""Archive retention end to end: three real releases on one work dir, then `layover archive prune`
keeping the last two, on real registries, skopeo, overlayfs, git and Prefect.

The scenario runs once per module (it is the expensive part) and each test checks one promise
against what it recorded:

    releases 1, 2, 3 (the flow, in-process)   -> status, dry run (lower/ snapshot before/after)
    prune SIGKILLed part way (strace kills it at the Nth rmdir of the apply)
    prune again, racing a `layover run` that holds the lock (frozen with SIGSTOP meanwhile)
    a dry run after it (must plan nothing)    -> serve lower/ read-only, pull every kept image
    release 3 again (same sha256?)            -> release 1 again (only the pruned images copied?)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from layover.report import ReleaseReport
from layover.storage.layout import StorageLayout
from layover.testing.push import push_release
from layover.testing.releases import Release, release
from layover.workdir import WorkDir
from tests.conftest import require
from tests.gitrepo import list_repo
from tests.integration.flow_requests import release_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEEP_LAST_TWO = ["--keep-git", "LISTS", "--keep-last", "2", "--tags", "v*"]


def all_blobs(rel: Release) -> set[str]:
    """Every blob the release's images need in registry storage: manifests, configs, layers."""
    return {d.hex for d in rel.blobs} | {m.digest.hex for img in rel.images for m in img.manifests}


def archive_blobs(work: Path) -> set[str]:
    blobs = StorageLayout(work / "lower").blobs
    return {p.parent.name for p in blobs.glob("*/*/data")}


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path below root with its mode, size and content (None for a directory)."""
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_mode, 0, None)
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, Path(p).read_bytes())
    return out


def empty_dirs(root: Path) -> set[str]:
    """Empty directories outside repositories' internal `_*` dirs: a package would carry them."""
    return {
        os.path.relpath(d, root)
        for d, dirs, files in os.walk(root)
        if not dirs and not files and "/_" not in d
    }


@dataclass
class Scenario:
    ci_host: str
    work: Path
    lists_repo: Path
    rel: dict[int, Release]
    reports: dict[str, ReleaseReport] = field(default_factory=dict)
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    lower: dict[str, dict[str, tuple[int, int, bytes | None]]] = field(default_factory=dict)
    blobs: dict[str, set[str]] = field(default_factory=dict)
    killed_rc: int | None = None
    kill_at: int = 0
    race: dict[str, float | int | str] = field(default_factory=dict)
    pulls: list[str] = field(default_factory=list)
    pruned_served: dict[str, list[str]] = field(default_factory=dict)
    empty_after_rerun: set[str] = field(default_factory=set)


class Cli:
    """`python -m layover.cli ...` in a child process, with this checkout's code."""

    def __init__(self, env: dict[str, str], lists_repo: Path) -> None:
        self.env = env
        self.lists_repo = lists_repo

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "layover.cli",
            *(str(self.lists_repo) if a == "LISTS" else a for a in args),
        ]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture(scope="module")
def scenario(prefect_harness, module_registries, skopeo_bin, tmp_path_factory) -> Scenario:
    from prefect.settings import PREFECT_API_URL

    from flows.release import release as release_flow

    strace = shutil.which("strace")
    require(strace is not None, "strace is not installed (scripts/setup.sh installs it)")
    assert strace is not None
    base = tmp_path_factory.mktemp("retention")
    (base / "ci").mkdir()
    ci = module_registries.start("ci", base / "ci")
    rel = {n: release(n) for n in (1, 2, 3)}
    lists: dict[int, Path] = {}
    for n in (1, 2, 3):
        push_release(ci.host, rel[n])
        lists[n] = base / f"release-{n}.list"
        lists[n].write_text(rel[n].list_text())
    lists_repo = list_repo(base / "lists", {f"v{n}": rel[n].list_text() for n in (1, 2, 3)})
    sc = Scenario(ci.host, base / "work", lists_repo, rel)
    out = base / "out"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1"}
    cli = Cli(env, lists_repo)
    work = str(sc.work)

    def build(name: str, n: int) -> None:
        sc.reports[name] = release_flow(release_request(ci.host, lists[n], sc.work, out / f"{name}.tar"))
        sc.blobs[name] = archive_blobs(sc.work)

    for n in (1, 2, 3):
        build(f"r{n}", n)

    sc.outputs["status"] = cli("archive", "status", work, *KEEP_LAST_TWO, "--json")
    sc.lower["before-dry-run"] = snapshot(sc.work / "lower")
    sc.outputs["dry-run"] = cli("archive", "prune", work, *KEEP_LAST_TWO, "--dry-run")
    sc.outputs["dry-run-json"] = cli("archive", "prune", work, *KEEP_LAST_TWO, "--dry-run", "--json")
    sc.lower["after-dry-run"] = snapshot(sc.work / "lower")

    # SIGKILL part way through the apply: strace kills the process at the Nth rmdir(2). Only
    # the apply calls it, once per planned path (a blob or link dir after unlinking its file;
    # rmtree's last step for tag, upload and repository dirs), blobs last: N lands halfway
    # through the blobs.
    planned = json.loads(sc.outputs["dry-run-json"].stdout)["plan"]["delete"]
    sc.kill_at = planned["paths"] - planned["blobs"] + max(1, planned["blobs"] // 2)
    killed = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=rmdir",
            "-e",
            f"inject=rmdir:signal=KILL:when={sc.kill_at}",
            "--",
            *cli.argv("archive", "prune", work, *KEEP_LAST_TWO),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    sc.outputs["killed"] = killed
    sc.killed_rc = killed.returncode
    sc.blobs["killed"] = archive_blobs(sc.work)

    # The re-run races a release: the run takes the lock, is frozen, the prune must wait.
    _race(sc, cli, lists[3], out / "race.tar")
    sc.blobs["pruned"] = archive_blobs(sc.work)
    sc.empty_after_rerun = empty_dirs(sc.work / "lower")
    sc.outputs["after"] = cli("archive", "prune", work, *KEEP_LAST_TWO, "--dry-run", "--json")
    sc.outputs["status-after"] = cli("archive", "status", work, "--json")

    # Every kept image pulls from a registry serving the pruned archive, by tag and by digest.
    served = module_registries.start("archive", sc.work / "lower", read_only=True)
    try:
        for img in {(i.repository, i.tag): i for n in (2, 3) for i in rel[n].images}.values():
            for ref in (f"{img.repository}:{img.tag}", f"{img.repository}@{img.digest}"):
                dest = base / "pull" / ref.replace("/", "_").replace(":", "_").replace("@", "_")
                dest.parent.mkdir(exist_ok=True)
                subprocess.run(
                    [
                        skopeo_bin,
                        "copy",
                        "--all",
                        "--preserve-digests",
                        "--src-tls-verify=false",
                        f"docker://{served.host}/{ref}",
                        f"dir:{dest}",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                sc.pulls.append(ref)
        for img in rel[1].images:
            p = subprocess.run(
                [
                    skopeo_bin,
                    "inspect",
                    "--raw",
                    "--tls-verify=false",
                    f"docker://{served.host}/{img.repository}:{img.tag}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            sc.pruned_served.setdefault("ok" if p.returncode == 0 else "gone", []).append(
                f"{img.repository}:{img.tag}"
            )
    finally:
        module_registries.stop(served)

    build("r3-after", 3)
    build("r1-after", 1)
    return sc


def _race(sc: Scenario, cli: Cli, images: Path, output: Path) -> None:
    lock = WorkDir.at(sc.work).lock
    run = subprocess.Popen(
        cli.argv(
            "run",
            "--images",
            str(images),
            "--source",
            sc.ci_host,
            "--no-src-tls-verify",
            "--work-dir",
            str(sc.work),
            "--output",
            str(output),
            "--concurrency",
            "4",
        ),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    prune: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 120
        while True:  # the run holds the lock once the lock file names its pid
            try:
                if json.loads(lock.read_text() or "{}").get("pid") == run.pid:
                    break
            except (OSError, ValueError):
                pass
            assert run.poll() is None, run.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the run never took the work-dir lock"
            time.sleep(0.005)
        os.killpg(run.pid, signal.SIGSTOP)  # hold it there while the prune starts
        prune = subprocess.Popen(
            cli.argv("archive", "prune", str(sc.work), *KEEP_LAST_TWO, "--lock-wait", "600"),
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert prune.stderr is not None
        waiting = ""
        while "waiting" not in waiting:  # it says who holds the lock, then waits
            line = prune.stderr.readline()
            if not line:
                break
            waiting += line
        time.sleep(1.0)
        sc.race["prune_waiting"] = waiting
        sc.race["prune_running_while_locked"] = int(prune.poll() is None)
        os.killpg(run.pid, signal.SIGCONT)
        run_out, _ = run.communicate(timeout=240)
        sc.race["run_rc"] = run.returncode
        sc.race["run_done"] = time.monotonic()
        sc.race["run_out"] = run_out[-3000:]
        sc.race["run_sha256"] = output.with_name(output.name + ".sha256").read_text().split()[0]
        p_out, p_err = prune.communicate(timeout=240)
        sc.race["prune_done"] = time.monotonic()
        sc.race["prune_rc"] = prune.returncode
        sc.race["prune_out"] = p_out
        sc.race["prune_err"] = waiting + p_err
    finally:
        for p in (run, prune):
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait(timeout=30)


def _stage(report: ReleaseReport, name: str):
    return next(s for s in report.stages if s.name == name)


# --- the promises -----------------------------------------------------------------------------


def test_status_lists_the_three_releases_and_what_a_prune_would_free(scenario):
    st = scenario.outputs["status"]
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert [r["sha256"] for r in doc["releases"]] == [scenario.reports[f"r{n}"].sha256 for n in (1, 2, 3)]
    added = [r["added_blobs"] for r in doc["releases"]]
    assert added[0] > added[1] > 0 and added[2] > 0  # the first release brought the base layers
    # release 3 was built again in the race (same package, nothing added): the first record stays
    later = json.loads(scenario.outputs["status-after"].stdout)["releases"]
    assert [r["added_blobs"] for r in later] == added
    assert doc["blobs"] == len(scenario.blobs["r3"])
    plan = json.loads(scenario.outputs["dry-run-json"].stdout)["plan"]
    assert doc["prune"]["bytes_freed"] == plan["delete"]["bytes"] > 0
    assert doc["prune"]["blobs_deleted"] == plan["delete"]["blobs"]


def test_dry_run_prints_the_plan_and_leaves_lower_byte_identical(scenario):
    dry = scenario.outputs["dry-run"]
    assert dry.returncode == 0, dry.stderr
    assert scenario.lower["after-dry-run"] == scenario.lower["before-dry-run"]
    assert "images.list@refs/tags/v2" in dry.stdout and "images.list@refs/tags/v3" in dry.stdout
    assert "refs/tags/v1" not in dry.stdout
    dropped = {f"{i.repository}:{i.tag}" for i in scenario.rel[1].images} - {
        f"{i.repository}:{i.tag}" for n in (2, 3) for i in scenario.rel[n].images
    }
    for image in dropped:
        assert f"\n  {image}\n" in dry.stdout
    assert f"delete {len(dropped)} images (tags):" in dry.stdout
    assert "dry run, nothing deleted" in dry.stdout and "freeing" in dry.stdout


def test_sigkill_mid_prune_leaves_a_partial_prune_that_the_rerun_completes(scenario):
    assert scenario.killed_rc in (-signal.SIGKILL, 128 + signal.SIGKILL), scenario.outputs["killed"].stderr
    unique_1 = all_blobs(scenario.rel[1]) - all_blobs(scenario.rel[2]) - all_blobs(scenario.rel[3])
    left = scenario.blobs["killed"] & unique_1
    assert left and left != unique_1, "the kill must land part way through the blobs"
    assert scenario.race["prune_rc"] == 0, scenario.race["prune_err"]
    after = json.loads(scenario.outputs["after"].stdout)
    assert after["plan"]["delete"]["paths"] == 0, "a prune after the re-run must find nothing to delete"
    assert scenario.empty_after_rerun == set(), "the re-run removes the empty dirs the kill left"


def test_prune_racing_a_release_waits_for_the_lock(scenario):
    race = scenario.race
    assert "is in use by run" in str(race["prune_waiting"]) and "waiting up to 600 s" in str(
        race["prune_waiting"]
    )
    assert race["prune_running_while_locked"] == 1
    assert race["run_rc"] == 0, race["run_out"]
    assert race["prune_rc"] == 0, race["prune_err"]
    assert float(race["prune_done"]) >= float(race["run_done"])
    assert "pruned: removed" in str(race["prune_out"])


def test_release_1_unique_blobs_are_gone_and_shared_ones_stay(scenario):
    kept = all_blobs(scenario.rel[2]) | all_blobs(scenario.rel[3])
    assert scenario.blobs["pruned"] == kept
    shared = all_blobs(scenario.rel[1]) & kept
    assert shared, "releases share base layers"
    assert not (all_blobs(scenario.rel[1]) - kept) & scenario.blobs["pruned"]


def test_every_kept_image_pulls_by_tag_and_digest_and_pruned_tags_are_gone(scenario):
    kept = {(i.repository, i.tag) for n in (2, 3) for i in scenario.rel[n].images}
    assert len(scenario.pulls) == 2 * len(kept)
    still = {f"{r}:{t}" for r, t in kept}
    listed_1 = {f"{i.repository}:{i.tag}" for i in scenario.rel[1].images}
    assert set(scenario.pruned_served["gone"]) == listed_1 - still
    assert set(scenario.pruned_served["ok"]) == listed_1 & still


def test_release_3_after_the_prune_is_byte_identical_and_copies_nothing(scenario):
    assert scenario.reports["r3-after"].sha256 == scenario.reports["r3"].sha256
    # also the one built between the killed prune and its re-run, over the empty dirs it left
    assert scenario.race["run_sha256"] == scenario.reports["r3"].sha256
    assert _stage(scenario.reports["r3-after"], "archive sync").blobs_copied == 0


def test_release_1_after_the_prune_fetches_only_the_pruned_images_again(scenario):
    r1, again = scenario.reports["r1"], scenario.reports["r1-after"]
    assert again.sha256 == r1.sha256
    kept = {(i.repository, i.tag) for n in (2, 3) for i in scenario.rel[n].images}
    whole = [i for i in scenario.rel[1].images if (i.repository, i.tag) in kept]
    pruned = [i for i in scenario.rel[1].images if (i.repository, i.tag) not in kept]
    sync = _stage(again, "archive sync")
    moved_none = re.search(r"(\d+) image\(s\) moved no blob", sync.detail)
    assert moved_none is not None and int(moved_none.group(1)) == len(whole), sync.detail
    # skopeo counts configs and layers; it may upload a blob again that another repository
    # still has, or mount it: between the blobs that are gone and every blob of those images.
    manifests = {m.digest.hex for i in pruned for m in i.manifests}
    gone = all_blobs(scenario.rel[1]) - scenario.blobs["pruned"] - manifests
    needed = {d.hex for i in pruned for d in i.blobs}
    assert len(gone) <= sync.blobs_copied <= len(needed), (sync.blobs_copied, len(gone), len(needed))
    assert sync.blobs_copied < _stage(r1, "archive sync").blobs_copied
    assert scenario.blobs["r1-after"] == scenario.blobs["r3"]


def test_the_retention_flow_is_a_dry_run_by_default_then_prunes(scenario, prefect_harness):
    """The deployment's code path: the flow, its tasks, the lists read from git at the last two
    tags. Runs last: it prunes release 1 again, which the tests above have looked at already."""
    from flows.retention import archive_retention
    from layover.settings import KeepRecent, RetentionRequest

    rule = KeepRecent(repo=str(scenario.lists_repo), pattern="v*", last=2)
    lower = scenario.work / "lower"
    before = snapshot(lower)
    dry = archive_retention(RetentionRequest(work_dir=scenario.work, keep_recent=rule))
    assert dry.dry_run and dry.deleted == 0 and "delete 5 tags" in dry.plan
    assert snapshot(lower) == before
    done = archive_retention(RetentionRequest(work_dir=scenario.work, keep_recent=rule, dry_run=False))
    assert not done.dry_run and done.deleted > 0 and done.bytes_freed > 0
    assert archive_blobs(scenario.work) == scenario.blobs["pruned"]
    again = archive_retention(RetentionRequest(work_dir=scenario.work, keep_recent=rule, dry_run=False))
    assert again.deleted == 0
