"""copy_image's decisions on scripted registries (httpx.MockTransport): which blobs move, a read
retried where it failed, what an attempt reports it landed, schema 1 left to skopeo. The same
copier against real registries and skopeo: tests/integration/test_native_copy.py."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable

import httpx
import pytest

from layover.adapters.registry_client import Endpoint, RegistryClient
from layover.adapters.registry_copy import Landed, NeedsSkopeo, copy_image
from layover.errors import ImageNotFoundError, TransientCopyError
from layover.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST
from layover.reference import Digest


def sha(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
BASE, APP = b"base layer " * 100, b"app layer " * 100
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(CONFIG), "digest": str(sha(CONFIG))},
        "layers": [{"mediaType": DOCKER_LAYER, "size": len(b), "digest": str(sha(b))} for b in (BASE, APP)],
    }
).encode()


class Source:
    """A registry serving one image; `fail` maps a path fragment to how many times it 503s first."""

    def __init__(self, manifest: bytes = MANIFEST, fail: dict[str, int] | None = None) -> None:
        self.manifest = manifest
        self.fail = dict(fail or {})
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        for frag, n in self.fail.items():
            if frag in path and n > 0:
                self.fail[frag] = n - 1
                return httpx.Response(503, json={"errors": [{"code": "UNAVAILABLE"}]})
        if path == "/v2/":
            return httpx.Response(200)
        if "/manifests/" in path:
            if path.endswith("/missing"):
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            return httpx.Response(
                200,
                content=self.manifest,
                headers={"Content-Type": DOCKER_MANIFEST, "Docker-Content-Digest": str(sha(self.manifest))},
            )
        blobs = {str(sha(b)): b for b in (CONFIG, BASE, APP)}
        return httpx.Response(200, content=blobs[path.rsplit("/", 1)[1]])


class Archive:
    """The destination: a registry that stores what it is sent, and the Destination view of it."""

    def __init__(self, have: dict[Digest, str] | None = None) -> None:
        self.linked: dict[str, set[Digest]] = {}
        self.homes = dict(have or {})
        for d, repo in self.homes.items():
            self.linked.setdefault(repo, set()).add(d)
        self.manifests: list[str] = []
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, q = request.url.path, request.url.params
        self.requests.append(f"{request.method} {path}")
        repo = path.removeprefix("/v2/").split("/blobs/")[0].split("/manifests/")[0]
        if path == "/v2/":
            return httpx.Response(200)
        if request.method == "HEAD" and "/blobs/" in path:
            return httpx.Response(404)
        if request.method == "POST" and q.get("mount"):
            self.linked.setdefault(repo, set()).add(Digest.parse(q["mount"]))
            return httpx.Response(201)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/u1"})
        if request.method == "PUT" and "/uploads/" in path:
            self.linked.setdefault(repo, set()).add(Digest.parse(q["digest"]))
            return httpx.Response(201)
        if request.method == "PUT" and "/manifests/" in path:
            self.manifests.append(path)
            return httpx.Response(201, headers={"Docker-Content-Digest": str(sha(request.content))})
        raise AssertionError(f"unexpected {request.method} {path}")

    # Destination
    def has_blob(self, repository: str, digest: Digest) -> bool:
        return digest in self.linked.get(repository, set())

    def has_manifest(self, repository: str, digest: Digest) -> bool:
        return False

    def holder(self, digest: Digest) -> str | None:
        return self.homes.get(digest)

    def landed(self, repository: str, digest: Digest) -> None:
        self.homes.setdefault(digest, repository)

    def claim(self, digest: Digest) -> Callable[[], None] | None:
        return lambda: None


def copy(source: Source, archive: Archive, landed: Landed, tag: str = "1") -> Digest:
    with (
        RegistryClient(Endpoint("ci.test"), transport=httpx.MockTransport(source)) as src,
        RegistryClient(Endpoint("127.0.0.1:5000"), transport=httpx.MockTransport(archive)) as dst,
    ):
        return copy_image(src, dst, "apps/web", tag, None, archive, landed=landed, sleep=lambda s: None)


def test_uploads_what_is_missing_mounts_what_another_repository_holds():
    archive = Archive(have={sha(BASE): "apps/other"})
    landed = Landed()
    assert copy(Source(), archive, landed) == sha(MANIFEST)
    assert landed.mounted == [sha(BASE)]
    assert sorted(d for d, _ in landed.uploaded) == sorted([sha(CONFIG), sha(APP)])
    assert archive.manifests == ["/v2/apps/web/manifests/1"]
    again = Landed()
    copy(Source(), archive, again)
    assert again.blobs == 0 and len(again.present) == 3


def test_a_failed_read_is_retried_where_it_failed_not_from_the_start():
    source = Source(fail={str(sha(APP)): 2, "/manifests/": 1})
    landed = Landed()
    copy(source, Archive(), landed)
    assert landed.blobs == 3
    assert sum(str(sha(APP)) in r for r in source.requests) == 3  # two 503s, then the blob
    assert sum(str(sha(CONFIG)) in r for r in source.requests) == 1  # fetched once


def test_a_read_that_keeps_failing_fails_the_attempt_and_says_what_landed():
    source = Source(fail={str(sha(APP)): 100})
    landed = Landed()
    with pytest.raises(TransientCopyError, match="503"):
        copy(source, Archive(), landed)
    assert sum(str(sha(APP)) in r for r in source.requests) == 4
    assert {d for d, _ in landed.uploaded} == {sha(CONFIG), sha(BASE)}  # progress, for converge


def test_an_unknown_image_is_not_retried():
    source = Source()
    with pytest.raises(ImageNotFoundError):
        copy(source, Archive(), Landed(), tag="missing")
    assert sum("/manifests/" in r for r in source.requests) == 1


def test_schema_1_is_left_to_skopeo():
    schema1 = json.dumps(
        {"schemaVersion": 1, "name": "apps/web", "tag": "1", "fsLayers": [{"blobSum": str(sha(BASE))}]}
    ).encode()
    with pytest.raises(NeedsSkopeo):
        copy(Source(manifest=schema1), Archive(), Landed())


def test_the_blobs_of_one_image_are_copied_at_once_not_one_after_the_other():
    """Each layer's read waits until the other layer's read arrived too: copied one after the
    other, the first would wait for ever (here: the barrier's timeout, then a failed read)."""
    both = threading.Barrier(2, timeout=5)

    class Waiting(Source):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and any(str(sha(b)) in request.url.path for b in (BASE, APP)):
                both.wait()
            return super().__call__(request)

    landed = Landed()
    assert copy(Waiting(), Archive(), landed) == sha(MANIFEST)
    assert sorted(d for d, _ in landed.uploaded) == sorted([sha(CONFIG), sha(BASE), sha(APP)])
