"""RegistryClient protocol logic over httpx.MockTransport: challenges, Basic and Bearer auth,
token caching per scope, pagination, referrers, uploads and the error mapping."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from layover.adapters import registry_client as rc
from layover.adapters.registry_client import (
    DESTINATION,
    SOURCE,
    Challenge,
    Endpoint,
    RegistryClient,
    parse_challenge,
)
from layover.auth import CredentialResolver, Credentials, auth_search
from layover.errors import (
    AuthError,
    CopyError,
    ImageNotFoundError,
    RegistryError,
    RegistryHTTPError,
    TLSError,
    Transient,
    TransientHTTPError,
)
from layover.manifest import OCI_INDEX, OCI_MANIFEST
from layover.reference import Digest

HOST = "reg.example.com"
CREDS = Credentials("bot", "hunter2", source="/etc/auth.json, entry 'reg.example.com'")
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def client(handler, credentials=None, **kw) -> RegistryClient:
    endpoint = kw.pop("endpoint", Endpoint(HOST, flags=SOURCE))
    return RegistryClient(endpoint, credentials, transport=httpx.MockTransport(handler), **kw)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- challenges ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example.com/token",service="reg",scope="repository:a/b:pull,push"',
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.example.com/token",
                    "service": "reg",
                    "scope": "repository:a/b:pull,push",
                },
            ),
        ),
        ('Basic realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
        (
            'BEARER Realm="https://x/t" , Service=reg',
            Challenge("bearer", {"realm": "https://x/t", "service": "reg"}),
        ),
        ("Bearer realm=https://x/t", Challenge("bearer", {"realm": "https"})),  # a URL must be quoted
        (
            r'Bearer realm="a\"b",error="insufficient_scope"',
            Challenge("bearer", {"realm": 'a"b', "error": "insufficient_scope"}),
        ),
        ('Bearer realm="unterminated', Challenge("bearer", {})),
        ("Negotiate", Challenge("negotiate", {})),
        ("", None),
        ('"quoted"', None),
    ],
)
def test_parse_challenge(header, expected):
    assert parse_challenge(header) == expected


def test_challenge_scopes_are_space_separated():
    c = parse_challenge('Bearer realm="r",scope="repository:a:pull repository:b:pull,push"')
    assert c is not None and rc.challenge_scopes(c) == ("repository:a:pull", "repository:b:pull,push")


# --- Basic -----------------------------------------------------------------------------------
def test_basic_credentials_go_on_every_request_after_the_ping():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.url.path, req.headers.get("Authorization")))
        if req.headers.get("Authorization") != basic("bot", "hunter2"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(
            200, headers={"Docker-Content-Digest": MANIFEST_DIGEST, "Content-Type": OCI_MANIFEST}
        )

    c = client(handler, CREDS)
    head = c.head_manifest("team/app", "1")
    assert str(head.digest) == MANIFEST_DIGEST and head.media_type == OCI_MANIFEST
    assert seen == [("/v2/", None), ("/v2/team/app/manifests/1", basic("bot", "hunter2"))]


def test_wrong_password_names_the_credentials_source_not_the_password():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": 'Basic realm="r"'},
            json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
        )

    with pytest.raises(AuthError) as e:
        client(handler, CREDS).head_manifest("team/app", "1")
    text = str(e.value)
    assert text == (
        "team/app:1: reg.example.com refused the credentials from /etc/auth.json, entry "
        "'reg.example.com' (401 UNAUTHORIZED); fix them, or point --src-authfile at the right file"
    )
    assert "hunter2" not in text and not isinstance(e.value, Transient)


def test_no_credentials_says_where_it_looked_and_which_flag(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    resolver = CredentialResolver(
        auth_search(None, flag="--dest-authfile", env=env, helpers=("containers-auth.json",))
    )

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    endpoint = Endpoint(HOST, flags=DESTINATION)
    with pytest.raises(AuthError) as e:
        client(handler, resolver, endpoint=endpoint).tags("team/app")
    text = str(e.value)
    assert text.startswith(
        "team/app: reg.example.com demands credentials (401) and none were found for "
        "reg.example.com/team/app (looked in: "
    )
    assert f"{tmp_path}/containers/auth.json" in text and f"{tmp_path}/.docker/config.json" in text
    assert text.endswith("; log in or pass --dest-authfile FILE")


def test_forbidden_says_the_credentials_lack_permission():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]})

    with pytest.raises(
        AuthError,
        match=r"denied access \(403 DENIED\) to the credentials from /etc/auth.json.*"
        r"lack permission on reg.example.com/team/app",
    ):
        client(handler, CREDS).put_manifest("team/app", "1", MANIFEST, OCI_MANIFEST)


def test_a_401_below_an_open_root_brings_the_challenge_and_one_retry():
    # /v2/ answers 200 to anyone, the repository wants Basic: learn it from the 401, retry once
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("Authorization"))
        if req.url.path == "/v2/" or req.headers.get("Authorization") == basic("bot", "hunter2"):
            return httpx.Response(200, json={"name": "team/app", "tags": ["1"]})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    assert client(handler, CREDS).tags("team/app") == ("1",)
    assert seen == [None, None, basic("bot", "hunter2")]


# --- Bearer ----------------------------------------------------------------------------------
class TokenRegistry:
    """A registry behind a token server at https://auth.example.com/token."""

    def __init__(self, *, expires_in: int = 300, users: dict[str, str] | None = None) -> None:
        self.token_requests: list[httpx.Request] = []
        self.expires_in = expires_in
        self.users = users if users is not None else {"bot": "hunter2"}
        self.issued: dict[str, set[str]] = {}  # token -> scopes
        self.lock = threading.Lock()

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example.com":
            return self.token(req)
        auth = req.headers.get("Authorization", "")
        scopes = self.issued.get(auth.removeprefix("Bearer "), set())
        need = self.scope_for(req)
        if req.url.path == "/v2/" and auth.startswith("Bearer ") and scopes is not None:
            return httpx.Response(200)
        if need is None or need not in scopes:
            header = 'Bearer realm="https://auth.example.com/token",service="reg.example.com"'
            if need is not None:
                header += f',scope="{need}"'
            return httpx.Response(401, headers={"WWW-Authenticate": header})
        if req.url.path.endswith("/tags/list"):
            return httpx.Response(200, json={"tags": ["1"]})
        return httpx.Response(200, headers={"Docker-Content-Digest": MANIFEST_DIGEST})

    @staticmethod
    def scope_for(req: httpx.Request) -> str | None:
        parts = req.url.path.split("/")
        if req.url.path == "/v2/" or len(parts) < 4:
            return None
        repo = "/".join(parts[2:-2])
        return f"repository:{repo}:{'pull' if req.method in ('GET', 'HEAD') else 'pull,push'}"

    def token(self, req: httpx.Request) -> httpx.Response:
        with self.lock:
            self.token_requests.append(req)
        if req.method == "POST":
            form = urllib.parse.parse_qs(req.content.decode())
            ok = form.get("refresh_token") == ["refresh-me"]
            scopes = form.get("scope", [])
        else:
            auth = req.headers.get("Authorization")
            ok = auth is None or any(auth == basic(u, p) for u, p in self.users.items())
            scopes = req.url.params.get_list("scope")
            if auth is None:
                scopes = [s for s in scopes if s.endswith(":pull")]  # anonymous: pull only
        if not ok:
            return httpx.Response(401, json={"details": "incorrect username or password"})
        value = f"T{len(self.token_requests)}"
        self.issued[f"{value}"] = set(scopes)
        return httpx.Response(200, json={"token": value, "expires_in": self.expires_in})


