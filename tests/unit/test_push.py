"""layover push's logic against an in-memory registry that checks what a real one checks (a
manifest's blobs and children must be in its repository first). Packages are real tarballs
written by the project's tar writer from storage trees built in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.adapters.tar_writer import ListedMember, ListedTree, MemoryFile, PlainTree, write_tarball
from layover.contents import CONTENTS_MEMBER, AssumedBlob, Base, Contents, Delta, assemble
from layover.contents import build as contents_build
from layover.errors import (
    ImageNotFoundError,
    PackageError,
    StageFailed,
    TagConflictError,
    TransientHTTPError,
    UsageError,
)
from layover.imagelist import parse_text
from layover.manifest import parse_manifest
from layover.package import expected_sha256
from layover.push import (
    Action,
    Destination,
    OnExistingTag,
    Options,
    Root,
    check_sha256,
    open_package,
    push,
)
from layover.reference import Digest
from layover.tarball import Entry, Kind
from layover.tarindex import TarIndex
from tests.unit.storage_builder import StorageBuilder, digest_of


# --- an in-memory registry ---------------------------------------------------------------------
@dataclass(frozen=True)
class Head:
    digest: Digest | None


@dataclass(frozen=True)
class Fetched:
    data: bytes
    digest: Digest


class FakeTarget:
    host = "registry.example.com"

    def __init__(self) -> None:
        self.blobs: dict[str, dict[Digest, bytes]] = {}
        self.manifests: dict[str, dict[Digest, bytes]] = {}
        self.tags: dict[str, dict[str, Digest]] = {}
        self.events: list[tuple[str, str, str]] = []  # (what, repository, ref) of every write
        self.transient: dict[str, int] = {}  # operation -> failures still to inject
        self.uploads: dict[Digest, int] = {}
        self._lock = threading.Lock()

    def _maybe_fail(self, op: str) -> None:
        with self._lock:
            if self.transient.get(op, 0) > 0:
                self.transient[op] -= 1
                raise TransientHTTPError("PUT", f"https://{self.host}/v2/x", 503, (), "", "retrying may help")

    def writes(self) -> list[tuple[str, str, str]]:
        return list(self.events)

    # --- the protocol push uses ----------------------------------------------------------
    def head_manifest(self, repository: str, ref: str | Digest) -> Head:
        d = ref if isinstance(ref, Digest) else self.tags.get(repository, {}).get(ref)
        if d is None or d not in self.manifests.get(repository, {}):
            raise ImageNotFoundError(f"{repository}:{ref} not found")
        return Head(d)

    def get_manifest(self, repository: str, ref: str | Digest) -> Fetched:
        d = self.head_manifest(repository, ref).digest
        assert d is not None
        return Fetched(self.manifests[repository][d], d)

    def put_manifest(self, repository: str, ref: str | Digest, data: bytes, media_type: str) -> Digest:
        self._maybe_fail("put_manifest")
        d = digest_of(data)
        m = parse_manifest(data, "put")
        with self._lock:
            for c in m.children:
                assert c in self.manifests.get(repository, {}), f"child {c} not in {repository} yet"
            for b in m.blobs:
                assert b in self.blobs.get(repository, {}), f"blob {b} not in {repository} yet"
            self.manifests.setdefault(repository, {})[d] = data
            if isinstance(ref, str):
                self.tags.setdefault(repository, {})[ref] = d
                self.events.append(("tag", repository, ref))
            else:
                self.events.append(("manifest", repository, str(ref)))
        return d

    def blob_size(self, repository: str, digest: Digest, *, for_push: bool = False) -> int | None:
        self._maybe_fail("blob_size")
        data = self.blobs.get(repository, {}).get(digest)
        return None if data is None else len(data)

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        with self._lock:
            data = self.blobs.get(from_repository, {}).get(digest)
            if data is None:
                return False
            self.blobs.setdefault(repository, {})[digest] = data
            self.events.append(("mount", repository, str(digest)))
            return True

    def upload_blob(self, repository, digest, data, *, size=None, mount_from=None) -> str:
        if self.blob_size(repository, digest) is not None:
            return "present"
        if mount_from and self.mount_blob(repository, digest, mount_from):
            return "mounted"
        self._maybe_fail("upload_blob")
        body = b"".join(data)
        assert hashlib.sha256(body).hexdigest() == digest.hex and len(body) == size
        with self._lock:
            self.blobs.setdefault(repository, {})[digest] = body
            self.uploads[digest] = self.uploads.get(digest, 0) + 1
            self.events.append(("upload", repository, str(digest)))
        return "uploaded"

    # --- test setup ----------------------------------------------------------------------
    def preload(self, repository: str, tag: str, manifest: bytes, blobs: dict[Digest, bytes]) -> None:
        self.blobs.setdefault(repository, {}).update(blobs)
        d = digest_of(manifest)
        self.manifests.setdefault(repository, {})[d] = manifest
        self.tags.setdefault(repository, {})[tag] = d


# --- packages ----------------------------------------------------------------------------------
@dataclass
class Built:
    tar: Path
    storage: StorageBuilder
    digests: dict[str, Digest]  # "repo:tag" or "repo@" -> manifest digest
    shared: bytes  # a layer every image uses


def build(tmp: Path, *, drop: Digest | None = None, extra_tag: bool = False) -> Built:
    """Three repositories: an index with two children, two images sharing a base layer, and an
    untagged image kept by digest. `drop` leaves one blob's data out (as a delta does)."""
    sb = StorageBuilder(tmp / "storage")
    shared = b"base layer shared by every image\n" * 50
    digests: dict[str, Digest] = {}
    a1 = sb.image("apps/web", [shared, b"web amd64"], salt="a1")
    a2 = sb.image("apps/web", [shared, b"web arm64"], salt="a2", oci=True)
    idx = sb.index("apps/web", [a1, a2])
    sb.tag("apps/web", "1.0", idx)
    digests["apps/web:1.0"] = idx
    api = sb.image("apps/api", [shared, b"api"], salt="api")
    sb.tag("apps/api", "2.0", api)
    digests["apps/api:2.0"] = api
    if extra_tag:
        sb.tag("apps/api", "latest", api)
        digests["apps/api:latest"] = api
    pinned = sb.image("tools/cli", [shared, b"cli"], salt="cli", media_type=False, oci=True)
    digests["tools/cli@"] = pinned
    stable = sb.image("tools/cli", [shared, b"cli stable"], salt="stable")  # a tag beside it
    sb.tag("tools/cli", "stable", stable)
    digests["tools/cli:stable"] = stable
    if drop is not None:
        shutil.rmtree(sb.layout.blob_dir(drop))
    out = tmp / "release.tar"
    write_tarball(PlainTree(sb.root), out)
    return Built(out, sb, digests, shared)


