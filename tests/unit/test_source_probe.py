"""The archive-sync probe: right digest, or None ("copy for real") whenever in doubt."""

import base64
import json

import httpx

from layover.adapters.source_probe import SourceProbe
from layover.reference import ImageRef

DIGEST = "sha256:" + "ab" * 32


def _auth(tmp_path, host="ci:5000", user="bot", password="s3cret"):
    f = tmp_path / "auth.json"
    f.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    return f


def test_anonymous_head_gives_the_digest():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        assert "manifest.list.v2+json" in req.headers["Accept"]
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    probe = SourceProbe("ci:5000", transport=httpx.MockTransport(handler))
    assert str(probe.digest(ImageRef.parse("lib/app:1"))) == DIGEST
    assert seen[0].method == "HEAD" and seen[0].url.path == "/v2/lib/app/manifests/1"
    assert seen[0].url.scheme == "https"


def test_bearer_token_flow_uses_the_authfile(tmp_path):
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/token":
            assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:s3cret").decode()
            assert req.url.params["scope"] == "repository:lib/app:pull"
            return httpx.Response(200, json={"token": "T"})
        if req.headers.get("Authorization") == "Bearer T":
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
        return httpx.Response(401, headers={
            "WWW-Authenticate": 'Bearer realm="https://ci:5000/token",service="ci"'})

    probe = SourceProbe("ci:5000", authfile=_auth(tmp_path), transport=httpx.MockTransport(handler))
    assert str(probe.digest(ImageRef.parse("lib/app:1"))) == DIGEST


def test_any_doubt_means_none():
    answers = iter([
        httpx.Response(200),  # no digest header
        httpx.Response(404),
        httpx.Response(200, headers={"Docker-Content-Digest": "sha256:short"}),
        httpx.Response(401, headers={"WWW-Authenticate": "Negotiate"}),
    ])
    probe = SourceProbe("ci:5000", transport=httpx.MockTransport(lambda req: next(answers)))
    ref = ImageRef.parse("a:1")
    assert [probe.digest(ref) for _ in range(4)] == [None, None, None, None]

    def boom(req):
        raise httpx.ConnectError("refused")

    assert SourceProbe("ci:5000", transport=httpx.MockTransport(boom)).digest(ref) is None


def test_plain_http_when_tls_verification_is_off():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.scheme == "https":
            raise httpx.ConnectError("not TLS")
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    probe = SourceProbe("127.0.0.1:5000", tls_verify=False, transport=httpx.MockTransport(handler))
    ref = ImageRef.parse("a:1")
    assert str(probe.digest(ref)) == DIGEST
    assert probe._schemes == ["http"]  # learned once, not retried per image


def test_parallel_probes_fall_back_after_another_switched_to_http():
    # 8 threads all start with TLS; those whose TLS attempt fails after one of them switched
    # the probe to plain HTTP must still fall back (they used to give up and force a copy).
    probe: SourceProbe

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.scheme == "https":
            probe._schemes = ["http"]  # another thread's switch, landing mid-request
            raise httpx.ConnectError("not TLS")
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    probe = SourceProbe("127.0.0.1:5000", tls_verify=False, transport=httpx.MockTransport(handler))
    assert str(probe.digest(ImageRef.parse("a:1"))) == DIGEST


def test_digest_pinned_refs_need_no_request():
    probe = SourceProbe("ci:5000", transport=httpx.MockTransport(lambda r: 1 / 0))
    assert str(probe.digest(ImageRef.parse(f"a@{DIGEST}"))) == DIGEST