def test_bearer_token_per_scope_is_cached():
    reg = TokenRegistry()
    c = client(reg, CREDS)
    for tag in "123":
        assert str(c.head_manifest("team/app", tag).digest) == MANIFEST_DIGEST
    assert c.tags("team/app") == ("1",)
    assert len(reg.token_requests) == 1
    req = reg.token_requests[0]
    assert req.headers["Authorization"] == basic("bot", "hunter2")
    assert dict(req.url.params) == {
        "account": "bot",
        "service": "reg.example.com",
        "scope": "repository:team/app:pull",
    }
    c.head_manifest("team/other", "1")
    assert len(reg.token_requests) == 2  # another scope, another token


def test_push_asks_for_pull_and_push():
    reg = TokenRegistry()
    client(reg, CREDS).put_manifest("team/app", "1", MANIFEST, OCI_MANIFEST)
    assert reg.token_requests[-1].url.params.get_list("scope") == ["repository:team/app:pull,push"]


def test_anonymous_token_and_anonymous_refusal():
    reg = TokenRegistry()
    c = client(reg, None)
    assert str(c.head_manifest("public/app", "1").digest) == MANIFEST_DIGEST
    assert "Authorization" not in reg.token_requests[0].headers
    assert "account" not in reg.token_requests[0].url.params
    with pytest.raises(AuthError, match=r"demands credentials \(401\) and none were found .*none were given"):
        c.put_manifest("public/app", "1", MANIFEST, OCI_MANIFEST)