def run_push(built: Built, target: FakeTarget, **kw) -> object:
    opts = Options(Destination.parse(kw.pop("to", "registry.example.com/mirror")), wait_max=0.01, **kw)
    with open_package(built.tar) as pkg:
        return push(pkg, target, opts)


# --- tests -------------------------------------------------------------------------------------
def test_destination_takes_host_port_and_prefix():
    assert Destination.parse("r.example.com:5000") == Destination("r.example.com:5000", "")
    d = Destination.parse("r.example.com/team/mirror/")
    assert d.prefix == "team/mirror" and d.repository("apps/web") == "team/mirror/apps/web"
    with pytest.raises(UsageError, match="without a scheme"):
        Destination.parse("https://r.example.com")
    with pytest.raises(UsageError, match="not a repository path"):
        Destination.parse("r.example.com/Upper")


def test_every_image_lands_children_first_and_tags_last(tmp_path):
    built = build(tmp_path)
    target = FakeTarget()
    report = run_push(built, target)
    repo = "mirror/apps/web"
    assert target.tags[repo]["1.0"] == built.digests["apps/web:1.0"]
    assert target.tags["mirror/apps/api"]["2.0"] == built.digests["apps/api:2.0"]
    assert built.digests["tools/cli@"] in target.manifests["mirror/tools/cli"]  # the untagged root
    events = target.writes()
    first_tag = min(i for i, e in enumerate(events) if e[0] == "tag")
    assert all(e[0] == "tag" for e in events[first_tag:]), "a tag was written before all data landed"
    # the shared layer went over the wire once; the other repositories mounted it
    assert target.uploads[digest_of(built.shared)] == 1
    assert report.blobs_mounted == 2 and report.blobs_present == 1 and report.tags_written == 3
    assert {i.image: i.action for i in report.images} == {
        "apps/api:2.0": "push",
        "apps/web:1.0": "push",
        "tools/cli:stable": "push",
        f"tools/cli@{built.digests['tools/cli@']}": "push",
    }


