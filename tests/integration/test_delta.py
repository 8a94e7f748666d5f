"""Delta packages on real parts: three releases built by the flow, deltas N -> N+1 -> N+2 applied
by a real `layover install` while a registry (blob-descriptor cache on) serves the storage dir,
compared file by file with full installs, every image pulled back with skopeo; the refusals
(a skipped release, a missing or damaged base blob, the wrong base, tampered data), a kill
mid-apply, a plain `tar -xf`, and the flow's `delta_from` by path and by git tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from layover.adapters.registry_api import RegistryAPI
from layover.delta import write_delta
from layover.errors import UsageError
from layover.install import InstallOptions
from layover.install import install as install_lib
from layover.package import read_record
from layover.reference import Digest
from layover.settings import ListFromFile, ListFromGit, ReleaseRequest
from layover.storage.layout import StorageLayout
from tests.gitrepo import list_repo
from tests.integration.customer_site import (
    LAYOVER,
    REPO,
    Packages,
    install,
    pull_all,
    snapshot,
)
from tests.integration.test_install import _members, _mutate, _refused, _stopped, _write, serves_whole

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def deltas(packages) -> dict[str, Path]:
    """1->2, 2->3 and 1->3, made with the CLI from the full packages."""
    out = {}
    for new, base in ((2, 1), (3, 2), (3, 1)):
        p = subprocess.run(
            [LAYOVER, "delta", str(packages.tars[new]), "--base", str(packages.tars[base])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        out[f"{base}->{new}"] = packages.tars[new].with_name(f"release-{new}.from-release-{base}.tar")
        assert out[f"{base}->{new}"].is_file()
    return out


def _full(packages: Packages, root: Path, *releases: int, prune_last: bool = False) -> Path:
    root.mkdir(parents=True)
    for i, n in enumerate(releases):
        install_lib(packages.tars[n], root, InstallOptions(prune=prune_last and i == len(releases) - 1))
    return root


def test_a_delta_carries_only_what_its_base_lacks(packages, deltas):
    c2, c3 = packages.contents(2), packages.contents(3)
    d = read_record(deltas["2->3"]).contents
    new = {b.digest: b.size for b in c3.blobs if b.digest not in {x.digest for x in c2.blobs}}
    assert d.kind == "delta" and d.delta is not None
    assert d.delta.base.sha256 == read_record(packages.tars[2]).sha256
    assert d.delta.base.release == c2.release
    assert {a.digest for a in d.delta.assumed} == {b.digest for b in c3.blobs} - set(new)
    assert d.totals.carried_bytes == sum(new.values())
    assert d.images == c3.images and d.blobs == c3.blobs, "a delta describes the whole release"
    size = deltas["2->3"].stat().st_size
    assert size <= 1.02 * sum(new.values()) + (1 << 20), (size, sum(new.values()))
    with tarfile.open(deltas["2->3"]) as tf:
        names = tf.getnames()
        assert names[:2] == ["layover/contents.json", "layover/README.txt"]
        assert all(n == "layover" or n.startswith("layover/") for n in names)
        carried = {n.split("/")[-2] for n in names if n.endswith("/data")}
        assert carried == {h[7:] for h in new}
        assert b"layover install" in tf.extractfile("layover/README.txt").read()  # type: ignore[union-attr]
    # the same inputs give the same bytes
    again = write_delta(
        packages.tars[3], read_record(packages.tars[2]), deltas["2->3"].with_name("again.tar")
    )
    assert (
        again.tar.sha256 == deltas["2->3"].with_name(deltas["2->3"].name + ".sha256").read_text().split()[0]
    )


def test_a_chain_of_deltas_serves_what_full_installs_serve(packages, deltas, cached_registries, tmp_path):
    chain = tmp_path / "chain"
    chain.mkdir()
    reg = cached_registries.start("chain", chain)
    api = RegistryAPI(reg.host)
    install(packages.tars[1], "--storage", chain)
    install(deltas["1->2"], "--storage", chain)
    pull_all(reg.host, packages.contents(2), tmp_path / "pull")
    install(deltas["2->3"], "--storage", chain)
    full = _full(packages, tmp_path / "full", 1, 2, 3)
    assert snapshot(chain) == snapshot(full), "delta chain and full installs differ"
    c3 = packages.contents(3)
    pull_all(reg.host, c3, tmp_path / "pull")

    install(deltas["2->3"], "--storage", chain, "--prune", "--restart-container", reg.name)
    only3 = _full(packages, tmp_path / "only-3", 3)
    assert snapshot(chain) == snapshot(only3), "after --prune: exactly what a fresh full install of N+2 gives"
    api.wait_ready()
    assert set(api.catalog()) == {i.repository for i in c3.images}
    for img in c3.images:
        assert api.tags(img.repository) == (img.tag,)
        assert str(api.manifest(img.repository, img.tag or "").digest) == img.digest
    assert serves_whole(api) == len(c3.images)
    pull_all(reg.host, c3, tmp_path / "pull")


def test_skipping_a_release_is_refused_naming_the_release_that_provides_the_blobs(packages, deltas, tmp_path):
    storage = _full(packages, tmp_path / "r1", 1)
    error = _refused(deltas["2->3"], storage)
    c2 = packages.contents(2)
    assert "the delta assumes are not in" in error and c2.release in error
    assert read_record(packages.tars[2]).sha256 in error
    # a delta made from N applies to N: the base decides, not the release number
    install(deltas["1->3"], "--storage", storage)
    assert snapshot(storage) == snapshot(_full(packages, tmp_path / "full", 1, 3))


def test_the_wrong_base_is_refused(packages, deltas, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "the delta assumes are not in" in _refused(deltas["1->2"], empty)


def test_a_missing_or_damaged_base_blob_is_refused_naming_it(packages, deltas, tmp_path):
    storage = _full(packages, tmp_path / "r1r2", 1, 2)
    d = read_record(deltas["2->3"]).contents
    assert d.delta is not None
    victim = Digest(max(d.delta.assumed, key=lambda a: a.size).digest[7:])
    data = StorageLayout(storage).blob_data(victim)
    original = data.read_bytes()
    data.unlink()
    assert str(victim) in _refused(deltas["2->3"], storage)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    data.write_bytes(bytes(damaged))  # same size: only --deep can tell
    error = _refused(deltas["2->3"], storage, "--deep")
    assert str(victim) in error and "damaged" in error
    data.write_bytes(original)
    install(deltas["2->3"], "--storage", storage, "--deep")


def test_a_delta_with_tampered_blob_data_is_refused(packages, deltas, tmp_path):
    storage = _full(packages, tmp_path / "r1r2", 1, 2)
    installed = frozenset(b.digest[7:] for b in packages.contents(2).blobs)
    bad = _write(tmp_path / "tampered.tar", _mutate("tampered", installed)(_members(deltas["2->3"])))
    assert "hash" in _refused(bad, storage)


def test_a_delta_killed_mid_apply_converges_on_a_rerun(packages, deltas, tmp_path):
    storage = _full(packages, tmp_path / "r1r2", 1, 2)
    proc = subprocess.Popen(
        [LAYOVER, "install", str(deltas["2->3"]), "--storage", str(storage)],
        env={**os.environ, "LAYOVER_FAILPOINTS": "install.blobs-midway"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _stopped(proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    install(deltas["2->3"], "--storage", storage)
    assert snapshot(storage) == snapshot(_full(packages, tmp_path / "full", 1, 2, 3))


def test_a_plain_tar_xf_of_a_delta_changes_nothing_a_registry_serves(
    packages, deltas, cached_registries, tmp_path
):
    storage = _full(packages, tmp_path / "r2", 2)
    reg = cached_registries.start("untar", storage)
    api = RegistryAPI(reg.host)
    before = snapshot(storage / "docker")
    served = {repo: api.tags(repo) for repo in api.catalog()}
    subprocess.run(["tar", "-xf", str(deltas["2->3"]), "-C", str(storage)], check=True)
    assert snapshot(storage / "docker") == before, "the registry's tree is untouched"
    assert sorted(os.listdir(storage)) == ["docker", "layover"]
    assert {repo: api.tags(repo) for repo in api.catalog()} == served
    assert serves_whole(api) == len(packages.contents(2).images)
    pull_all(reg.host, packages.contents(2), tmp_path / "pull")
    shutil.rmtree(storage / "layover")  # what the README says to do; then install it properly
    install(deltas["2->3"], "--storage", storage)
    pull_all(reg.host, packages.contents(3), tmp_path / "pull")


# --- the flow writes deltas in the same run --------------------------------------------------------
def test_the_flow_writes_deltas_from_a_package_path_and_from_a_git_tag(packages, deltas, tmp_path):
    from flows.release import release as release_flow

    # by path: release 3 again, on the same work dir, with a delta against release 2's package
    out = tmp_path / "out" / "release-3.tar"
    report = release_flow(
        ReleaseRequest(
            images=ListFromFile(path=str(packages.lists[3])),
            source=packages.ci_host,
            src_tls_verify=False,
            work_dir=packages.work,
            output=out,
            concurrency=4,
            delta_from=(str(packages.tars[2]),),
        )
    )
    made = out.with_name("release-3.from-release-2.tar")
    assert any(s.name == "delta from release-2" for s in report.stages)
    assert (
        hashlib.sha256(made.read_bytes()).hexdigest()
        == hashlib.sha256(deltas["2->3"].read_bytes()).hexdigest()
    )
    assert (packages.work / "releases" / f"{report.sha256}.json").is_file()
    # the delta is recorded beside the packages: `layover archive status` lists it
    delta_sha = read_record(made).sha256
    status = subprocess.run(
        [sys.executable, "-m", "layover.cli", "archive", "status", str(packages.work), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    releases = {r["sha256"]: r for r in json.loads(status.stdout)["releases"]}
    assert releases[delta_sha]["kind"] == "delta"
    assert releases[delta_sha]["base_sha256"] == read_record(packages.tars[2]).sha256
    assert releases[report.sha256]["kind"] == "full" and json.loads(status.stdout)["unreadable"] == []

    # by git tag: the list's repository has tags v2 and v3; v2 was built on this work dir
    repo = list_repo(tmp_path / "lists", {f"v{n}": packages.lists[n].read_text() for n in (1, 2, 3)})

    def run(tag: str, **extra) -> object:
        return release_flow(
            ReleaseRequest(
                images=ListFromGit(repo=str(repo), ref=tag),
                source=packages.ci_host,
                src_tls_verify=False,
                work_dir=packages.work,
                output=tmp_path / "out" / f"release-{tag}.tar",
                concurrency=4,
                **extra,
            )
        )

    run("v2")
    run("v3", delta_from=("v2",))
    by_tag = tmp_path / "out" / "release-v3.from-v2.tar"
    assert by_tag.is_file()
    d = read_record(by_tag).contents
    assert (
        d.delta is not None and d.delta.base.sha256 == read_record(tmp_path / "out" / "release-v2.tar").sha256
    )
    storage = _full(packages, tmp_path / "r2", 2)
    install(by_tag, "--storage", storage)
    assert snapshot(storage) == snapshot(_full(packages, tmp_path / "full", 2, 3))

    with pytest.raises(UsageError, match=r"no package built from images\.list at"):
        run("v3", delta_from=("v1",))  # tagged, but never built on this work dir