def test_identity_token_uses_the_oauth2_refresh_grant():
    reg = TokenRegistry()
    creds = Credentials("", "", "refresh-me", source="credential helper docker-credential-x")
    assert str(client(reg, creds).head_manifest("team/app", "1").digest) == MANIFEST_DIGEST
    req = reg.token_requests[0]
    form = urllib.parse.parse_qs(req.content.decode())
    assert req.method == "POST" and form["grant_type"] == ["refresh_token"]
    assert form["scope"] == ["repository:team/app:pull"] and form["service"] == ["reg.example.com"]


def test_token_server_refusing_is_an_auth_error_without_the_password():
    reg = TokenRegistry(users={"bot": "other"})
    with pytest.raises(AuthError) as e:
        client(reg, CREDS).head_manifest("team/app", "1")
    assert "refused the credentials from /etc/auth.json" in str(e.value) and "hunter2" not in str(e.value)


def test_expired_tokens_are_renewed(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(rc.time, "monotonic", lambda: now[0])
    reg = TokenRegistry(expires_in=10)  # below the 60 s floor: treated as 60 s
    c = client(reg, CREDS)
    c.head_manifest("team/app", "1")
    now[0] += 50
    c.head_manifest("team/app", "1")
    assert len(reg.token_requests) == 1
    now[0] += 10
    c.head_manifest("team/app", "1")
    assert len(reg.token_requests) == 2


def test_mount_asks_for_both_repositories():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.example.com":
            seen.append(sorted(req.url.params.get_list("scope")))
            return httpx.Response(200, json={"token": "T"})
        if req.headers.get("Authorization") != "Bearer T":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example.com/token"'}
            )
        assert req.url.params["mount"] == MANIFEST_DIGEST and req.url.params["from"] == "base/os"
        return httpx.Response(201, headers={"Location": f"/v2/team/app/blobs/{MANIFEST_DIGEST}"})

    assert client(handler, CREDS).mount_blob("team/app", Digest.parse(MANIFEST_DIGEST), "base/os") is True
    assert seen == [["repository:base/os:pull", "repository:team/app:pull,push"]]


def test_concurrent_requests_share_the_client():
    reg = TokenRegistry()
    c = client(reg, CREDS)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: c.head_manifest(f"team/app{i % 4}", str(i)).digest, range(64)))
    assert {str(d) for d in got} == {MANIFEST_DIGEST}
    # one token per scope, give or take a race between the first requests of a scope
    assert 4 <= len(reg.token_requests) <= 8