def test_a_second_push_writes_nothing(tmp_path):
    built = build(tmp_path)
    target = FakeTarget()
    run_push(built, target)
    before = target.writes()
    report = run_push(built, target)
    assert target.writes() == before
    assert {i.action for i in report.images} == {Action.PRESENT.value}
    assert report.blobs_uploaded == 0 and report.bytes_uploaded == 0


def test_a_conflicting_tag_refuses_the_push_before_anything_is_written(tmp_path):
    built = build(tmp_path, extra_tag=True)
    target = FakeTarget()
    other = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    target.preload("mirror/apps/api", "latest", other, {})
    target.preload("mirror/apps/web", "1.0", other, {})
    with pytest.raises(TagConflictError) as e:
        run_push(built, target)
    assert target.writes() == []
    text = str(e.value)
    assert "2 tag(s) already point elsewhere" in text and "mirror/apps/web:1.0" in text
    assert "mirror/apps/api:latest" in text and "\n" not in text


def test_skip_leaves_the_conflicting_image_alone_and_overwrite_moves_the_tag(tmp_path):
    built = build(tmp_path)
    other = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    target = FakeTarget()
    target.preload("mirror/apps/web", "1.0", other, {})
    report = run_push(built, target, on_existing_tag=OnExistingTag.SKIP)
    assert target.tags["mirror/apps/web"]["1.0"] == digest_of(other)
    assert not any(e[1] == "mirror/apps/web" for e in target.writes())
    web = next(i for i in report.images if i.image == "apps/web:1.0")
    assert web.action == "skip" and web.previous == str(digest_of(other))
    assert target.tags["mirror/apps/api"]["2.0"] == built.digests["apps/api:2.0"]

    report = run_push(built, target, on_existing_tag=OnExistingTag.OVERWRITE)
    assert target.tags["mirror/apps/web"]["1.0"] == built.digests["apps/web:1.0"]
    assert next(i for i in report.images if i.image == "apps/web:1.0").action == "overwrite"


def test_transient_failures_are_retried(tmp_path):
    built = build(tmp_path)
    target = FakeTarget()
    target.transient = {"upload_blob": 2, "put_manifest": 1, "blob_size": 1}
    run_push(built, target)
    assert target.transient == {"upload_blob": 0, "put_manifest": 0, "blob_size": 0}
    assert target.tags["mirror/apps/web"]["1.0"] == built.digests["apps/web:1.0"]


def test_a_failure_that_outlasts_the_retries_tags_nothing(tmp_path):
    built = build(tmp_path)
    target = FakeTarget()
    target.transient = {"put_manifest": 100}
    with pytest.raises(StageFailed, match=r"nothing was tagged") as e:
        run_push(built, target, attempts=2)
    assert not any(w[0] == "tag" for w in target.writes())
    assert e.value.exit_code == 1 and len(e.value.failures) == 4


def test_a_blob_the_package_leaves_out_is_mounted_from_where_the_target_has_it(tmp_path):
    shared = digest_of(b"base layer shared by every image\n" * 50)
    built = build(tmp_path, drop=shared)
    target = FakeTarget()
    # where a base package put it: one of this package's repositories
    target.blobs["mirror/apps/api"] = {shared: b"base layer shared by every image\n" * 50}
    report = run_push(built, target)
    assert shared not in target.uploads and report.blobs_mounted == 2 and report.blobs_present == 2
    assert target.tags["mirror/apps/web"]["1.0"] == built.digests["apps/web:1.0"]


def test_a_blob_missing_from_package_and_target_is_named_and_nothing_is_written(tmp_path):
    shared = digest_of(b"base layer shared by every image\n" * 50)
    built = build(tmp_path, drop=shared)
    target = FakeTarget()
    with pytest.raises(PackageError) as e:
        run_push(built, target)
    text = str(e.value)
    assert f"1 blob(s) are neither in the package nor in {target.host}/mirror: {shared} (used by" in text
    assert "the package is incomplete" in text and "\n" not in text
    assert target.writes() == []


