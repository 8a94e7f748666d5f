"""Push a Fixture into a registry with the Distribution HTTP API (127.0.0.1 only).

Bench-local on purpose: fixture layers are large files streamed from the blob cache, and a
blob already pushed to another repository is cross-mounted instead of uploaded again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.fixture import Blob, Fixture, FixtureImage
from layover.manifest import MANIFEST_ACCEPT
from layover.testing.images import SampleManifest


class Pusher:
    def __init__(self, host: str) -> None:
        if not host.startswith("127.0.0.1:"):
            raise ValueError(f"bench pushes only to 127.0.0.1 registries, not {host!r}")
        self.base = f"http://{host}/v2"
        self.client = httpx.Client(timeout=300)
        self._where: dict[str, str] = {}  # digest -> a repository that has it
        self.manifest_digests: set[str] = set()  # for get_blob_to

    def close(self) -> None:
        self.client.close()

    def push_fixture(self, fx: Fixture, jobs: int = 4) -> int:
        """Every image of both releases, `jobs` at a time (a shared blob pushed twice at once is
        merely uploaded twice; the registry keeps one)."""
        with ThreadPoolExecutor(max(1, jobs)) as ex:
            list(ex.map(self.push_image, fx.all_images()))
        return len(fx.all_images())

    def push_image(self, img: FixtureImage) -> None:
        repo = img.repository
        for blob in img.blobs:
            self._blob(repo, blob)
        for child in img.children:  # an index needs its children stored in the same repo
            self._manifest(repo, str(child.digest), child)
        self._manifest(repo, img.tag, img.manifest)

    def _blob(self, repo: str, blob: Blob) -> None:
        r = self.client.head(f"{self.base}/{repo}/blobs/{blob.digest}")
        if r.status_code == 200:
            return
        params = {}
        if blob.digest in self._where:
            params = {"mount": blob.digest, "from": self._where[blob.digest]}
        r = self.client.post(f"{self.base}/{repo}/blobs/uploads/", params=params)
        if r.status_code != 201:  # 202: mount refused or no mount asked, upload it
            _check(r, 202, f"start upload of {blob.digest} to {repo}")
            location = r.headers["Location"]
            if location.startswith("/"):
                location = self.base.removesuffix("/v2") + location
            # httpx `params=` would replace the upload URL's own query (_state): append instead
            sep = "&" if "?" in location else "?"
            with open(blob.path, "rb") as f:
                r = self.client.put(
                    f"{location}{sep}digest={blob.digest}",
                    content=f,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)},
                )
            _check(r, 201, f"upload {blob.digest} to {repo}")
        self._where.setdefault(blob.digest, repo)

    def _manifest(self, repo: str, ref: str, m: SampleManifest) -> None:
        r = self.client.put(
            f"{self.base}/{repo}/manifests/{ref}", content=m.data, headers={"Content-Type": m.media_type}
        )
        _check(r, 201, f"put manifest {repo}:{ref}")
        got = r.headers.get("Docker-Content-Digest")
        if got and got != str(m.digest):
            raise RuntimeError(f"registry stored {repo}:{ref} as {got}, expected {m.digest}")

    def get_blob_to(self, repo: str, digest: str, out) -> int:
        """Stream one blob into a file object (the floor measurement). Returns bytes."""
        n = 0
        # manifests are blobs on disk, but a repo serves them only under /manifests/
        kind = "manifests" if digest in self.manifest_digests else "blobs"
        headers = {"Accept": MANIFEST_ACCEPT}
        with self.client.stream("GET", f"{self.base}/{repo}/{kind}/{digest}", headers=headers) as r:
            _check(r, 200, f"get {digest} from {repo}")
            for chunk in r.iter_bytes(1 << 20):
                out.write(chunk)
                n += len(chunk)
        return n


def _check(r: httpx.Response, want: int, what: str) -> None:
    if r.status_code != want:
        body = r.read()[:300] if not r.is_stream_consumed else b""
        raise RuntimeError(f"{what}: HTTP {r.status_code} {body!r}; is the CI registry healthy?")
