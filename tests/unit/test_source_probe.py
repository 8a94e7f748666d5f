"""The archive-sync probe: right digest, or None ("copy for real") whenever in doubt."""

import base64
import json

import httpx
import pytest

from layover.adapters.source_probe import SourceProbe
from layover.reference import ImageRef

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no auth environment: the probe sees only what a test gives it."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    return h


def _auth(tmp_path, host="ci:5000", user="bot", password="s3cret"):
    f = tmp_path / "auth.json"
    f.write_text(
        json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}})
    )
    return f


def test_anonymous_head_gives_the_digest(home):
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path == "/v2/":
            return httpx.Response(200)
        assert "manifest.list.v2+json" in req.headers["Accept"]
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    probe = SourceProbe("ci:5000", transport=httpx.MockTransport(handler))
    assert str(probe.digest(ImageRef.parse("lib/app:1"))) == DIGEST
    assert str(probe.digest(ImageRef.parse("lib/app:2"))) == DIGEST
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", "/v2/"),
        ("HEAD", "/v2/lib/app/manifests/1"),
        ("HEAD", "/v2/lib/app/manifests/2"),
    ]
    assert {r.url.scheme for r in seen} == {"https"}
    assert all("Authorization" not in r.headers for r in seen)


def test_bearer_token_flow_uses_the_authfile(tmp_path, home):
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/token":
            assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:s3cret").decode()
            assert req.url.params["scope"] == "repository:lib/app:pull"
            return httpx.Response(200, json={"token": "T"})
        if req.headers.get("Authorization") == "Bearer T":
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://ci:5000/token",service="ci"'}
        )

    probe = SourceProbe("ci:5000", authfile=_auth(tmp_path), transport=httpx.MockTransport(handler))
    assert str(probe.digest(ImageRef.parse("lib/app:1"))) == DIGEST


def test_any_doubt_means_none(home):
    answers = {
        "1": httpx.Response(200),  # no digest header
        "2": httpx.Response(404),
        "3": httpx.Response(200, headers={"Docker-Content-Digest": "sha256:short"}),
        "4": httpx.Response(401, headers={"WWW-Authenticate": "Negotiate"}),
        "5": httpx.Response(500),
    }

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200) if req.url.path == "/v2/" else answers[req.url.path.rsplit("/", 1)[1]]

    probe = SourceProbe("ci:5000", transport=httpx.MockTransport(handler))
    assert [probe.digest(ImageRef.parse(f"a:{t}")) for t in answers] == [None] * len(answers)
    ref = ImageRef.parse("a:1")

    def boom(req):
        raise httpx.ConnectError("refused")

    assert SourceProbe("ci:5000", transport=httpx.MockTransport(boom)).digest(ref) is None


def test_plain_http_when_tls_verification_is_off(home):
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.url.scheme, req.url.path))
        if req.url.scheme == "https":
            raise httpx.ConnectError("not TLS")
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    probe = SourceProbe("127.0.0.1:5000", tls_verify=False, transport=httpx.MockTransport(handler))
    for tag in "123":
        assert str(probe.digest(ImageRef.parse(f"a:{tag}"))) == DIGEST
    # learned once by the first request, not retried per image
    assert seen == [("https", "/v2/"), ("http", "/v2/")] + [("http", f"/v2/a/manifests/{t}") for t in "123"]


def test_never_plain_http_when_tls_verification_is_on(home):
    schemes = []

    def handler(req: httpx.Request) -> httpx.Response:
        schemes.append(req.url.scheme)
        raise httpx.ConnectError("not TLS")

    probe = SourceProbe("127.0.0.1:5000", transport=httpx.MockTransport(handler))
    assert probe.digest(ImageRef.parse("a:1")) is None
    assert schemes == ["https"]


def test_parallel_probes_share_one_scheme_detection(home):
    # 8 threads start at once on a plain-HTTP registry with TLS verification off: one of them
    # detects the scheme, the others wait for it, and every probe answers.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    pings = []
    lock = threading.Lock()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            with lock:
                pings.append(req.url.scheme)
        if req.url.scheme == "https":
            raise httpx.ConnectError("not TLS")
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    probe = SourceProbe("127.0.0.1:5000", tls_verify=False, transport=httpx.MockTransport(handler))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: probe.digest(ImageRef.parse(f"a:{i}")), range(32)))
    assert [str(d) for d in got] == [DIGEST] * 32
    assert pings == ["https", "http"]


def test_digest_pinned_refs_need_no_request(home):
    probe = SourceProbe("ci:5000", transport=httpx.MockTransport(lambda r: 1 / 0))
    assert str(probe.digest(ImageRef.parse(f"a@{DIGEST}"))) == DIGEST