def test_roots_are_tags_and_untagged_top_manifests(tmp_path):
    built = build(tmp_path)
    with open_package(built.tar) as pkg:
        roots = pkg.roots()
    assert roots == [
        Root("apps/api", "2.0", built.digests["apps/api:2.0"]),
        Root("apps/web", "1.0", built.digests["apps/web:1.0"]),
        Root("tools/cli", "stable", built.digests["tools/cli:stable"]),
        Root("tools/cli", None, built.digests["tools/cli@"]),
    ]


def test_checksum_from_the_sidecar(tmp_path):
    built = build(tmp_path)
    expected = expected_sha256(built.tar, None)
    check_sha256(built.tar, expected)
    with pytest.raises(PackageError, match=r"sha256 is .* expected 0{64}; the package is damaged"):
        check_sha256(built.tar, "0" * 64)
    built.tar.with_name("release.tar.sha256").unlink()
    with pytest.raises(PackageError, match=r"release.tar.sha256: missing.*--sha256 HEX \(or --no-checksum"):
        expected_sha256(built.tar, None)
    with pytest.raises(UsageError):
        expected_sha256(built.tar, "abc")


# --- packages with a contents file: a delta ---------------------------------------------------
def delta_case(tmp: Path) -> tuple[Built, Path, Contents, set[str]]:
    """Release 1 as a full package (no contents file: the tree is read), and release 2 (release
    1 plus apps/api:3.0) as a delta against it: with a contents file, its tree below
    layover/delta, carrying only what release 1 lacks (manifests included)."""
    built = build(tmp)
    sb = built.storage
    refs = f"apps/web:1.0\napps/api:2.0\ntools/cli@{built.digests['tools/cli@']}\n"
    first = contents_build(sb.layout, parse_text(refs), list_source="r1", list_commit=None)
    v3 = sb.image("apps/api", [built.shared, b"api version 3"], salt="v3")
    sb.tag("apps/api", "3.0", v3)
    second = contents_build(
        sb.layout, parse_text(refs + "apps/api:3.0\n"), list_source="r2", list_commit=None
    )
    left_out = set(second.blob_sizes) & set(first.blob_sizes)
    contents = assemble(
        second.images,
        list_source="r2",
        list_commit=None,
        sizes={b.digest: b.size for b in second.blobs},
        delta=Delta(
            base=Base(sha256="ab" * 32, release="release-1.list"),
            assumed=tuple(
                AssumedBlob(digest=f"sha256:{h}", size=second.blob_sizes[h]) for h in sorted(left_out)
            ),
        ),
    )
    members = [ListedMember(Entry(d, Kind.DIR)) for d in ("layover", contents.storage_root)]
    for dirpath, _, filenames in os.walk(sb.root / "docker"):
        rel = Path(dirpath).relative_to(sb.root).as_posix()
        if any(h in rel for h in left_out):
            continue
        members.append(ListedMember(Entry(f"{contents.storage_root}/{rel}", Kind.DIR)))
        for f in filenames:
            path = Path(dirpath) / f
            members.append(
                ListedMember(
                    Entry(f"{contents.storage_root}/{rel}/{f}", Kind.FILE, path.stat().st_size), path
                )
            )
    out = tmp / "release-2.delta.tar"
    write_tarball(ListedTree(tuple(members)), out, first=[MemoryFile(CONTENTS_MEMBER, contents.to_bytes())])
    return built, out, contents, left_out


def test_a_delta_pushes_onto_its_base_sending_only_what_it_carries(tmp_path):
    built, delta, contents, left_out = delta_case(tmp_path)
    target = FakeTarget()
    opts = Options(Destination.parse("registry.example.com/mirror"), wait_max=0.01)
    with open_package(built.tar) as pkg:
        push(pkg, target, opts)  # the base, as the customer pushed it before
    uploaded_before = dict(target.uploads)
    with open_package(delta) as pkg:
        assert pkg.contents == contents and pkg.root == "layover/delta"
        report = push(pkg, target, opts)
    new = {k: v for k, v in target.uploads.items() if k not in uploaded_before}
    carried = set(contents.blob_sizes) - left_out
    manifests = {d[7:] for i in contents.images for d in i.manifests}
    assert {d.hex for d in new} == carried - manifests and set(new.values()) == {1}
    assert target.tags["mirror/apps/api"]["3.0"] == Digest.parse(contents.images[1].digest)
    assert {i.image: i.action for i in report.images}["apps/api:3.0"] == "push"


