"""The independent verifier (layover.testing.attached) run over what discovery found."""

from __future__ import annotations

import functools

from layover.adapters.registry_api import RegistryAPI
from layover.attached import AttachedArtifact, AttachmentKind, ImageAttachments
from layover.testing.attached import VerifiedSignature, verify_attestation, verify_cosign_signature


def verify_found(
    public_key_pem: bytes, api: RegistryAPI, found: ImageAttachments
) -> list[tuple[AttachedArtifact, tuple[VerifiedSignature, ...]]]:
    """Every signature and attestation in `found`, verified against its subject's manifest as
    `api` serves it (VerifyError on the first that fails); other kinds are passed over."""
    out = []
    for a in found.artifacts:
        if a.kind not in (AttachmentKind.SIGNATURE, AttachmentKind.ATTESTATION):
            continue
        verify = verify_cosign_signature if a.kind is AttachmentKind.SIGNATURE else verify_attestation
        result = verify(
            public_key_pem,
            api.manifest(found.repository, a.digest).data,
            functools.partial(api.get_blob, found.repository),
            api.manifest(found.repository, a.subject).data,
        )
        out.append((a, result))
    return out
