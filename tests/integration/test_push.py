"""`layover push` into a registry the way a customer runs one: a registry container with htpasswd
auth behind TLS (a CA made here with openssl), real `layover push` processes, real skopeo pulls.

Packages: sample releases 1 and 2 pushed into a registry container and written with the
project's tar writer (what the pipeline's tarball stage does to its storage tree), and, for the
kill test, a package of large random layers built as a storage tree. One target registry serves
the module; every test pushes under its own prefix, so tests never see each other's images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.adapters.registry_client import Endpoint, RegistryClient
from layover.adapters.tar_writer import MemoryFile, PlainTree, write_tarball
from layover.contents import CONTENTS_MEMBER
from layover.contents import build as build_contents
from layover.imagelist import parse_text
from layover.push import Destination, Options, open_package, push
from layover.reference import Digest
from layover.storage.layout import StorageLayout
from layover.testing.push import push_release
from layover.testing.releases import Release, release
from tests.conftest import require
from tests.faultproxy import Fault, FaultProxy
from tests.tls import secure_registry_files, write_authfile
from tests.unit.storage_builder import StorageBuilder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
USER = "customer-ci"


@dataclass(frozen=True)
class Site:
    host: str  # HOST:PORT of the TLS + htpasswd registry
    storage: Path  # its storage dir on this host: tests compare it byte for byte
    ca_dir: Path
    authfile: Path
    password: str
    home: Path  # an empty HOME for every process: only the flags given find credentials
    registries: object  # the module's RegistryManager
    reg: object  # the Registry


@dataclass(frozen=True)
class Packages:
    tar: dict[int, Path]
    rel: dict[int, Release]


@pytest.fixture(scope="module")
def site(module_registries, tmp_path_factory) -> Iterator[Site]:
    require(shutil.which("openssl") is not None, "openssl is missing (apt-get install openssl)")
    require(shutil.which("htpasswd") is not None, "htpasswd is missing (apt-get install apache2-utils)")
    require(shutil.which("skopeo") is not None, "skopeo is missing (scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp("push-site")
    files = secure_registry_files(base, USER)
    (base / "storage").mkdir()
    (base / "home").mkdir()
    reg = module_registries.start(
        "customer", base / "storage", auth_htpasswd=files.htpasswd, tls=(files.cert, files.key)
    )
    authfile = write_authfile(base / "auth.json", reg.host, USER, files.password)
    try:
        yield Site(
            reg.host,
            base / "storage",
            files.ca_dir,
            authfile,
            files.password,
            base / "home",
            module_registries,
            reg,
        )
    finally:
        module_registries.stop(reg)


@pytest.fixture(scope="module")
def packages(module_registries, tmp_path_factory) -> Packages:
    """Sample releases 1 and 2 as packages: each pushed into its own registry container, which
    is then stopped and its storage written with the tar writer, the contents file first (what
    the pipeline's tarball stage does)."""
    base = tmp_path_factory.mktemp("push-packages")
    tars, rels = {}, {}
    for n in (1, 2):
        storage = base / f"storage-{n}"
        storage.mkdir()
        reg = module_registries.start(f"package-{n}", storage)
        rels[n] = release(n)
        push_release(reg.host, rels[n])
        module_registries.stop(reg)
        listed = parse_text(rels[n].list_text(), f"release-{n}.list")
        contents = build_contents(
            StorageLayout(storage), listed, list_source=f"release-{n}.list", list_commit=None
        )
        first = [MemoryFile(CONTENTS_MEMBER, contents.to_bytes())]
        tars[n] = write_tarball(PlainTree(storage), base / f"release-{n}.tar", first=first).path
    return Packages(tars, rels)


# --- helpers -----------------------------------------------------------------------------------
def env_for(site: Site) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(site.home),
        "XDG_RUNTIME_DIR": str(site.home),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }


def push_argv(site: Site, package: Path, prefix: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "layover.cli", "push", str(package),
        "--to", f"{site.host}/{prefix}",
        "--dest-authfile", str(site.authfile),
        "--dest-cert-dir", str(site.ca_dir),
        *extra,
    ]  # fmt: skip


