"""Registries that flap: a fault-injecting proxy in front of the CI registry, and a registry of
ours killed through the Docker SDK while copies run.

One CI registry (sample release 1, small scale) and one work dir per module. The first test
fills the archive through a proxy that faults 10% of requests; the later ones check that a run
that cannot succeed fails in bounded time, names the image, ships nothing and keeps the archive.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest

from layover import imagelist
from layover.errors import LayoverError, SourceUnreachableError
from layover.storage.verify import verify_tarball
from layover.testing.releases import Release
from layover.workdir import WorkDir
from tests.faultproxy import Fault, FaultProxy, Rule
from tests.integration.flow_requests import release_request
from tests.integration.test_release_flow import tree_hash

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALE = 0.3


@dataclass
class Site:
    ci_host: str
    rel: Release
    images: Path
    work: Path
    out: Path


@pytest.fixture(scope="module")
def site(prefect_harness, ci_site) -> Site:
    ci = ci_site("faults-registry", scale=SCALE)
    return Site(ci.ci_host, ci.rel, ci.images, ci.base / "work", ci.base / "out")


def _no_output_left(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".sha256").exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_ten_percent_faulted_requests_still_give_a_verified_package(site):
    from flows.release import release as release_flow

    # Every kind except STALL: a stall costs a whole copy timeout, shown on its own below.
    kinds = (Fault.RESET, Fault.HTTP_503, Fault.HTTP_502, Fault.TRUNCATE)
    out = site.out / "flaky.tar"
    # Half the release: an image copy is ~6-10 requests and any fault fails the attempt, so the
    # retry tail (backoff 2, 4, 8, 8... s) grows with the number of images; half keeps it short.
    half = site.images.with_name("half.list")
    half.write_text("".join(f"{img.repository}:{img.tag}\n" for img in site.rel.images[::2]))
    with FaultProxy(site.ci_host, rate=0.10, kinds=kinds, seed=7) as proxy:
        report = release_flow(release_request(proxy.host, half, site.work, out, copy_retries=8))
    faults = proxy.faults()
    assert len(proxy.events) > 30
    assert faults, "the proxy must really have injected faults"
    assert 0.02 < len(faults) / len(proxy.events) < 0.3
    assert verify_tarball(out, imagelist.load(half)).ok
    assert report.images == len(site.rel.images[::2])
    print(
        f"\n{len(faults)}/{len(proxy.events)} requests faulted: "
        f"{sorted({f.fault.value for f in faults})}; run took {report.seconds:.1f} s"
    )


@pytest.mark.parametrize(
    ("fault", "retries", "timeout", "says"),
    [(Fault.HTTP_503, 2, 60, "503"), (Fault.STALL, 1, 4, "timed out")],
    ids=["always-503", "always-stalls"],
)
def test_one_image_always_failing_fails_bounded_naming_it_and_keeps_the_archive(
    site, fault, retries, timeout, says
):
    from flows.release import release as release_flow

    assert (site.work / "lower").is_dir(), "runs after the 10% test filled the archive"
    victim = site.rel.images[3]
    before = tree_hash(site.work / "lower")
    out = site.out / f"never-{fault.value}.tar"
    rule = Rule(f"/v2/{victim.repository}/", fault)
    started = time.monotonic()
    with (
        FaultProxy(site.ci_host, rules=[rule], stall_seconds=60) as proxy,
        pytest.raises(LayoverError) as info,
    ):
        release_flow(
            release_request(
                proxy.host, site.images, site.work, out, copy_retries=retries, copy_timeout_seconds=timeout
            )
        )
    took = time.monotonic() - started
    message = str(info.value)
    assert f"{victim.repository}:{victim.tag}" in message
    assert says in message, message
    # bounded: attempts x per-attempt timeout + backoff (2, 4 s + 50% jitter) + the rest of the run
    bound = (retries + 1) * min(timeout, 10) + 1.5 * sum([2, 4, 8][:retries]) + 60
    assert took < bound, f"took {took:.0f} s, bound {bound:.0f} s"
    attempts = {e.path for e in proxy.faults()}
    assert attempts and all(victim.repository in p for p in attempts)
    _no_output_left(out)
    after = tree_hash(site.work / "lower")
    assert {k: after.get(k) for k in before} == before, "the archive lost or changed history"
    assert not _mounted(site.work / "merged")


@pytest.mark.parametrize("how", ["refused-at-start", "down-after-the-first-manifest"])
def test_a_source_that_is_down_stops_the_run_with_one_line_naming_it(site, tmp_path, how):
    """Not flaky but down. Down from the start: preflight says so before any stage starts.
    Down mid-run (every request reset from the first manifest GET on): no image spends its
    retries; after `source_down_seconds` the stage stops with one SourceUnreachableError."""
    from flows.release import release as release_flow

    out = tmp_path / "out" / "down.tar"
    started = time.monotonic()
    stop = threading.Event()

    def down_after_first_manifest(proxy: FaultProxy) -> None:
        while not stop.is_set():
            if any("/manifests/" in e.path for e in list(proxy.events)):
                proxy.set_rate(1.0)
                return
            time.sleep(0.005)

    with FaultProxy(site.ci_host, rate=0.0, kinds=(Fault.RESET,)) as proxy:
        source = "127.0.0.1:9" if how == "refused-at-start" else proxy.host  # port 9: nothing listens
        watcher = threading.Thread(target=down_after_first_manifest, args=(proxy,), daemon=True)
        watcher.start()
        try:
            with pytest.raises(SourceUnreachableError) as info:
                release_flow(
                    release_request(
                        source, site.images, tmp_path / "work", out, copy_retries=1, source_down_seconds=6
                    )
                )
        finally:
            stop.set()
            watcher.join(timeout=5)
    took = time.monotonic() - started
    message = str(info.value)
    assert "\n" not in message and source in message, message
    assert info.value.exit_code == 4
    if how == "refused-at-start":
        assert "no registry answers" in message and took < 30, (message, took)
    else:
        assert "no request has succeeded" in message, message
        assert took < 6 + 8 * 1.5 + 60, f"took {took:.0f} s"
    _no_output_left(out)
    assert not _mounted(tmp_path / "work" / "merged")


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())


def test_registry_killed_mid_sync_is_restarted_and_the_package_verifies(site, docker_client, tmp_path):
    """The archive registry is SIGKILLed while archive sync copies into it (a fresh work dir, so
    there is real work in flight); Layover revives it and retries the copies that broke."""
    from flows.release import release as release_flow

    work, out = tmp_path / "work", tmp_path / "out" / "killed.tar"
    scope = WorkDir.at(work).scope
    killed: list[str] = []
    revived: list[str] = []
    stop = threading.Event()

    def killer(proxy: FaultProxy) -> None:
        # Wait until the copies are under way (blob GETs are flowing from the source), then kill.
        while not stop.is_set():
            blob_gets = sum(1 for e in proxy.events if "/blobs/" in e.path)
            if blob_gets >= 4:
                for c in docker_client.containers.list(
                    filters={"label": [f"layover.scope={scope}", "layover.role=archive"]}
                ):
                    c.kill()
                    killed.append(c.id)
                if killed:
                    break
            time.sleep(0.02)
        # The same container running again means Layover restarted it (the read-only archive
        # started after the sync is a new container with a new id).
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if docker_client.containers.get(killed[0]).status == "running":
                    revived.append(killed[0])
                    return
            except docker.errors.NotFound:
                return
            time.sleep(0.05)

    with FaultProxy(site.ci_host) as proxy:
        t = threading.Thread(target=killer, args=(proxy,), daemon=True)
        t.start()
        try:
            report = release_flow(release_request(proxy.host, site.images, work, out, copy_retries=4))
        finally:
            stop.set()
            t.join(timeout=10)
    assert killed, "the archive registry was never killed: the test did not test anything"
    assert revived, "the killed archive registry was never restarted"
    assert verify_tarball(out, imagelist.load(site.images)).ok
    assert report.images == len(site.rel.images)