# --- pagination ------------------------------------------------------------------------------
def test_tags_and_catalog_follow_link_headers():
    pages = {
        "/v2/team/app/tags/list": (["a", "b"], '</v2/team/app/tags/list?n=2&last=b>; rel="next"'),
        "/v2/team/app/tags/list?last=b": (
            ["c", "d"],
            f'<https://{HOST}/v2/team/app/tags/list?n=2&last=d>; rel="next"',
        ),
        "/v2/team/app/tags/list?last=d": (["e"], None),
        "/v2/_catalog": (["x"], '</v2/_catalog?last=x&n=1>; rel="next"'),
        "/v2/_catalog?last=x": (["y"], None),
    }
    asked = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        asked.append(str(req.url.copy_with(scheme=None, host=None)))
        last = req.url.params.get("last")
        values, link = pages[req.url.path + (f"?last={last}" if last else "")]
        key = "repositories" if "_catalog" in req.url.path else "tags"
        return httpx.Response(200, json={key: values}, headers={"Link": link} if link else {})

    c = client(handler)
    assert c.tags("team/app", page_size=2) == ("a", "b", "c", "d", "e")
    assert asked[0].endswith("/v2/team/app/tags/list?n=2")
    assert c.catalog() == ("x", "y")


def test_pagination_that_loops_is_an_error():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(
            200, json={"tags": ["a"]}, headers={"Link": '</v2/a/tags/list?last=a>; rel="next"'}
        )

    with pytest.raises(RegistryError, match="pagination loops back"):
        client(handler).tags("a")


# --- referrers -------------------------------------------------------------------------------
SUBJECT = Digest("ab" * 32)


def referrer(n: int) -> dict:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": f"sha256:{n:064x}",
        "size": 100 + n,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "annotations": {"k": str(n)},
    }


def test_referrers_api_with_pagination_and_filter():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        assert req.url.path == f"/v2/team/app/referrers/{SUBJECT}"
        if req.url.params.get("page") == "2":
            return httpx.Response(200, json={"schemaVersion": 2, "manifests": [referrer(2)]})
        assert req.url.params["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json"
        sbom = {**referrer(9), "artifactType": "application/spdx+json"}  # the registry ignored the filter
        return httpx.Response(
            200,
            json={"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [referrer(1), sbom]},
            headers={"Link": f'</v2/team/app/referrers/{SUBJECT}?page=2>; rel="next"'},
        )

    got = client(handler).referrers(
        "team/app", SUBJECT, artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json"
    )
    assert got is not None and [d.size for d in got] == [101, 102]
    assert got[0].artifact_type == "application/vnd.dev.cosign.artifact.sig.v1+json"
    assert got[0].annotations == (("k", "1"),)


def test_referrers_trusts_a_filter_the_registry_says_it_applied():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(
            200,
            json={"schemaVersion": 2, "manifests": [referrer(1)]},
            headers={"OCI-Filters-Applied": "artifactType"},
        )

    got = client(handler).referrers("team/app", SUBJECT, artifact_type="application/x-other")
    assert got is not None and len(got) == 1


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"404 page not found\n", "text/plain", None),  # Distribution 2.8: no such route
        (b"", "", None),
        (json.dumps({"errors": [{"code": "NAME_UNKNOWN"}]}).encode(), "application/json", None),
        (json.dumps({"schemaVersion": 2, "manifests": []}).encode(), OCI_INDEX, ()),  # the API, nothing yet
    ],
)
def test_referrers_404_means_no_api_unless_it_carries_an_index(body, content_type, expected):
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(
            404, content=body, headers={"Content-Type": content_type} if content_type else {}
        )

    assert client(handler).referrers("team/app", SUBJECT) == expected


# --- manifests and blobs ---------------------------------------------------------------------
def open_registry(routes):
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return routes(req)

    return handler


