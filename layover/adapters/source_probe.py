"""Ask the source registry which manifest digest a tag has now, without a process per image.

Archive sync uses the answer to skip images the archive already holds whole (most of them, in an
incremental release). The probe is only an optimisation: whenever it cannot tell (no
Docker-Content-Digest header, an auth scheme it does not know, any error) it answers None and
the real `skopeo copy` runs.

Credentials come from a containers-auth.json (`auths.<host>.auth` = base64 "user:password") and
are used for Basic auth or to fetch a Bearer token; they are never logged.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from pathlib import Path

import httpx

from layover.manifest import MANIFEST_ACCEPT
from layover.reference import Digest, ImageRef

log = logging.getLogger(__name__)

_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def _credentials(authfile: Path | None, host: str) -> tuple[str, str] | None:
    if authfile is None:
        return None
    try:
        auths = json.loads(authfile.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    for key in (host, f"https://{host}", f"http://{host}"):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user, password
    return None


class SourceProbe:
    """HEAD manifests on one source registry; thread-safe, one connection pool."""

    def __init__(self, host: str, *, tls_verify: bool = True, authfile: Path | None = None,
                 timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self.host = host
        self.tls_verify = tls_verify
        self._creds = _credentials(authfile, host)
        self._http = httpx.Client(verify=tls_verify, timeout=timeout, trust_env=False,
                                  transport=transport)  # transport: a test seam
        # Like skopeo: https first; plain http only when TLS verification is off.
        self._schemes = ["https"] if tls_verify else ["https", "http"]
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def digest(self, ref: ImageRef) -> Digest | None:
        if ref.tag is None:
            return ref.digest
        try:
            return self._head(ref)
        except Exception as e:  # noqa: BLE001 - any doubt means "copy for real"
            log.debug("probe %s/%s: %s; copying with skopeo", self.host, ref, type(e).__name__)
            return None

    def _head(self, ref: ImageRef) -> Digest | None:
        schemes = list(self._schemes)
        for i, scheme in enumerate(schemes):
            url = f"{scheme}://{self.host}/v2/{ref.repository}/manifests/{ref.tag}"
            try:
                resp = self._authorised_head(url, ref.repository)
            except httpx.TransportError:
                # Decide on this call's own list: parallel probes all try TLS first, and those
                # that fail after another one switched must still fall back, not give up.
                if i < len(schemes) - 1:
                    with self._lock:  # a plain-HTTP registry: stop trying TLS first
                        self._schemes = ["http"]
                    continue
                raise
            if resp.status_code != 200:
                return None
            header = resp.headers.get("Docker-Content-Digest", "")
            return Digest.parse(header) if Digest.is_valid(header) else None
        return None

    def _authorised_head(self, url: str, repository: str) -> httpx.Response:
        headers = {"Accept": MANIFEST_ACCEPT}
        resp = self._http.head(url, headers=headers)
        if resp.status_code != 401 or self._creds is None and "Bearer" not in resp.headers.get(
            "WWW-Authenticate", ""
        ):
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic" and self._creds is not None:
            return self._http.head(url, headers=headers, auth=self._creds)
        if scheme == "bearer":
            params = dict(_CHALLENGE.findall(challenge))
            realm = params.pop("realm", None)
            if not realm:
                return resp
            params.setdefault("scope", f"repository:{repository}:pull")
            token_resp = self._http.get(realm, params=params, auth=self._creds)
            if token_resp.status_code != 200:
                return resp
            body = token_resp.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                return resp
            return self._http.head(url, headers={**headers, "Authorization": f"Bearer {token}"})
        return resp