def test_a_delta_without_its_base_names_what_is_missing_and_writes_nothing(tmp_path):
    _, delta, _, left_out = delta_case(tmp_path)
    target = FakeTarget()
    with open_package(delta) as pkg, pytest.raises(PackageError) as e:
        push(pkg, target, Options(Destination.parse("registry.example.com/mirror"), wait_max=0.01))
    text = str(e.value)
    assert f"{len(left_out)} blob(s) it does not carry are not in registry.example.com/mirror" in text
    assert f"push its base package (release-1.list, sha256 {'ab' * 32}) there first" in text
    assert "Nothing was pushed" in text and "\n" not in text
    assert target.writes() == []


# --- the tar index: hostile and damaged tarballs -----------------------------------------------
def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def test_members_are_read_by_byte_range(tmp_path):
    big = bytes(range(256)) * 10_000
    path = _tar(tmp_path / "t.tar", [("a/small", b"hello"), ("a/big", big)])
    with TarIndex.open(path) as idx:
        assert idx.read("a/small", limit=10) == b"hello"
        assert b"".join(idx.reader("a/big")) == big
        assert idx.children("a") == ["big", "small"]
        with pytest.raises(PackageError, match="more than the 2"):
            idx.read("a/small", limit=2)


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("symlink", "not a regular file or directory"),
        ("hardlink", "not a regular file or directory"),
        ("dotdot", "has an empty, '.' or '..' part"),
        ("absolute", "is absolute"),
        ("duplicate", "listed twice"),
    ],
)
def test_hostile_members_are_refused(tmp_path, member, why):
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [("docker/registry/v2/x", b"x")]
    if member == "symlink":
        info = tarfile.TarInfo("docker/registry/v2/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        members.append(info)
    elif member == "hardlink":
        info = tarfile.TarInfo("docker/registry/v2/hard")
        info.type, info.linkname = tarfile.LNKTYPE, "docker/registry/v2/x"
        members.append(info)
    elif member == "dotdot":
        members.append(("docker/../../etc/x", b"x"))
    elif member == "absolute":
        members.append(("/etc/x", b"x"))
    else:
        members.append(("docker/registry/v2/x", b"y"))
    path = _tar(tmp_path / "t.tar", members)
    with pytest.raises(PackageError, match=why):
        TarIndex.open(path)


@pytest.mark.parametrize("cut", ["in a header", "in data", "before the end marker"])
def test_a_truncated_tarball_is_refused(tmp_path, cut):
    path = _tar(tmp_path / "t.tar", [("a", b"a" * 600), ("b", b"b" * 600)])
    with tarfile.open(path) as tf:
        b = tf.getmember("b")
    at = {
        "in a header": b.offset + 100,
        "in data": b.offset_data + 300,
        "before the end marker": b.offset_data + 1024,
    }
    data = path.read_bytes()
    path.write_bytes(data[: at[cut]])
    with pytest.raises(PackageError, match=r"truncated|end of data|not a readable"):
        TarIndex.open(path)


def test_a_compressed_tarball_is_refused(tmp_path):
    path = _tar(tmp_path / "t.tar", [("a", b"a")])
    gz = tmp_path / "t.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(PackageError, match="not a readable uncompressed tarball"):
        TarIndex.open(gz)


# --- the command line: refusals before any request ----------------------------------------------
def test_cli_refuses_bad_flags_and_a_damaged_package_before_any_request(tmp_path):
    from typer.testing import CliRunner

    from layover.cli import app

    built = build(tmp_path)
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    nobody = "127.0.0.1:9"  # nothing listens: a request would fail differently (exit 1)

    def run(*args: str):
        return runner.invoke(app, ["push", *args])

    r = run(str(built.tar), "--to", "https://registry.example.com")
    assert r.exit_code == 2 and "without a scheme" in r.output
    r = run(str(built.tar), "--to", nobody, "--sha256", "0" * 64, "--no-checksum")
    assert r.exit_code == 2 and "give one of them" in r.output
    r = run(str(tmp_path / "nope.tar"), "--to", nobody)
    assert r.exit_code == 2 and "no such package file" in r.output
    r = run(str(built.tar), "--to", nobody, "--sha256", "0" * 64)
    assert r.exit_code == 3 and r.output.startswith("layover: error: ") and "expected 0000" in r.output
    assert r.output.count("\n") == 1
