"""The registry HTTP client's guards, without a network (httpx.MockTransport)."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from layover.adapters.registry_api import RegistryAPI
from layover.errors import RegistryError, RegistryHTTPError
from layover.reference import Digest


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def test_client_refuses_hosts_off_loopback() -> None:
    for host in ("10.0.0.5:5000", "registry.example.com", "172.17.0.2:5000"):
        with pytest.raises(RegistryError, match="not on loopback"):
            RegistryAPI(host)
    with pytest.raises(RegistryError, match="without a scheme"):
        RegistryAPI("http://127.0.0.1:5000")


def test_upload_location_off_loopback_is_refused_before_sending_bytes() -> None:
    sent: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(req.url.host)
        if req.method == "HEAD":
            return httpx.Response(404)
        return httpx.Response(202, headers={"Location": "http://192.0.2.1:5000/v2/x/blobs/uploads/u"})

    data = b"hello"
    with (
        RegistryAPI("127.0.0.1:5000", transport=httpx.MockTransport(handler)) as api,
        pytest.raises(RegistryError, match=r"upload Location .* not on loopback"),
    ):
        api.push_blob("x", digest_of(data), data)
    assert sent == ["127.0.0.1", "127.0.0.1"]  # HEAD and POST; no PUT went anywhere


def test_http_errors_name_the_request_and_the_registry_error_code() -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=body)

    with (
        RegistryAPI("127.0.0.1:5000", transport=httpx.MockTransport(handler)) as api,
        pytest.raises(RegistryHTTPError) as info,
    ):
        api.manifest("apps/team-a/web", "9.9.9")
    err = info.value
    assert err.not_found and err.codes == ("MANIFEST_UNKNOWN",)
    assert "GET http://127.0.0.1:5000/v2/apps/team-a/web/manifests/9.9.9 returned 404" in str(err)


def test_a_blob_whose_bytes_do_not_match_its_digest_is_an_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"truncat")

    with (
        RegistryAPI("127.0.0.1:5000", transport=httpx.MockTransport(handler)) as api,
        pytest.raises(RegistryError, match="corrupt data"),
    ):
        api.get_blob("x", digest_of(b"truncated"))


def test_unreachable_registry_says_what_to_check() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with RegistryAPI("127.0.0.1:5000", transport=httpx.MockTransport(handler)) as api:
        with pytest.raises(RegistryError, match="cannot reach the registry"):
            api.catalog()
        with pytest.raises(RegistryError, match=r"did not answer GET /v2/ with 200 within 0\.3s"):
            api.wait_ready(0.3)
