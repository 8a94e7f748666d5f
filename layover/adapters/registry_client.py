"""The one client for remote registries (Distribution API v2 / OCI distribution): TLS, auth, blobs,
manifests, listings and referrers, for any registry (Harbor, Nexus, Distribution, ...).

    connect     GET /v2/ once, https first; plain http only when TLS verification is off
                (skopeo's rule). 200 or 401 both mean "a registry": the 401's WWW-Authenticate
                challenge says how to authenticate every later request.
    auth        Basic: user:password on every request. Bearer: a token per set of scopes from the
                challenge's realm (GET with Basic credentials, or an OAuth2 refresh-token POST for
                identity tokens, or anonymous), cached until it expires. A 401 naming a new
                challenge or scope gets one retry with a fresh token.
    manifests   HEAD / GET (exact bytes, digest checked) / PUT   /v2/<name>/manifests/<ref>
    blobs       HEAD (size) / GET streamed, hashed while it streams   /v2/<name>/blobs/<digest>
                POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>   201: mounted
                POST .../uploads/ -> 202 Location; small: PUT Location?digest= with the bytes;
                large: PATCH Location (streamed; chunk_size splits it) then PUT ?digest=
    listings    /v2/_catalog, /v2/<name>/tags/list, following Link: <...>; rel="next"
    referrers   GET /v2/<name>/referrers/<digest> -> OCI index; None when the registry has no
                such API (404 without an index body: Distribution 2.8)

Errors (layover.errors): 401/403 -> AuthError naming the credentials' source (or where none
were found) and the side's authfile flag; certificate failures -> TLSError naming the cert-dir
and tls-verify flags; no answer, timeouts, 429, 5xx -> TransientHTTPError; manifest or
repository unknown -> ImageNotFoundError; anything else -> RegistryHTTPError. Secrets are never
in a message, a log line or a URL.

One httpx connection pool per client; every method is thread-safe.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple
from urllib.parse import urlencode

import httpx

from layover.auth import CredentialResolver, Credentials
from layover.errors import (
    AuthError,
    CopyError,
    CredentialsError,
    ImageNotFoundError,
    LayoverError,
    RegistryError,
    RegistryHTTPError,
    TLSError,
    TransientHTTPError,
)
from layover.manifest import MANIFEST_ACCEPT, OCI_INDEX
from layover.reference import Digest

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_MANIFEST_BYTES = 4 << 20  # containers/image's limit; a bigger "manifest" is a broken registry
MONOLITHIC_LIMIT = 8 << 20  # blobs up to this size go in one PUT from memory; larger ones stream
_PIECE = 1 << 20  # piece size when uploading bytes or a file
_TOKEN_MIN_SECONDS = 60  # a token without expires_in (or a shorter one) lives this long
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})

BlobPush = Literal["present", "mounted", "uploaded"]


@dataclass(frozen=True)
class SideFlags:
    """The command-line flags that configure one side, named in error messages."""

    authfile: str
    tls_off: str  # the switch that turns verification off, as the CLI spells it
    cert_dir: str


ANY_SIDE = SideFlags("--authfile", "--no-tls-verify", "--cert-dir")
SOURCE = SideFlags("--src-authfile", "--no-src-tls-verify", "--src-cert-dir")
DESTINATION = SideFlags("--dest-authfile", "--no-dest-tls-verify", "--dest-cert-dir")


@dataclass(frozen=True)
class Endpoint:
    """A registry: HOST[:PORT] and how to reach it.

    `cert_dir` is a containers-certs.d directory (*.crt CAs added to the system's, *.cert +
    *.key client pairs); None means skopeo's defaults: the first of
    ~/.config/containers/certs.d/HOST, /etc/containers/certs.d/HOST, /etc/docker/certs.d/HOST.
    `loopback_only` refuses every request (redirects, upload locations, token realms included)
    that would leave 127.0.0.1.
    """

    host: str
    tls_verify: bool = True
    cert_dir: Path | None = None
    loopback_only: bool = False
    flags: SideFlags = ANY_SIDE

    def __post_init__(self) -> None:
        if not self.host or "://" in self.host or "/" in self.host:
            raise RegistryError(
                f"registry {self.host!r}: give HOST[:PORT] without a scheme or path, "
                "e.g. harbor.example.com or 127.0.0.1:5000"
            )
        if self.loopback_only and _hostname(self.host) not in LOOPBACK:
            raise RegistryError(
                f"registry {self.host} is not on loopback; this client was told to talk to 127.0.0.1 only"
            )


class Challenge(NamedTuple):
    """One WWW-Authenticate challenge: lower-case scheme and its parameters."""

    scheme: str
    params: Mapping[str, str]


class FetchedManifest(NamedTuple):
    """A manifest as served: the exact bytes, the Content-Type and the digest of those bytes."""

    data: bytes
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class ManifestHead:
    digest: Digest | None  # Docker-Content-Digest; None when the registry sends none
    media_type: str
    size: int | None


@dataclass(frozen=True)
class Descriptor:
    """An entry of an OCI index (here: of a referrers answer)."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()


