"""RegistryAPI.referrers and RegistryAttachmentReader against scripted HTTP answers (httpx.MockTransport).

The real-registry side (Distribution 2.8: 404, no API) is tests/integration/test_attached_registry.py;
no registry with the referrers API runs here, so its 200 answers are scripted from the spec's example.
"""

from __future__ import annotations

import json

import httpx

from layover.adapters.attachment_reader import RegistryAttachmentReader
from layover.adapters.registry_api import RegistryAPI
from layover.manifest import OCI_INDEX, OCI_MANIFEST
from layover.reference import Digest

SUBJECT = Digest("a" * 64)
A, B = Digest("b" * 64), Digest("c" * 64)


def page(*digests: Digest) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": str(d),
                    "size": 10,
                    "artifactType": "application/spdx+json",
                    "annotations": {"k": "v"},
                }
                for d in digests
            ],
        }
    ).encode()


def api_answering(handler) -> RegistryAPI:
    return RegistryAPI("127.0.0.1:5000", transport=httpx.MockTransport(handler))


def test_referrers_follows_pages_and_keeps_descriptors():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.url.query.decode(), request.headers["accept"]))
        if request.url.query:
            return httpx.Response(200, content=page(B), headers={"Content-Type": OCI_INDEX})
        return httpx.Response(
            200,
            content=page(A),
            headers={"Content-Type": OCI_INDEX, "Link": f'</v2/repo/referrers/{SUBJECT}?last=x>; rel="next"'},
        )

    with api_answering(handler) as api:
        got = api.referrers("repo", SUBJECT)
    assert got is not None and [d.digest for d in got] == [A, B]
    assert (got[0].artifact_type, got[0].annotations, got[0].size) == (
        "application/spdx+json",
        (("k", "v"),),
        10,
    )
    assert seen == [
        (f"/v2/repo/referrers/{SUBJECT}", "", OCI_INDEX),
        (f"/v2/repo/referrers/{SUBJECT}", "last=x", OCI_INDEX),
    ]


def test_reader_probes_the_referrers_api_once_when_it_is_missing():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if "/referrers/" in request.url.path:
            return httpx.Response(404, text="404 page not found\n")  # what Distribution 2.8 answers
        unknown = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        return httpx.Response(404, json=unknown)

    with api_answering(handler) as api:
        reader = RegistryAttachmentReader(api)
        assert reader.referrers("repo", SUBJECT) is None and reader.referrers("repo", A) is None
        assert reader.manifest("repo", "sha256-x.sig") is None
    assert calls == [f"/v2/repo/referrers/{SUBJECT}", "/v2/repo/manifests/sha256-x.sig"]
    assert reader.has_referrers_api is False and reader.requests == {"referrers": 1, "manifest": 1}


def test_reader_keeps_asking_a_registry_that_has_the_api():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=page(), headers={"Content-Type": OCI_INDEX})

    with api_answering(handler) as api:
        reader = RegistryAttachmentReader(api)
        assert reader.referrers("repo", SUBJECT) == () and reader.referrers("repo", A) == ()
    assert reader.has_referrers_api is True and reader.requests == {"referrers": 2}