def test_get_manifest_checks_the_digest():
    def routes(req: httpx.Request) -> httpx.Response:
        tag = req.url.path.rsplit("/", 1)[1]
        header = MANIFEST_DIGEST if tag in ("good", MANIFEST_DIGEST) else "sha256:" + "0" * 64
        return httpx.Response(
            200,
            content=MANIFEST,
            headers={"Docker-Content-Digest": header, "Content-Type": f"{OCI_MANIFEST}; charset=x"},
        )

    c = client(open_registry(routes))
    got = c.get_manifest("a", "good")
    assert got.data == MANIFEST and str(got.digest) == MANIFEST_DIGEST and got.media_type == OCI_MANIFEST
    assert c.get_manifest("a", Digest.parse(MANIFEST_DIGEST)).data == MANIFEST
    with pytest.raises(RegistryError, match=r"hash to sha256:.* not sha256:0000"):
        c.get_manifest("a", "lying")
    with pytest.raises(RegistryError, match="hash to"):
        c.get_manifest("a", Digest("1" * 64))


def test_put_manifest_checks_what_the_registry_stored():
    def routes(req: httpx.Request) -> httpx.Response:
        assert req.headers["Content-Type"] == OCI_MANIFEST and req.content == MANIFEST
        return httpx.Response(201, headers={"Docker-Content-Digest": MANIFEST_DIGEST})

    assert (
        str(client(open_registry(routes)).put_manifest("a", "1", MANIFEST, OCI_MANIFEST)) == MANIFEST_DIGEST
    )


def test_iter_blob_verifies_while_streaming():
    data = b"x" * (3 << 20)

    def routes(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data if "good" in req.url.path else data[:-1] + b"y")

    c = client(open_registry(routes))
    assert c.get_blob("good", digest_of(data)) == data
    out = io.BytesIO()
    assert c.download_blob("good", digest_of(data), out) == len(data) and out.getvalue() == data
    with pytest.raises(RegistryError, match="serves corrupt data"):
        c.get_blob("bad", digest_of(data))


class UploadRegistry:
    """Records an upload session: POST, PATCHes, PUT, DELETE."""

    def __init__(self, *, mount: bool = False) -> None:
        self.log: list[tuple[str, str, int]] = []
        self.received = bytearray()
        self.mount = mount
        self.stored: dict[str, bytes] = {}

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        body = req.read()
        self.log.append((req.method, req.url.path, len(body)))
        if req.method in ("PATCH", "PUT", "DELETE"):  # the Location's query must come back whole
            assert req.url.params.get("_state") == f"s{len(self.received)}", req.url
        if req.method == "HEAD":
            return httpx.Response(404)
        if req.method == "POST":
            if "mount" in req.url.params and self.mount:
                return httpx.Response(201)
            return httpx.Response(202, headers={"Location": "/v2/a/blobs/uploads/u1?_state=s0"})
        if req.method == "PATCH":
            if "Content-Range" in req.headers:
                start, end = (int(x) for x in req.headers["Content-Range"].split("-"))
                assert start == len(self.received) and end == start + len(body) - 1
            self.received += body
            return httpx.Response(
                202, headers={"Location": f"/v2/a/blobs/uploads/u1?_state=s{len(self.received)}"}
            )
        if req.method == "PUT":
            self.received += body
            digest = req.url.params["digest"]
            assert digest == "sha256:" + hashlib.sha256(self.received).hexdigest()
            self.stored[digest] = bytes(self.received)
            return httpx.Response(201)
        if req.method == "DELETE":
            return httpx.Response(204)
        raise AssertionError(req)


def test_small_blobs_go_in_one_put():
    reg = UploadRegistry()
    data = b"config"
    assert client(reg).upload_blob("a", digest_of(data), data) == "uploaded"
    assert [m for m, _, _ in reg.log] == ["HEAD", "POST", "PUT"]


