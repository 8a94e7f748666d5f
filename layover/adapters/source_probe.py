"""Ask the source registry which manifest digest a tag has now, without a process per image.

Archive sync uses the answer to skip images the archive already holds whole (most of them, in an
incremental release). The probe is only an optimisation: whenever it cannot tell (no
Docker-Content-Digest header, a refused login, a certificate problem, any error) it answers
None and the real `skopeo copy` runs, and fails, if it must, with skopeo's own message.

It finds credentials exactly where that skopeo copy will (layover.auth: --src-authfile, else
REGISTRY_AUTH_FILE, else the default files, credential helpers): a probe that looked elsewhere
saw 401s and made every incremental release copy every image again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from layover.adapters.credential_helper import resolver
from layover.adapters.registry_client import SOURCE, Endpoint, RegistryClient
from layover.errors import LayoverError
from layover.reference import Digest, ImageRef

log = logging.getLogger(__name__)


class SourceProbe:
    """HEAD manifests on one source registry; thread-safe, one connection pool."""

    def __init__(
        self,
        host: str,
        *,
        tls_verify: bool = True,
        authfile: Path | None = None,
        cert_dir: Path | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.host = host
        self.tls_verify = tls_verify
        self._client: RegistryClient | None = None
        try:
            self._client = RegistryClient(
                Endpoint(host, tls_verify=tls_verify, cert_dir=cert_dir, flags=SOURCE),
                resolver(authfile, SOURCE.authfile),
                timeout=timeout,
                transport=transport,  # a test seam
            )
        except LayoverError as e:  # a bad host or registries.conf: skopeo will say it properly
            log.debug("probe %s disabled: %s", host, e)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def digest(self, ref: ImageRef) -> Digest | None:
        if ref.tag is None:
            return ref.digest
        if self._client is None:
            return None
        try:
            return self._client.head_manifest(ref.repository, ref.tag).digest
        except Exception as e:  # noqa: BLE001 - any doubt means "copy for real"
            log.debug("probe %s/%s: %s: %s; copying with skopeo", self.host, ref, type(e).__name__, e)
            return None