class _Token(NamedTuple):
    value: str
    expires: float  # time.monotonic()


# --- pure protocol pieces --------------------------------------------------------------------
def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="https://auth",service="reg",scope="repository:a:pull"` -> Challenge.

    One challenge per header value, as containers/image parses them; None if there is no scheme.
    """
    scheme, rest = _http_token(header.strip())
    if not scheme:
        return None
    params: dict[str, str] = {}
    rest = "," + rest.lstrip()
    while rest.startswith(","):
        key, rest = _http_token(rest[1:].lstrip())
        if not key or not rest.startswith("="):
            break
        value, rest = _token_or_quoted(rest[1:])
        if not value:
            break
        params[key.lower()] = value
        rest = rest.lstrip()
    return Challenge(scheme.lower(), params)


def challenge_scopes(challenge: Challenge) -> tuple[str, ...]:
    """The scopes a challenge names (space-separated in one `scope` parameter)."""
    return tuple(challenge.params.get("scope", "").split())


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


CATALOG_SCOPE = "registry:catalog:*"


def next_link(resp: httpx.Response) -> str | None:
    """The `Link: <url>; rel="next"` target, if any (relative or absolute)."""
    return resp.links.get("next", {}).get("url") or None


def default_cert_dir(host: str, home: Path | None = None) -> Path | None:
    """skopeo's per-host certificate directory for HOST[:PORT], if one exists."""
    home = Path(os.environ.get("HOME") or Path.home()) if home is None else home
    for base in (
        home / ".config/containers/certs.d",
        Path("/etc/containers/certs.d"),
        Path("/etc/docker/certs.d"),
    ):
        if (base / host).is_dir():
            return base / host
    return None


def tls_context(endpoint: Endpoint, cert_dir: Path | None) -> ssl.SSLContext:
    """System CAs plus cert_dir's *.crt; its *.cert/*.key client pairs; no verification when
    the endpoint turns it off (client certificates are still presented, as skopeo does)."""
    if cert_dir is None:
        return _system_context(endpoint.tls_verify)
    ctx = _new_context(endpoint.tls_verify)
    flag = endpoint.flags.cert_dir
    try:
        names = sorted(p.name for p in cert_dir.iterdir())
    except FileNotFoundError:
        raise TLSError(
            f"{flag} {cert_dir}: no such directory; create it with the registry's CA "
            "(NAME.crt) or fix the path"
        ) from None
    except OSError as e:
        raise TLSError(f"{flag} {cert_dir}: cannot list it ({e.strerror})") from None
    for name in names:
        path = cert_dir / name
        try:
            if name.endswith(".crt"):
                ctx.load_verify_locations(cafile=str(path))
            elif name.endswith(".cert"):
                key = name[: -len(".cert")] + ".key"
                if key not in names:
                    raise TLSError(
                        f"{flag} {cert_dir}: client certificate {name} has no {key} (a CA "
                        "certificate must be named *.crt)"
                    )
                ctx.load_cert_chain(str(path), str(cert_dir / key))
            elif name.endswith(".key") and name[: -len(".key")] + ".cert" not in names:
                raise TLSError(
                    f"{flag} {cert_dir}: key {name} has no client certificate {name[: -len('.key')]}.cert"
                )
        except (ssl.SSLError, OSError) as e:
            raise TLSError(f"{flag} {cert_dir}: cannot load {name} ({_reason(e)}); is it PEM?") from None
    return ctx


@functools.cache
def _system_context(verify: bool) -> ssl.SSLContext:
    """The system CAs' context, loaded once per process and shared by every client without a
    cert dir (a run makes several: loading the CAs costs ~20 ms each time). Nothing changes it
    after this; a context is safe to share between clients and threads."""
    return _new_context(verify)


def _new_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --- the client ------------------------------------------------------------------------------
class RegistryClient:
    """A client for one registry. Use as a context manager or call close().

    `credentials`: fixed Credentials, a CredentialResolver (per-repository lookup, as skopeo
    does it: layover.adapters.credential_helper.resolver), or None (anonymous).
    `transport` is a test seam (httpx.MockTransport); with it, TLS settings are not used.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials | CredentialResolver | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        monolithic_limit: int = MONOLITHIC_LIMIT,
        chunk_size: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self.monolithic_limit = monolithic_limit
        self.chunk_size = chunk_size
        self._cert_dir = endpoint.cert_dir or (default_cert_dir(endpoint.host) if transport is None else None)
        verify: ssl.SSLContext | bool = tls_context(endpoint, self._cert_dir) if transport is None else True
        hooks = {"request": [self._guard_loopback]} if endpoint.loopback_only else {}
        # trust_env=False: no proxy, netrc or CA bundle from the environment changes who we talk
        # to or which credentials are sent. follow_redirects: blob GETs may redirect to storage;
        # httpx drops Authorization when the redirect leaves the origin.
        self._http = httpx.Client(
            verify=verify,
            timeout=timeout,
            transport=transport,
            trust_env=False,
            follow_redirects=True,
            event_hooks=hooks,
        )
        self._ping_lock = threading.Lock()
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return self.endpoint.host

    # --- connection ------------------------------------------------------------------------
    def ping(self) -> str:
        """GET /v2/ (once per client): learn the scheme and the auth challenge. Returns the base
        URL. Raises TLSError, TransientHTTPError or RegistryHTTPError when there is no registry."""
        with self._ping_lock:
            if self._scheme is None:
                self._scheme, challenge = self._detect()
                with self._lock:
                    self._challenge = challenge
            return f"{self._scheme}://{self.host}"

    def answers(self, timeout: float = 10.0) -> bool:
        """Whether the registry answers GET /v2/ at all right now (any status: it is up), unlike
        ping(), which asks once per client. For telling a failing image from a source that is down."""
        try:
            base = self.ping()
            self._http.get(f"{base}/v2/", timeout=timeout)
        except (httpx.TransportError, LayoverError):
            return False
        return True

    def login(self) -> None:
        """GET /v2/ with the credentials (for Bearer, a token without a scope, as `docker login`
        asks for one): AuthError if the registry refuses them."""
        self._request("GET", "/v2/", None, [], what="GET /v2/")

    def _detect(self) -> tuple[str, Challenge | None]:
        schemes = ("https",) if self.endpoint.tls_verify else ("https", "http")
        failure: LayoverError | None = None
        for scheme in schemes:
            url = f"{scheme}://{self.host}/v2/"
            try:
                resp = self._http.get(url)
            except httpx.TransportError as e:
                # with TLS verification off a plain-HTTP registry fails https first: the last
                # attempt's failure is the one to report
                failure = self._transport_error("GET", httpx.URL(url), e)
                continue
            if resp.status_code in (200, 401):
                log.debug("registry %s speaks %s", self.host, scheme)
                return scheme, _challenge_of(resp)
            failure = self._status_error(resp, f"GET {url}", None, not_found=False)
        assert failure is not None
        raise failure

    # --- manifests -------------------------------------------------------------------------
    def head_manifest(self, repository: str, ref: str | Digest) -> ManifestHead:
        """What `ref` (tag or digest) resolves to, without the body."""
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{ref}",
            repository,
            [pull_scope(repository)],
            headers={"Accept": MANIFEST_ACCEPT},
            what=_at(repository, ref),
            not_found=True,
        )
        header = resp.headers.get("Docker-Content-Digest", "")
        length = resp.headers.get("Content-Length")
        return ManifestHead(
            Digest.parse(header) if Digest.is_valid(header) else None,
            _media_type(resp),
            int(length) if length and length.isdigit() else None,
        )

    def get_manifest(self, repository: str, ref: str | Digest) -> FetchedManifest:
        """The manifest's exact bytes; by digest they must hash to it, by tag they must match the
        registry's Docker-Content-Digest."""
        what = _at(repository, ref)
        resp = self._request(
            "GET",
            f"/v2/{repository}/manifests/{ref}",
            repository,
            [pull_scope(repository)],
            headers={"Accept": MANIFEST_ACCEPT},
            what=what,
            not_found=True,
            stream=True,
        )
        try:
            data = _read_capped(resp, MAX_MANIFEST_BYTES, f"manifest {what} at {self.host}")
        except httpx.TransportError as e:  # the body broke off (the head came whole): retryable
            raise self._transport_error("GET", resp.request.url, e) from None
        finally:
            resp.close()
        digest = Digest(hashlib.sha256(data).hexdigest())
        expected = str(ref) if Digest.is_valid(str(ref)) else resp.headers.get("Docker-Content-Digest", "")
        if Digest.is_valid(expected) and Digest.parse(expected) != digest:
            raise RegistryError(
                f"manifest {what} at {self.host}: the bytes served hash to {digest}, not "
                f"{expected}; the registry serves corrupt data (retry; report it if it stays)"
            )
        return FetchedManifest(data, _media_type(resp), digest)

    def put_manifest(self, repository: str, ref: str | Digest, data: bytes, media_type: str) -> Digest:
        """Store a manifest under a tag or its digest. Its blobs (an index's children) must be in
        the repository first."""
        digest = Digest(hashlib.sha256(data).hexdigest())
        resp = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{ref}",
            repository,
            [push_scope(repository)],
            headers={"Content-Type": media_type},
            content=data,
            ok=(200, 201),
            what=_at(repository, ref),
        )
        served = resp.headers.get("Docker-Content-Digest")
        if served and Digest.is_valid(served) and Digest.parse(served) != digest:
            raise RegistryError(
                f"PUT manifest {repository}:{ref} at {self.host}: the registry stored "
                f"{served} but the document hashes to {digest}"
            )
        return digest

    # --- blobs -----------------------------------------------------------------------------
    def blob_size(self, repository: str, digest: Digest, *, for_push: bool = False) -> int | None:
        """The blob's size if the repository has it, else None. `for_push` asks with the push
        scope, so that a check before an upload and the upload share one token."""
        scope = push_scope(repository) if for_push else pull_scope(repository)
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            repository,
            [scope],
            ok=(200, 404),
            what=f"{repository}@{digest}",
        )
        if resp.status_code == 404:
            return None
        length = resp.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

    def iter_blob(self, repository: str, digest: Digest) -> Iterator[bytes]:
        """The blob's bytes in pieces, hashed as they stream. The last step raises RegistryError
        if they do not hash to `digest`: treat the data as unverified until the iterator ends."""
        what = f"{repository}@{digest}"
        resp = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            repository,
            [pull_scope(repository)],
            what=what,
            stream=True,
        )
        hasher, size = hashlib.sha256(), 0
        try:
            # as the transport reads them (64 KiB): re-cut into 1 MiB pieces, a 66 MB layer
            # copied registry to registry took ~40% more CPU and ~60% more wall time (every
            # byte copied once more, the upload waiting while each piece filled)
            for piece in resp.iter_bytes():
                hasher.update(piece)
                size += len(piece)
                yield piece
        except httpx.TransportError as e:
            raise self._transport_error("GET", resp.request.url, e) from None
        finally:
            resp.close()
        if hasher.hexdigest() != digest.hex:
            raise RegistryError(
                f"blob {what} at {self.host}: {size} bytes served hash to "
                f"sha256:{hasher.hexdigest()}; the registry serves corrupt data"
            )

    def get_blob(self, repository: str, digest: Digest) -> bytes:
        """A small blob (a config) in memory, verified. Stream large ones with iter_blob."""
        return b"".join(self.iter_blob(repository, digest))

    def download_blob(self, repository: str, digest: Digest, out: BinaryIO) -> int:
        """Stream a blob into `out`; returns its size. `out` holds unverified data if this raises."""
        size = 0
        for piece in self.iter_blob(repository, digest):
            out.write(piece)
            size += len(piece)
        return size

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Link a blob `from_repository` already holds into `repository`, moving no bytes.
        False when the registry declined (the upload it opened instead is cancelled)."""
        location = self._start_upload(repository, digest, from_repository)
        if location is None:
            return True
        self._cancel_upload(repository, location)
        return False

    def upload_blob(
        self,
        repository: str,
        digest: Digest,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        size: int | None = None,
        mount_from: str | None = None,
        check_present: bool = True,
    ) -> BlobPush:
        """Put one blob into `repository`: "present" (already there), "mounted" (from
        `mount_from`, no bytes sent) or "uploaded". Bytes up to `monolithic_limit` go in one PUT;
        anything else (a file, an iterator of pieces) streams through PATCH and is never held
        whole in memory. The data is hashed on the way: a mismatch cancels the upload and raises
        CopyError before the registry commits anything."""
        # check_present=False: the caller knows it is absent (it read the registry's storage), so
        # the HEAD would only cost a round trip
        if check_present and self.blob_size(repository, digest, for_push=True) is not None:
            return "present"
        location = self._start_upload(repository, digest, mount_from if mount_from != repository else None)
        if location is None:
            return "mounted"
        what = f"{repository}@{digest}"
        upload = [location]  # each PATCH answers with the Location of the next step
        try:
            if (
                not isinstance(data, bytes)
                and hasattr(data, "read")
                and size is not None
                and size <= self.monolithic_limit
            ):
                data = data.read(size + 1)
            if isinstance(data, bytes) and len(data) <= self.monolithic_limit:
                got = hashlib.sha256(data).hexdigest()
                if got != digest.hex:
                    raise CopyError(
                        f"blob {what}: the data given hashes to sha256:{got}; refusing to "
                        f"upload it to {self.host}"
                    )
                self._request(
                    "PUT",
                    location,
                    repository,
                    [push_scope(repository)],
                    params={"digest": str(digest)},
                    content=data,
                    ok=(201,),
                    what=what,
                    headers={"Content-Type": "application/octet-stream"},
                )
                return "uploaded"
            self._patch_all(repository, upload, digest, _pieces(data), size)
            self._request(
                "PUT",
                upload[0],
                repository,
                [push_scope(repository)],
                params={"digest": str(digest)},
                ok=(201,),
                what=what,
                headers={"Content-Length": "0"},
            )
            return "uploaded"
        except BaseException:
            self._cancel_upload(repository, upload[0])
            raise

    def _start_upload(self, repository: str, digest: Digest, mount_from: str | None) -> str | None:
        """POST an upload (or a mount): None when mounted, else the upload's Location."""
        scopes = [push_scope(repository)]
        params: dict[str, str] = {}
        if mount_from:
            scopes.append(pull_scope(mount_from))
            params = {"mount": str(digest), "from": mount_from}
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            repository,
            scopes,
            params=params,
            ok=(201, 202),
            what=f"upload to {repository}",
            headers={"Content-Length": "0"},
        )
        if resp.status_code == 201 and mount_from:
            return None
        location = resp.headers.get("Location")
        if resp.status_code != 202 or not location:
            raise RegistryError(
                f"POST upload to {repository} at {self.host} answered {resp.status_code} "
                "without an upload Location; the registry does not follow the API"
            )
        return str(resp.request.url.join(location))

    def _patch_all(
        self, repository: str, upload: list[str], digest: Digest, pieces: Iterator[bytes], size: int | None
    ) -> None:
        """PATCH the data to the upload (one streamed request, or `chunk_size` pieces each),
        hashing on the way; upload[0] follows the Location each answer gives."""
        what = f"{repository}@{digest}"
        hasher, offset = hashlib.sha256(), 0
        pending = next(pieces, b"")

        def chunk() -> Iterator[bytes]:
            nonlocal pending, offset
            sent = 0
            while pending:
                piece, pending = pending, b""
                hasher.update(piece)
                offset += len(piece)
                sent += len(piece)
                yield piece
                pending = next(pieces, b"")
                if self.chunk_size is not None and sent >= self.chunk_size:
                    return

        while True:
            headers = {"Content-Type": "application/octet-stream"}
            if size is not None:
                n = size - offset if self.chunk_size is None else min(self.chunk_size, size - offset)
                headers["Content-Length"] = str(max(n, 0))
                if self.chunk_size is not None:
                    headers["Content-Range"] = f"{offset}-{offset + n - 1}"
            resp = self._request(
                "PATCH",
                upload[0],
                repository,
                [push_scope(repository)],
                content=chunk(),
                headers=headers,
                ok=(202,),
                what=what,
                replayable=False,
            )
            upload[0] = str(resp.request.url.join(resp.headers.get("Location", upload[0])))
            if not pending:
                break
        if hasher.hexdigest() != digest.hex:
            raise CopyError(
                f"blob {what}: the {offset} bytes given hash to sha256:{hasher.hexdigest()}; "
                f"refusing to commit the upload to {self.host}"
            )
        if size is not None and offset != size:
            raise CopyError(f"blob {what}: {offset} bytes given, {size} announced; upload cancelled")

    def _cancel_upload(self, repository: str, location: str) -> None:
        try:
            self._request(
                "DELETE",
                location,
                repository,
                [push_scope(repository)],
                ok=(200, 202, 204, 404),
                what=f"cancel upload to {repository}",
            )
        except (RegistryError, AuthError, TLSError, TransientHTTPError) as e:
            log.debug(
                "cancelling an upload to %s at %s failed (%s); the registry purges it later",
                repository,
                self.host,
                type(e).__name__,
            )

    # --- listings --------------------------------------------------------------------------
    def tags(self, repository: str, *, page_size: int | None = None) -> tuple[str, ...]:
        """Every tag of the repository, in the registry's order, following pagination."""
        return tuple(
            self._pages(
                f"/v2/{repository}/tags/list",
                "tags",
                repository,
                [pull_scope(repository)],
                page_size,
                what=repository,
            )
        )

    def catalog(self, *, page_size: int | None = None) -> tuple[str, ...]:
        """Every repository name (needs the registry's catalog permission)."""
        return tuple(
            self._pages("/v2/_catalog", "repositories", None, [CATALOG_SCOPE], page_size, what="_catalog")
        )

    def _pages(
        self,
        path: str,
        key: str,
        repository: str | None,
        scopes: list[str],
        page_size: int | None,
        *,
        what: str,
    ) -> Iterator[str]:
        url: str | None = path
        params = {"n": str(page_size)} if page_size else None
        seen: set[str] = set()
        while url is not None:
            resp = self._request("GET", url, repository, scopes, params=params, what=what, not_found=True)
            params = None  # the next link carries its own query
            values = _json(resp, f"{what} at {self.host}").get(key) or []
            yield from (str(v) for v in values)
            url = next_link(resp)
            if url is not None:
                url = str(resp.request.url.join(url))
                if url in seen:
                    raise RegistryError(f"{what} at {self.host}: pagination loops back to {url}")
                seen.add(url)

    # --- referrers -------------------------------------------------------------------------
    def referrers(
        self, repository: str, digest: Digest, *, artifact_type: str | None = None
    ) -> tuple[Descriptor, ...] | None:
        """Manifests whose `subject` is `digest` (signatures, SBOMs, ...), from the referrers
        API; None when the registry has no such API (then look for the fallback tag
        `sha256-<hex>`). A registry that did not apply the `artifact_type` filter (no
        OCI-Filters-Applied: artifactType) is filtered here, as the spec asks of clients."""
        url: str | None = f"/v2/{repository}/referrers/{digest}"
        params = {"artifactType": artifact_type} if artifact_type else None
        found: list[Descriptor] = []
        while url is not None:
            resp = self._request(
                "GET",
                url,
                repository,
                [pull_scope(repository)],
                params=params,
                headers={"Accept": OCI_INDEX},
                ok=(200, 404),
                what=f"referrers of {digest}",
            )
            params = None
            index = _index_body(resp)
            if resp.status_code == 404 and index is None:
                return None
            if index is None:
                raise RegistryError(
                    f"referrers of {repository}@{digest} at {self.host}: the answer is not an OCI index"
                )
            page = _descriptors(index, f"referrers of {repository}@{digest} at {self.host}")
            applied = resp.headers.get("OCI-Filters-Applied", "").replace(" ", "").split(",")
            if artifact_type and "artifactType" not in applied:
                page = [d for d in page if d.artifact_type == artifact_type]
            found += page
            url = next_link(resp)
            url = str(resp.request.url.join(url)) if url else None
        return tuple(found)

    # --- plumbing --------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        url: str,
        repository: str | None,
        scopes: list[str],
        *,
        what: str,
        ok: Collection[int] = (200,),
        not_found: bool = False,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        stream: bool = False,
        replayable: bool = True,
    ) -> httpx.Response:
        """Send with auth; retry once on a 401 that brings a new challenge or scope.

        `not_found`: a 404 means the image or repository is unknown (ImageNotFoundError)."""
        full = httpx.URL(self.ping()).join(url)
        if params:
            # merged, not passed as params=: httpx would replace the query, and an upload
            # Location's query (Distribution's _state) must survive
            full = full.copy_merge_params(params)
        scopes = list(scopes)
        for attempt in (1, 2):
            request = self._http.build_request(
                method,
                full,
                headers={**(headers or {}), **self._auth_header(repository, scopes)},
                content=content,
            )
            try:
                resp = self._http.send(request, stream=stream)
            except httpx.TransportError as e:
                raise self._transport_error(method, full, e) from None
            if resp.status_code in ok:
                return resp
            if stream:
                resp.read()
                resp.close()
            if (
                resp.status_code == 401
                and attempt == 1
                and replayable
                and self._learn(resp, repository, scopes)
            ):
                continue
            raise self._status_error(resp, what, repository, not_found=not_found)
        raise AssertionError("unreachable")

    def _learn(self, resp: httpx.Response, repository: str | None, scopes: list[str]) -> bool:
        """Take in a 401's challenge; True if a retry could now succeed."""
        challenge = _challenge_of(resp)
        if challenge is None:
            return False
        stale = self._token_key(repository, challenge, scopes)
        with self._lock:
            previous = self._challenge
            self._challenge = challenge
            # a new scope, or a token the registry no longer takes: forget it and ask again
            self._tokens.pop(stale, None)
        new = [s for s in challenge_scopes(challenge) if s not in scopes]
        scopes.extend(new)
        if challenge.scheme == "bearer":
            return True
        return previous is None or previous.scheme != challenge.scheme

    def _creds(self, repository: str | None) -> Credentials | None:
        c = self._credentials
        if isinstance(c, CredentialResolver):
            return c.for_repository(self.host, repository)
        return c

    def _auth_header(self, repository: str | None, scopes: list[str]) -> dict[str, str]:
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return {}
        creds = self._creds(repository)
        if challenge.scheme == "basic":
            if creds is None or not (creds.username or creds.password):
                return {}
            pair = f"{creds.username}:{creds.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if challenge.scheme == "bearer":
            return {"Authorization": f"Bearer {self._bearer(challenge, repository, scopes, creds)}"}
        log.debug("registry %s: no handler for %s auth; trying without", self.host, challenge.scheme)
        return {}

    def _token_key(
        self, repository: str | None, challenge: Challenge, scopes: list[str]
    ) -> tuple[str, str, tuple[str, ...]]:
        creds = self._creds(repository)
        who = creds.source if creds is not None else ""
        return who, challenge.params.get("realm", ""), tuple(sorted(set(scopes)))

    def _bearer(
        self, challenge: Challenge, repository: str | None, scopes: list[str], creds: Credentials | None
    ) -> str:
        key = self._token_key(repository, challenge, scopes)
        with self._lock:
            token = self._tokens.get(key)
        if token is not None and token.expires > time.monotonic():
            return token.value
        token = self._fetch_http_token(challenge, repository, scopes, creds)
        with self._lock:
            self._tokens[key] = token
        return token.value

    def _fetch_http_token(
        self, challenge: Challenge, repository: str | None, scopes: list[str], creds: Credentials | None
    ) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(
                f"registry {self.host} asks for a Bearer token but names no realm; it is misconfigured"
            )
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query += [("scope", s) for s in sorted(set(scopes))]
        started = time.monotonic()
        try:
            if creds is not None and creds.identity_token:
                # OAuth2 refresh-token grant, as containers/image sends it (scope may repeat)
                form = [
                    *query,
                    ("grant_type", "refresh_token"),
                    ("refresh_token", creds.identity_token),
                    ("client_id", "layover"),
                ]
                resp = self._http.post(
                    realm,
                    content=urlencode(form).encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            else:
                auth = None
                if creds is not None and creds.username:
                    query.insert(0, ("account", creds.username))
                    if creds.password:
                        auth = (creds.username, creds.password)
                resp = self._http.get(realm, params=tuple(query), auth=auth)
        except httpx.TransportError as e:
            raise self._transport_error("GET", httpx.URL(realm), e) from None
        if resp.status_code in (401, 403):
            raise self._auth_error(resp, f"token for {' '.join(scopes) or 'registry'}", repository)
        if resp.status_code != 200:
            raise self._status_error(
                resp, f"token from {httpx.URL(realm).copy_with(query=None)}", repository, not_found=False
            )
        body = _json(resp, f"token from {httpx.URL(realm).copy_with(query=None)}")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise RegistryError(
                f"token server {httpx.URL(realm).copy_with(query=None)} for {self.host} answered "
                "without a token"
            )
        lifetime = body.get("expires_in")
        seconds = (
            lifetime if isinstance(lifetime, int) and lifetime > _TOKEN_MIN_SECONDS else _TOKEN_MIN_SECONDS
        )
        # Renew a little early so a token does not expire between check and use.
        return _Token(value, started + seconds * 0.9)

    def _guard_loopback(self, request: httpx.Request) -> None:
        if request.url.host not in LOOPBACK:
            raise RegistryError(
                f"{request.method} {request.url.copy_with(query=None)}: not on loopback; this "
                f"client for {self.host} only talks to 127.0.0.1"
            )

    # --- errors ----------------------------------------------------------------------------
    def _transport_error(
        self, method: str, url: httpx.URL, e: httpx.TransportError
    ) -> TLSError | RegistryError:
        where = url.copy_with(query=None)
        cause = _ssl_cause(e)
        if cause is not None:
            return self._tls_error(where, cause)
        kind = "timed out" if isinstance(e, httpx.TimeoutException) else f"{type(e).__name__}: {_reason(e)}"
        return TransientHTTPError(
            method, str(where), 0, (), kind, f"is {self.host} up and reachable? retrying may help"
        )

    def _tls_error(self, url: httpx.URL, e: ssl.SSLError) -> TLSError:
        flags = self.endpoint.flags
        trusted = f"the system CAs and {self._cert_dir}" if self._cert_dir else "the system CAs"
        if isinstance(e, ssl.SSLCertVerificationError):
            what = f"its certificate did not verify against {trusted} ({e.verify_message or _reason(e)})"
        else:
            what = f"the TLS handshake failed ({_reason(e)}; a plain-HTTP registry fails so)"
        return TLSError(
            f"{url}: {what}; put the registry's CA in a directory as NAME.crt and pass "
            f"{flags.cert_dir} DIR, or, for a registry you trust, {flags.tls_off}"
        )

    def _status_error(
        self, resp: httpx.Response, what: str, repository: str | None, *, not_found: bool
    ) -> RegistryError | AuthError | ImageNotFoundError:
        status = resp.status_code
        if status in (401, 403):
            return self._auth_error(resp, what, repository)
        codes, detail = _error_body(resp)
        url = str(resp.request.url.copy_with(query=None))
        if status == 404 and not_found and (set(codes) & _NOT_FOUND_CODES or not codes):
            return ImageNotFoundError(
                f"{self.host}/{what}: not found ({'/'.join(codes) or '404'})",
                hint="the source registry has no such image: check the reference in images.list "
                f"(and that {self.endpoint.flags.authfile}'s credentials may see it)",
            )
        if status == 429 or status >= 500:
            return TransientHTTPError(resp.request.method, url, status, codes, detail, "retrying may help")
        return RegistryHTTPError(resp.request.method, url, status, codes, detail, "")

    def _auth_error(self, resp: httpx.Response, what: str, repository: str | None) -> AuthError:
        codes, _ = _error_body(resp)
        status = f"{resp.status_code}{' ' + '/'.join(codes) if codes else ''}"
        flag = self.endpoint.flags.authfile
        target = f"{self.host}/{repository}" if repository else self.host
        try:
            creds = self._creds(repository)
        except CredentialsError:  # raised to the caller already, by the request that got here
            creds = None
        if creds is not None:
            if resp.status_code == 403:
                return AuthError(
                    f"{what}: {self.host} denied access ({status}) to the credentials from "
                    f"{creds.source}: they lack permission on {target}; use credentials that "
                    f"have it ({flag})"
                )
            return AuthError(
                f"{what}: {self.host} refused the credentials from {creds.source} ({status}); "
                f"fix them, or point {flag} at the right file"
            )
        c = self._credentials
        looked = c.describe() if isinstance(c, CredentialResolver) else "none were given"
        return AuthError(
            f"{what}: {self.host} demands credentials ({status}) and none were found for "
            f"{target} (looked in: {looked}); log in or pass {flag} FILE"
        )


# --- helpers ---------------------------------------------------------------------------------
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _http_token(s: str) -> tuple[str, str]:
    i = 0
    while i < len(s) and s[i] in _TOKEN_CHARS:
        i += 1
    return s[:i], s[i:]


def _token_or_quoted(s: str) -> tuple[str, str]:
    if not s.startswith('"'):
        return _http_token(s)
    out: list[str] = []
    i = 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return "".join(out), s[i + 1 :]
        if c == "\\" and i + 1 < len(s):
            i += 1
            c = s[i]
        out.append(c)
        i += 1
    return "", ""  # unterminated


def _challenge_of(resp: httpx.Response) -> Challenge | None:
    for header in resp.headers.get_list("WWW-Authenticate"):
        challenge = parse_challenge(header)
        if challenge is not None:
            return challenge
    return None


def _at(repository: str, ref: str | Digest) -> str:
    return f"{repository}@{ref}" if Digest.is_valid(str(ref)) else f"{repository}:{ref}"


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _media_type(resp: httpx.Response) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip()


def _read_capped(resp: httpx.Response, limit: int, what: str) -> bytes:
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what}: {length} bytes, over the {limit >> 20} MiB a manifest may have")
    data = bytearray()
    for piece in resp.iter_bytes():
        data += piece
        if len(data) > limit:
            raise RegistryError(f"{what}: over the {limit >> 20} MiB a manifest may have")
    return bytes(data)


def _pieces(data: bytes | BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(data, bytes):
        for i in range(0, len(data), _PIECE):
            yield data[i : i + _PIECE]
    elif hasattr(data, "read"):
        while piece := data.read(_PIECE):
            yield piece
    else:
        yield from data


def _json(resp: httpx.Response, what: str) -> dict:
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: the answer is not a JSON object")
    return doc


def _index_body(resp: httpx.Response) -> dict | None:
    try:
        doc = json.loads(resp.content)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
        return doc
    return None


def _descriptors(index: dict, where: str) -> list[Descriptor]:
    out = []
    for m in index["manifests"]:
        if not isinstance(m, dict) or not Digest.is_valid(str(m.get("digest", ""))):
            raise RegistryError(f"{where}: an entry has no valid digest")
        annotations = m.get("annotations")
        size = m.get("size", 0)
        if not isinstance(size, int) or size < 0:
            raise RegistryError(f"{where}: an entry has no valid size")
        out.append(
            Descriptor(
                str(m.get("mediaType", "")),
                Digest.parse(m["digest"]),
                size,
                m.get("artifactType") if isinstance(m.get("artifactType"), str) else None,
                tuple(sorted((str(k), str(v)) for k, v in annotations.items()))
                if isinstance(annotations, dict)
                else (),
            )
        )
    return out


def _error_body(resp: httpx.Response) -> tuple[tuple[str, ...], str]:
    """Distribution error codes and messages from an error response (if JSON)."""
    try:
        errors = resp.json().get("errors") or []
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return (), ""
    if not isinstance(errors, list):
        return (), ""
    codes = tuple(str(e.get("code", "")) for e in errors if isinstance(e, dict))
    messages = [str(e.get("message", "")) for e in errors if isinstance(e, dict) and e.get("message")]
    return codes, "; ".join(messages)[:200]


def _ssl_cause(e: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _reason(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e).strip() or type(e).__name__
    return text.splitlines()[0][:160]