def test_large_blobs_stream_through_patch_in_chunks():
    reg = UploadRegistry()
    data = bytes(range(256)) * (12 << 12)  # 12 MiB
    c = client(reg, monolithic_limit=1 << 20, chunk_size=5 << 20)
    assert c.upload_blob("a", digest_of(data), io.BytesIO(data), size=len(data)) == "uploaded"
    assert [(m, n) for m, _, n in reg.log] == [
        ("HEAD", 0),
        ("POST", 0),
        ("PATCH", 5 << 20),
        ("PATCH", 5 << 20),
        ("PATCH", 2 << 20),
        ("PUT", 0),
    ]
    assert reg.stored[str(digest_of(data))] == data


def test_a_stream_of_unknown_size_goes_in_one_patch():
    reg = UploadRegistry()
    pieces = [b"a" * 1000, b"b" * 2000]
    data = b"".join(pieces)
    assert client(reg, monolithic_limit=10).upload_blob("a", digest_of(data), iter(pieces)) == "uploaded"
    assert [(m, n) for m, _, n in reg.log] == [("HEAD", 0), ("POST", 0), ("PATCH", 3000), ("PUT", 0)]


def test_data_that_does_not_match_its_digest_is_never_committed():
    reg = UploadRegistry()
    c = client(reg, monolithic_limit=10)
    with pytest.raises(CopyError, match="hash to sha256:"):
        c.upload_blob("a", digest_of(b"expected"), iter([b"something else"]))
    assert [m for m, _, _ in reg.log] == ["HEAD", "POST", "PATCH", "DELETE"]
    with pytest.raises(CopyError):
        client(UploadRegistry()).upload_blob("a", digest_of(b"expected"), b"small but wrong")


def test_mount_or_fall_back_to_upload():
    data = b"layer"
    reg = UploadRegistry(mount=True)
    assert client(reg).upload_blob("a", digest_of(data), data, mount_from="b") == "mounted"
    reg = UploadRegistry(mount=False)  # the registry opened an upload instead: use it
    assert client(reg).upload_blob("a", digest_of(data), data, mount_from="b") == "uploaded"
    assert [m for m, _, _ in reg.log] == ["HEAD", "POST", "PUT"]
    reg = UploadRegistry(mount=False)
    assert client(reg).mount_blob("a", digest_of(data), "b") is False
    assert [m for m, _, _ in reg.log] == ["POST", "DELETE"]  # the unwanted upload is cancelled


def test_present_blobs_are_not_sent():
    def routes(req: httpx.Request) -> httpx.Response:
        assert req.method == "HEAD"
        return httpx.Response(200, headers={"Content-Length": "5"})

    c = client(open_registry(routes))
    assert c.blob_size("a", digest_of(b"layer")) == 5
    assert c.upload_blob("a", digest_of(b"layer"), b"layer") == "present"


# --- errors ----------------------------------------------------------------------------------
def failing(status: int, codes: tuple[str, ...] = ()):
    body = {"errors": [{"code": c, "message": c.lower()} for c in codes]}
    return client(open_registry(lambda req: httpx.Response(status, json=body)))


def test_status_mapping():
    with pytest.raises(ImageNotFoundError, match=r"reg.example.com/a:1: not found \(MANIFEST_UNKNOWN\)"):
        failing(404, ("MANIFEST_UNKNOWN",)).get_manifest("a", "1")
    with pytest.raises(ImageNotFoundError, match="NAME_UNKNOWN"):
        failing(404, ("NAME_UNKNOWN",)).tags("a")
    with pytest.raises(ImageNotFoundError, match=r"reg.example.com/a@sha256:.*not found \(404\)"):
        failing(404).head_manifest("a", Digest("1" * 64))
    for status in (429, 500, 502, 503):
        with pytest.raises(TransientHTTPError) as e:
            failing(status).get_manifest("a", "1")
        assert e.value.status == status and isinstance(e.value, Transient)
    with pytest.raises(RegistryHTTPError) as e:
        failing(400, ("MANIFEST_INVALID",)).put_manifest("a", "1", MANIFEST, OCI_MANIFEST)
    assert not isinstance(e.value, Transient) and e.value.codes == ("MANIFEST_INVALID",)
    with pytest.raises(RegistryHTTPError) as e:
        failing(404, ("BLOB_UNKNOWN",)).get_blob("a", digest_of(b"x"))
    assert not isinstance(e.value, (Transient, ImageNotFoundError))