def layover_push(site: Site, package: Path, prefix: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        push_argv(site, package, prefix, *extra),
        env=env_for(site),
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file and directory below root -> sha256 of its content ("dir" for directories)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


_COMMIT = re.compile(
    r'"PUT /v2/(\S+)/blobs/uploads/\S*digest=sha256(?::|%3A)([0-9a-f]{64})\S* HTTP/1\.1" 201'
)
_WRITE = re.compile(r'"(PUT|POST|PATCH|DELETE) /v2/(\S+?)/(?:blobs|manifests)/')


def committed_uploads(site: Site, prefix: str) -> Counter[str]:
    """Blob uploads the registry completed under `prefix` (201 to the final PUT), by digest hex."""
    log = site.registries.access_log(site.reg)  # type: ignore[attr-defined]
    return Counter(m.group(2) for m in _COMMIT.finditer(log) if m.group(1).startswith(prefix + "/"))


def writes(site: Site, prefix: str) -> int:
    log = site.registries.access_log(site.reg)  # type: ignore[attr-defined]
    return sum(1 for m in _WRITE.finditer(log) if m.group(2).startswith(prefix + "/"))


def pull(site: Site, ref: str, out: Path) -> Digest:
    """`skopeo copy --all --preserve-digests` of ref into a `dir:` (which, unlike an OCI layout,
    keeps Docker manifest lists as they are); the digest of the manifest it stored."""
    out.mkdir(parents=True, exist_ok=True)
    layout = out / hashlib.sha256(ref.encode()).hexdigest()[:16]
    done = subprocess.run(
        [
            "skopeo", "copy", "--all", "--preserve-digests", "--retry-times", "0",
            "--src-cert-dir", str(site.ca_dir), "--src-authfile", str(site.authfile),
            f"docker://{site.host}/{ref}", f"dir:{layout}",
        ],
        env=env_for(site), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"skopeo copy {ref}: {done.stderr}"
    return Digest(hashlib.sha256((layout / "manifest.json").read_bytes()).hexdigest())


def pulls_every_image(site: Site, rel: Release, prefix: str, tmp: Path) -> None:
    """Every image pulls whole by tag and by digest, with the package's digest (4 skopeo at once)."""
    refs = [(f"{prefix}/{i.repository}:{i.tag}", i.digest) for i in rel.images]
    refs += [(f"{prefix}/{i.repository}@{i.digest}", i.digest) for i in rel.images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda r: pull(site, r[0], tmp / "pulled"), refs))
    assert got == [digest for _, digest in refs]


def prefix_for(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- tests -------------------------------------------------------------------------------------
def test_push_behind_tls_and_basic_auth_with_a_prefix_then_every_image_pulls(site, packages, tmp_path):
    prefix = prefix_for("customer/mirror")
    with open_package(packages.tar[1]) as pkg:
        assert pkg.contents is not None  # the images come from the contents file
    report_file = tmp_path / "report.json"
    done = layover_push(
        site, packages.tar[1], prefix, "--report", str(report_file), "--progress-seconds", "0.2"
    )
    assert done.returncode == 0, done.stderr
    rel = packages.rel[1]
    assert f"images: {len(rel.images)} ({len(rel.images)} pushed" in done.stdout
    assert re.search(r"push: \d+/12 images, .* sent", done.stderr)  # the progress line
    report = json.loads(report_file.read_text())
    assert {i["target"]: i["digest"] for i in report["images"]} == {
        f"{prefix}/{img.repository}:{img.tag}": str(img.digest) for img in rel.images
    }
    # every config and layer went over the wire exactly once; shared ones were mounted
    assert sorted(report["uploaded"]) == sorted(str(d) for d in rel.blobs)
    assert committed_uploads(site, prefix) == Counter({d.hex: 1 for d in rel.blobs})
    assert report["blobs_mounted"] > 0
    # the secret is nowhere: not in the output, not in the report
    for text in (done.stdout, done.stderr, report_file.read_text()):
        assert site.password not in text
    pulls_every_image(site, rel, prefix, tmp_path)


def test_a_target_holding_the_previous_release_gets_only_the_new_blobs(site, packages, tmp_path):
    prefix = prefix_for("incremental")
    assert layover_push(site, packages.tar[1], prefix).returncode == 0
    before = committed_uploads(site, prefix)
    report_file = tmp_path / "report.json"
    done = layover_push(site, packages.tar[2], prefix, "--report", str(report_file))
    assert done.returncode == 0, done.stderr
    old, new = packages.rel[1], packages.rel[2]
    fresh = {d for d in new.blobs if d not in old.blobs}
    assert fresh, "release 2 must bring new blobs for this test to mean anything"
    report = json.loads(report_file.read_text())
    assert set(report["uploaded"]) == {str(d) for d in fresh}
    assert report["bytes_uploaded"] == sum(len(new.blobs[d]) for d in fresh)
    # the registry's own log agrees: the previous release's blobs were not uploaded again
    after = committed_uploads(site, prefix)
    assert after - before == Counter({d.hex: 1 for d in fresh})
    unchanged = {img.repository for img in new.images} & {img.repository for img in old.images}
    assert any(i["action"] == "present" for i in report["images"] if i["image"].split(":")[0] in unchanged)
    pulls_every_image(site, new, prefix, tmp_path)


def _conflict(site: Site, packages: Packages) -> tuple[str, str, Digest]:
    """A prefix holding release 1, plus a tag release 2 wants, pointing at release 1's digest."""
    prefix = prefix_for("conflict")
    assert layover_push(site, packages.tar[1], prefix).returncode == 0
    new_web = packages.rel[2].image("apps/team-a/web")
    old_web = packages.rel[1].image("apps/team-a/web")
    assert new_web.tag != old_web.tag
    subprocess.run(
        [
            "skopeo", "copy", "--all", "--preserve-digests",
            "--src-cert-dir", str(site.ca_dir), "--src-authfile", str(site.authfile),
            "--dest-cert-dir", str(site.ca_dir), "--dest-authfile", str(site.authfile),
            f"docker://{site.host}/{prefix}/{old_web.repository}:{old_web.tag}",
            f"docker://{site.host}/{prefix}/{new_web.repository}:{new_web.tag}",
        ],
        env=env_for(site), check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return prefix, f"{prefix}/{new_web.repository}:{new_web.tag}", old_web.digest


def test_tag_conflict_fail_changes_nothing(site, packages):
    prefix, ref, old = _conflict(site, packages)
    storage, write_count = tree(site.storage), writes(site, prefix)
    done = layover_push(site, packages.tar[2], prefix)  # --on-existing-tag fail is the default
    assert done.returncode == 3, done.stderr
    message = done.stderr.strip()
    assert message.startswith("layover: error: ") and "\n" not in message
    assert f"{ref} is {old}" in message and "nothing was pushed" in message
    assert tree(site.storage) == storage
    assert writes(site, prefix) == write_count


def test_tag_conflict_skip_leaves_the_tag_and_pushes_the_rest(site, packages, tmp_path):
    prefix, ref, old = _conflict(site, packages)
    report_file = tmp_path / "report.json"
    done = layover_push(
        site, packages.tar[2], prefix, "--on-existing-tag", "skip", "--report", str(report_file)
    )
    assert done.returncode == 0, done.stderr
    assert f"skipped {ref}: the target's tag is {old}" in done.stdout
    assert pull(site, ref, tmp_path) == old
    rest = [img for img in packages.rel[2].images if f"{prefix}/{img.repository}:{img.tag}" != ref]
    for img in rest:
        assert pull(site, f"{prefix}/{img.repository}:{img.tag}", tmp_path) == img.digest
    actions = {i["target"]: i["action"] for i in json.loads(report_file.read_text())["images"]}
    assert actions[ref] == "skip"


def test_tag_conflict_overwrite_moves_the_tag(site, packages, tmp_path):
    prefix, _, _ = _conflict(site, packages)
    done = layover_push(site, packages.tar[2], prefix, "--on-existing-tag", "overwrite")
    assert done.returncode == 0, done.stderr
    assert "1 overwritten" in done.stdout
    pulls_every_image(site, packages.rel[2], prefix, tmp_path)


@pytest.fixture(scope="module")
def delta(packages, tmp_path_factory) -> Path:
    """Release 2 as a delta against release 1, written by `layover delta`."""
    out = tmp_path_factory.mktemp("push-delta") / "release-2.from-release-1.tar"
    done = subprocess.run(
        [sys.executable, "-m", "layover.cli", "delta", str(packages.tar[2]), "--base", str(packages.tar[1]),
         "--output", str(out)],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_a_delta_pushed_onto_its_base_sends_only_what_it_carries(site, packages, delta, tmp_path):
    prefix = prefix_for("delta")
    assert layover_push(site, packages.tar[1], prefix).returncode == 0
    before = committed_uploads(site, prefix)
    report_file = tmp_path / "report.json"
    done = layover_push(site, delta, prefix, "--report", str(report_file))
    assert done.returncode == 0, done.stderr
    old, new = packages.rel[1], packages.rel[2]
    fresh = {d for d in new.blobs if d not in old.blobs}
    assert committed_uploads(site, prefix) - before == Counter({d.hex: 1 for d in fresh})
    assert set(json.loads(report_file.read_text())["uploaded"]) == {str(d) for d in fresh}
    pulls_every_image(site, new, prefix, tmp_path)


def test_a_delta_without_its_base_names_the_missing_blobs_and_tags_nothing(site, packages, delta):
    prefix = prefix_for("nobase")
    done = layover_push(site, delta, prefix)
    assert done.returncode == 3, done.stderr
    message = done.stderr.strip()
    assert "\n" not in message and "blob(s) it does not carry are not in" in message
    assert re.search(r"sha256:[0-9a-f]{64} \(used by [a-z/-]+:[\w.]+\)", message)
    assert "push its base package (release-1.list" in message and "Nothing was pushed" in message
    assert writes(site, prefix) == 0


def test_wrong_credentials_are_refused_before_anything_is_written(site, packages, tmp_path):
    prefix = prefix_for("denied")
    wrong = write_authfile(tmp_path / "wrong.json", site.host, USER, site.password + "-wrong")
    argv = push_argv(site, packages.tar[1], prefix)
    argv[argv.index(str(site.authfile))] = str(wrong)
    done = subprocess.run(argv, env=env_for(site), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert f"refused the credentials from {wrong} (--dest-authfile)" in done.stderr
    assert site.password not in done.stderr and writes(site, prefix) == 0


def test_without_the_ca_tls_fails_naming_the_flags(site, packages):
    argv = push_argv(site, packages.tar[1], prefix_for("noca"))
    i = argv.index("--dest-cert-dir")
    del argv[i : i + 2]
    done = subprocess.run(argv, env=env_for(site), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert "did not verify" in done.stderr and "--dest-cert-dir DIR" in done.stderr
    assert "--no-dest-tls-verify" in done.stderr


# --- a flaky registry ---------------------------------------------------------------------------
def test_transient_faults_are_retried_and_nothing_is_sent_twice(packages, module_registries, tmp_path):
    """Resets, 502/503 and responses cut short on 8% of requests (a seeded fault proxy in front
    of a plain-HTTP registry): the push retries them, finishes, and commits each blob once."""
    (tmp_path / "flaky").mkdir()
    reg = module_registries.start("flaky", tmp_path / "flaky")
    rel = packages.rel[1]
    kinds = (Fault.RESET, Fault.HTTP_503, Fault.HTTP_502, Fault.TRUNCATE)
    try:
        with (
            FaultProxy(reg.host, rate=0.08, kinds=kinds, seed=11) as proxy,
            RegistryClient(Endpoint(proxy.host, tls_verify=False, loopback_only=True)) as client,
            open_package(packages.tar[1]) as pkg,
        ):
            options = Options(Destination(proxy.host, "flaky"), attempts=8, wait_max=0.05)
            report = push(pkg, client, options)
            faults = proxy.faults()
        assert len({f.fault for f in faults}) >= 3, faults  # they really happened, of several kinds
        assert report.tags_written == len(rel.images)
        log = module_registries.access_log(reg)
        committed = Counter(m.group(2) for m in _COMMIT.finditer(log))
        assert committed == Counter({d.hex: 1 for d in rel.blobs})
        with RegistryClient(Endpoint(reg.host, tls_verify=False, loopback_only=True)) as direct:
            for img in rel.images:
                assert direct.head_manifest(f"flaky/{img.repository}", img.tag).digest == img.digest
    finally:
        module_registries.stop(reg)


# --- killed mid-upload ---------------------------------------------------------------------
LAYERS = 6
LAYER_MIB = 48


@pytest.fixture(scope="module")
def big_package(tmp_path_factory) -> tuple[Path, dict[str, Digest], list[Digest]]:
    """Images with large random layers (each in its own repository), as a package."""
    base = tmp_path_factory.mktemp("push-big")
    sb = StorageBuilder(base / "storage")
    tags, layers = {}, []
    for i in range(LAYERS):
        data = os.urandom(LAYER_MIB << 20)
        layers.append(Digest(hashlib.sha256(data).hexdigest()))
        tags[f"big/app-{i}:1"] = sb.image(f"big/app-{i}", [data], salt=str(i))
        sb.tag(f"big/app-{i}", "1", tags[f"big/app-{i}:1"])
    tar = write_tarball(PlainTree(sb.root), base / "big.tar").path
    shutil.rmtree(sb.root)
    return tar, tags, layers


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # committed or purged between the glob and the stat
        return 0


def test_a_push_killed_mid_upload_finishes_on_rerun_without_uploading_anything_twice(site, big_package):
    tar, tags, layers = big_package
    prefix = prefix_for("killed")
    layout = StorageLayout(site.storage)
    proc = subprocess.Popen(
        push_argv(site, tar, prefix, "--concurrency", "1"),
        env=env_for(site), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        landed: list[Digest] = []
        in_flight: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            landed = [d for d in layers if layout.blob_data(d).is_file()]
            uploads = layout.repositories / prefix
            # partly written uploads, sized before the stop: the registry still drains what the
            # socket holds after the pusher stops, so a size read afterwards may be the whole layer
            in_flight = [p for p in uploads.glob("big/*/_uploads/*/data") if 0 < _size(p) < LAYER_MIB << 20]
            if len(landed) >= 2 and in_flight:
                os.killpg(proc.pid, signal.SIGSTOP)
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the push ended before it could be killed: {proc.stderr.read()!r}"
        # the state it is killed in: some layers committed, one upload half done
        landed = [d for d in layers if layout.blob_data(d).is_file()]
        assert 2 <= len(landed) < LAYERS
        assert in_flight, "no upload was under way when the push was stopped"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    before = committed_uploads(site, prefix)
    assert set(before) & {d.hex for d in layers} == {d.hex for d in landed}
    assert writes(site, prefix) > 0

    with tempfile.NamedTemporaryFile(suffix=".json") as report_file:
        done = layover_push(site, tar, prefix, "--report", report_file.name)
        assert done.returncode == 0, done.stderr
        report = json.loads(Path(report_file.name).read_text())
    # what landed before the kill was found with HEAD, not sent again
    assert set(report["uploaded"]) & {str(d) for d in landed} == set()
    committed = committed_uploads(site, prefix)
    assert {d.hex for d in layers} <= set(committed) and set(committed.values()) == {1}
    for ref, digest in tags.items():
        repo, tag = ref.split(":")
        out = subprocess.run(
            [
                "skopeo", "inspect", "--raw", "--cert-dir", str(site.ca_dir), "--authfile", str(site.authfile),
                f"docker://{site.host}/{prefix}/{repo}:{tag}",
            ],
            env=env_for(site), check=True, capture_output=True, timeout=60,
        ).stdout  # fmt: skip
        assert hashlib.sha256(out).hexdigest() == digest.hex
    with tempfile.TemporaryDirectory() as pulled:
        repo, tag = next(iter(tags)).split(":")
        assert pull(site, f"{prefix}/{repo}@{tags[f'{repo}:{tag}']}", Path(pulled)) == tags[f"{repo}:{tag}"]
