"""A small client for the Distribution HTTP API v2, for registries on loopback only.

The protocol verbs only: blobs, manifests, catalog, tags, referrers (layover.testing.push
builds image pushes on them). Plain HTTP, no auth: every registry Layover starts listens on
127.0.0.1, and this client refuses any other host so that no test can send a byte off the machine.

    push a blob      HEAD /v2/<name>/blobs/<digest>            200: already there, skip
                     POST /v2/<name>/blobs/uploads/?mount=&from=   201: mounted from a sibling
                     POST /v2/<name>/blobs/uploads/            202 + Location
                     PUT  <Location>&digest=<digest>           201 (monolithic upload)
    push a manifest  PUT  /v2/<name>/manifests/<tag|digest>    201, Content-Type = its media type
    read             GET  /v2/_catalog, /v2/<name>/tags/list, /v2/<name>/manifests/<ref>,
                     HEAD/GET /v2/<name>/blobs/<digest>
    referrers        GET  /v2/<name>/referrers/<digest>         404: no referrers API (Distribution
                                                                2.8 and 3.x); 200: an OCI index
    delete           DELETE /v2/<name>/manifests/<digest>, /v2/<name>/blobs/<digest>
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import Iterable
from typing import NamedTuple

import httpx
import tenacity

from layover.errors import RegistryError, RegistryHTTPError
from layover.manifest import MANIFEST_ACCEPT, OCI_INDEX, Descriptor, parse_descriptors
from layover.reference import Digest

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class FetchedManifest(NamedTuple):
    """A manifest as served: the exact bytes, the Content-Type and the digest of those bytes."""

    data: bytes
    media_type: str
    digest: Digest


def _sha256(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def _check_loopback(url: httpx.URL, what: str) -> None:
    if url.host not in _LOOPBACK:
        raise RegistryError(
            f"{what} {url} is not on loopback; this client only talks to registries on 127.0.0.1 "
            "(start the registry with REGISTRY_HTTP_ADDR=127.0.0.1:<port>)"
        )


@functools.cache
def _redirect_context() -> ssl.SSLContext:
    """httpx's default (certifi) context, for a blob GET redirected to https storage; built once
    per process and shared (loading the CAs costs ~20 ms a client)."""
    return httpx.create_ssl_context()


class RegistryAPI:
    """Distribution API v2 client for one registry at `host` ("127.0.0.1:PORT", plain HTTP).

    `transport` is a test seam (httpx.MockTransport). Use as a context manager or call close().
    """

    def __init__(
        self, host: str, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        if "://" in host:
            raise RegistryError(f"registry {host!r}: give HOST:PORT without a scheme, e.g. 127.0.0.1:5000")
        self.host = host
        self.base = httpx.URL(f"http://{host}")
        _check_loopback(self.base, "registry")
        # follow_redirects: storage drivers other than filesystem redirect blob GETs.
        self._http = httpx.Client(
            base_url=self.base,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
            trust_env=False,
            verify=_redirect_context(),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------
    def _request(
        self, method: str, url: str | httpx.URL, *, ok: Iterable[int], hint: str = "", **kwargs: object
    ) -> httpx.Response:
        try:
            resp = self._http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as e:
            raise RegistryError(
                f"{method} {self.base.join(url)}: cannot reach the registry ({type(e).__name__}: {e}); "
                "is it running and listening on that port? (RegistryAPI.wait_ready waits for it)"
            ) from e
        if resp.status_code not in set(ok):
            codes, detail = _error_body(resp)
            raise RegistryHTTPError(method, str(resp.request.url), resp.status_code, codes, detail, hint)
        return resp

    def _path(self, repository: str, kind: str, ref: str | Digest) -> str:
        return f"/v2/{repository}/{kind}/{ref}"

    # --- readiness -----------------------------------------------------------------------
    def ping(self) -> bool:
        """True if GET /v2/ answers 200."""
        try:
            return self._http.get("/v2/").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until GET /v2/ answers 200; RegistryError after `timeout` seconds."""
        try:
            tenacity.Retrying(
                stop=tenacity.stop_after_delay(timeout),
                wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
                retry=tenacity.retry_if_result(lambda ok: not ok),
            )(self.ping)
        except tenacity.RetryError:
            raise RegistryError(
                f"registry at {self.base} did not answer GET /v2/ with 200 within {timeout:g}s; "
                "check that it started (container or process logs) and listens on that port"
            ) from None

    # --- blobs ---------------------------------------------------------------------------
    def blob_exists(self, repository: str, digest: Digest) -> bool:
        resp = self._request("HEAD", self._path(repository, "blobs", digest), ok=(200, 404))
        return resp.status_code == 200

    def get_blob(self, repository: str, digest: Digest) -> bytes:
        """The blob's bytes, verified against `digest` (a stale registry cache serves truncated data)."""
        resp = self._request(
            "GET",
            self._path(repository, "blobs", digest),
            ok=(200,),
            hint=f"is {digest} linked in {repository}?",
        )
        got = _sha256(resp.content)
        if got != digest:
            raise RegistryError(
                f"GET blob {digest} from {repository} at {self.base} returned {len(resp.content)} bytes "
                f"with digest {got}; the registry serves corrupt data (a stale blob-descriptor cache "
                "after deleting under a running registry does this): restart it"
            )
        return resp.content

    def push_blob(
        self, repository: str, digest: Digest, data: bytes, *, mount_from: str | None = None
    ) -> str:
        """Put one blob into `repository`. Returns how: "present" (HEAD 200, nothing sent),
        "mounted" (cross-repository mount from `mount_from`, no bytes sent) or "uploaded"
        (monolithic POST + PUT)."""
        if _sha256(data) != digest:
            raise RegistryError(f"refusing to push blob {digest}: its data hashes to {_sha256(data)}")
        if self.blob_exists(repository, digest):
            return "present"
        if mount_from is not None and mount_from != repository:
            # 201 = linked from the other repo; 202 = the registry declined and opened an upload.
            start = self._request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                ok=(201, 202),
                params={"mount": str(digest), "from": mount_from},
                hint="is the registry read-only?",
            )
            if start.status_code == 201:
                return "mounted"
        else:
            start = self._request(
                "POST", f"/v2/{repository}/blobs/uploads/", ok=(202,), hint="is the registry read-only?"
            )
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(f"POST upload for {repository} at {self.base} returned no Location header")
        # Location is absolute in 2.8 and carries _state; resolve relative ones and keep the query.
        url = self.base.join(location)
        _check_loopback(url, "upload Location")
        url = url.copy_merge_params({"digest": str(digest)})
        self._request(
            "PUT",
            url,
            ok=(201,),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            hint=f"uploading {len(data)} bytes to {repository}",
        )
        return "uploaded"

    def delete_blob(self, repository: str, digest: Digest) -> None:
        """Needs storage.delete.enabled; removes the repo's link, not the data (that is GC's job)."""
        self._request(
            "DELETE",
            self._path(repository, "blobs", digest),
            ok=(202,),
            hint="deletes need storage.delete.enabled: true",
        )

    # --- manifests -----------------------------------------------------------------------
    def put_manifest(self, repository: str, ref: str | Digest, data: bytes, media_type: str) -> Digest:
        resp = self._request(
            "PUT",
            self._path(repository, "manifests", ref),
            ok=(201,),
            content=data,
            headers={"Content-Type": media_type},
            hint="its blobs (or an index's child manifests) must be in this repository first",
        )
        expected = _sha256(data)
        served = resp.headers.get("Docker-Content-Digest")
        if served is not None and served != str(expected):
            raise RegistryError(
                f"PUT manifest {repository}:{ref} stored digest {served} but the document hashes to {expected}"
            )
        return expected

    def manifest(self, repository: str, ref: str | Digest) -> FetchedManifest:
        """GET a manifest by tag or digest: exact bytes, media type and their digest."""
        resp = self._request(
            "GET", self._path(repository, "manifests", ref), ok=(200,), headers={"Accept": MANIFEST_ACCEPT}
        )
        digest = _sha256(resp.content)
        if isinstance(ref, Digest) and digest != ref:
            raise RegistryError(f"manifest {repository}@{ref} served bytes that hash to {digest}")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return FetchedManifest(resp.content, media_type, digest)

    def manifest_exists(self, repository: str, ref: str | Digest) -> bool:
        resp = self._request(
            "HEAD",
            self._path(repository, "manifests", ref),
            ok=(200, 404),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        return resp.status_code == 200

    def delete_manifest(self, repository: str, digest: Digest) -> None:
        """Delete a manifest revision by digest (the registry refuses deletes by tag)."""
        self._request(
            "DELETE",
            self._path(repository, "manifests", digest),
            ok=(202,),
            hint="deletes need storage.delete.enabled: true",
        )

    def referrers(self, repository: str, digest: Digest) -> tuple[Descriptor, ...] | None:
        """Descriptors of every manifest whose `subject` is `digest` (OCI distribution-spec 1.1),
        following `Link: rel=next` pages; None when the registry has no referrers API (404).

        A registry with the API never answers 404 here (the spec forbids it), so 404 means the
        client must fall back to the referrers tag schema.
        """
        url: str | httpx.URL = self._path(repository, "referrers", digest)
        found: list[Descriptor] = []
        while True:
            resp = self._request("GET", url, ok=(200, 404), headers={"Accept": OCI_INDEX})
            if resp.status_code == 404:
                return None
            where = f"referrers of {repository}@{digest} at {self.base}"
            found.extend(parse_descriptors(resp.content, where))
            nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                return tuple(found)
            url = self.base.join(nxt)
            _check_loopback(url, "referrers next page")

    # --- listing -------------------------------------------------------------------------
    def catalog(self) -> tuple[str, ...]:
        """Every repository name, following pagination."""
        names: list[str] = []
        url: str | httpx.URL = "/v2/_catalog?n=1000"
        while True:
            resp = self._request("GET", url, ok=(200,))
            names.extend(resp.json().get("repositories") or [])
            nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                return tuple(names)
            url = self.base.join(nxt)
            _check_loopback(url, "catalog next page")

    def tags(self, repository: str) -> tuple[str, ...]:
        """The repository's tags, sorted; () for a repository the registry does not know."""
        resp = self._request("GET", f"/v2/{repository}/tags/list", ok=(200, 404))
        if resp.status_code == 404:
            codes, _ = _error_body(resp)
            if "NAME_UNKNOWN" in codes:
                return ()
            raise RegistryHTTPError("GET", str(resp.request.url), 404, codes, "", "")
        return tuple(sorted(resp.json().get("tags") or []))


def _error_body(resp: httpx.Response) -> tuple[tuple[str, ...], str]:
    """Distribution error codes and the first message from an error response (if JSON)."""
    try:
        errors = resp.json().get("errors") or []
    except (ValueError, AttributeError):
        return (), resp.text[:200].strip()
    codes = tuple(str(e.get("code", "")) for e in errors if isinstance(e, dict))
    messages = [str(e.get("message", "")) for e in errors if isinstance(e, dict) and e.get("message")]
    return codes, "; ".join(messages)