def test_no_answer_is_transient():
    def refused(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(TransientHTTPError) as e:
        client(refused).ping()
    assert str(e.value) == (
        f"GET https://{HOST}/v2/ got no answer: ConnectError: [Errno 111] Connection "
        f"refused (is {HOST} up and reachable? retrying may help)"
    )

    def slow(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(TransientHTTPError, match="timed out"):
        client(slow).tags("a")


def test_loopback_only_refuses_to_follow_anything_off_the_machine():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(307, headers={"Location": "https://storage.example.com/blob"})

    endpoint = Endpoint("127.0.0.1:5000", tls_verify=False, loopback_only=True)
    with pytest.raises(RegistryError, match=r"storage\.example\.com/blob: not on loopback"):
        client(handler, endpoint=endpoint).get_blob("a", digest_of(b"x"))
    with pytest.raises(RegistryError, match="not on loopback"):
        Endpoint("reg.example.com", loopback_only=True)


@pytest.mark.parametrize("host", ["https://reg.example.com", "reg.example.com/v2", ""])
def test_endpoint_wants_host_and_port_only(host):
    with pytest.raises(RegistryError, match="give HOST"):
        Endpoint(host)


# --- certificate directories -----------------------------------------------------------------
def pem_pair() -> tuple[bytes, bytes]:
    """A self-signed certificate and its key, PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "layover client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )  # get_ca_certs lists CAs
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_cert_dir_loads_cas_and_client_pairs(tmp_path):
    cert, key = pem_pair()
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "client.cert").write_bytes(cert)
    (tmp_path / "client.key").write_bytes(key)
    ctx = rc.tls_context(Endpoint(HOST), tmp_path)
    assert any(c.get("subject") == ((("commonName", "layover client"),),) for c in ctx.get_ca_certs())
    assert ctx.check_hostname and ctx.verify_mode == rc.ssl.CERT_REQUIRED
    off = rc.tls_context(Endpoint(HOST, tls_verify=False), tmp_path)  # the pair is still presented
    assert not off.check_hostname and off.verify_mode == rc.ssl.CERT_NONE


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"client.cert": "cert"},
            "client certificate client.cert has no client.key (a CA certificate must be named *.crt)",
        ),
        ({"client.key": "key"}, "key client.key has no client certificate client.cert"),
        ({"ca.crt": b"not a certificate"}, "cannot load ca.crt"),
        ({"client.cert": "cert", "client.key": "other-key"}, "cannot load client.cert"),  # the pair is loaded
    ],
)
def test_cert_dir_mistakes_are_tls_errors_naming_the_flag(tmp_path, files, message):
    cert, key = pem_pair()
    other_key = pem_pair()[1]
    for name, content in files.items():
        pems = {"cert": cert, "key": key, "other-key": other_key}
        data = pems[content] if isinstance(content, str) else content
        (tmp_path / name).write_bytes(data)
    with pytest.raises(TLSError) as e:
        rc.tls_context(Endpoint(HOST, flags=DESTINATION), tmp_path)
    assert str(e.value).startswith(f"--dest-cert-dir {tmp_path}: ") and message in str(e.value)


def test_an_explicit_cert_dir_must_exist(tmp_path):
    with pytest.raises(TLSError, match=r"--src-cert-dir .*/nope: no such directory"):
        RegistryClient(Endpoint(HOST, cert_dir=tmp_path / "nope", flags=SOURCE))


def test_default_cert_dir_is_skopeos_per_host_directory(tmp_path):
    assert rc.default_cert_dir("reg.example.com:5000", home=tmp_path) is None
    mine = tmp_path / ".config/containers/certs.d/reg.example.com:5000"
    mine.mkdir(parents=True)
    assert rc.default_cert_dir("reg.example.com:5000", home=tmp_path) == mine
