"""RegistryClient, SourceProbe and credential resolution against real registry containers (Docker
SDK, loopback only) and real skopeo: basic auth behind TLS with a CA made here with openssl, and a
plain-HTTP registry."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from layover.adapters.credential_helper import resolver
from layover.adapters.registry_client import DESTINATION, SOURCE, Endpoint, RegistryClient
from layover.adapters.source_probe import SourceProbe
from layover.auth import Credentials
from layover.errors import AuthError, ImageNotFoundError, TLSError, TransientHTTPError
from layover.manifest import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from layover.reference import Digest, ImageRef
from tests.conftest import require
from tests.tls import secure_registry_files, write_authfile

pytestmark = pytest.mark.integration

USER = "layover-ci"


@dataclass(frozen=True)
class Site:
    secure: str  # HOST:PORT of the TLS + basic-auth registry
    plain: str  # HOST:PORT of the plain-HTTP registry, no auth
    base: Path
    ca_dir: Path  # holds ca.crt only: a containers-certs.d directory
    password: str
    authfile: Path  # good credentials for `secure`


@pytest.fixture(scope="module")
def site(module_registries) -> Iterator[Site]:
    require(shutil.which("openssl") is not None, "openssl is missing (apt-get install openssl)")
    require(shutil.which("htpasswd") is not None, "htpasswd is missing (apt-get install apache2-utils)")
    with tempfile.TemporaryDirectory(prefix="layover-client-test-") as tmp:
        base = Path(tmp)
        files = secure_registry_files(base, USER)
        for d in ("secure-storage", "plain-storage"):
            (base / d).mkdir()
        secure = module_registries.start(
            "secure", base / "secure-storage", auth_htpasswd=files.htpasswd, tls=(files.cert, files.key)
        )
        plain = module_registries.start("plain", base / "plain-storage")
        assert secure.url.startswith("https://") and plain.url.startswith("http://")
        authfile = write_authfile(base / "auth.json", secure.host, USER, files.password)
        try:
            yield Site(secure.host, plain.host, base, files.ca_dir, files.password, authfile)
        finally:
            module_registries.stop(secure)
            module_registries.stop(plain)


@pytest.fixture
def clean_env(tmp_path, monkeypatch) -> Path:
    """An empty HOME and runtime dir, no REGISTRY_AUTH_FILE: only what a test sets is found."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    for var in ("REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


def secure_client(site: Site, credentials=None, **kw) -> RegistryClient:
    creds = credentials if credentials is not None else resolver(site.authfile, DESTINATION.authfile)
    endpoint = Endpoint(site.secure, cert_dir=site.ca_dir, loopback_only=True, flags=DESTINATION)
    return RegistryClient(endpoint, creds, **kw)


def sha(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def image(seed: str) -> tuple[bytes, bytes, bytes]:
    """(config, layer, manifest) of a small OCI image."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "seed": seed}
    ).encode()
    layer = f"layer {seed}\n".encode() * 100
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(sha(config)), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": str(sha(layer)), "size": len(layer)}],
        }
    ).encode()
    return config, layer, manifest


def push(c: RegistryClient, repository: str, tag: str, seed: str) -> Digest:
    config, layer, manifest = image(seed)
    for blob in (config, layer):
        c.upload_blob(repository, sha(blob), blob)
    return c.put_manifest(repository, tag, manifest, OCI_MANIFEST)


# --- TLS + basic auth ------------------------------------------------------------------------
def test_push_mount_and_read_back_through_tls_and_basic_auth(site, clean_env):
    repo, other = f"team/app-{uuid.uuid4().hex[:6]}", f"team/other-{uuid.uuid4().hex[:6]}"
    config, layer, manifest = image("one")
    with secure_client(site) as c:
        assert c.ping() == f"https://{site.secure}"
        assert c.upload_blob(repo, sha(config), config) == "uploaded"
        assert c.upload_blob(repo, sha(layer), layer) == "uploaded"
        assert c.upload_blob(repo, sha(layer), layer) == "present"
        digest = c.put_manifest(repo, "1.0", manifest, OCI_MANIFEST)
        assert digest == sha(manifest)
        assert c.mount_blob(other, sha(layer), repo) is True
        assert c.upload_blob(other, sha(config), config, mount_from=repo) == "mounted"
        assert c.blob_size(other, sha(layer)) == len(layer)
        assert c.put_manifest(other, "2.0", manifest, OCI_MANIFEST) == digest

        got = c.get_manifest(repo, "1.0")
        assert got.data == manifest and got.digest == digest and got.media_type == OCI_MANIFEST
        assert c.get_manifest(other, digest).data == manifest
        assert c.head_manifest(repo, "1.0").digest == digest
        assert c.get_blob(other, sha(layer)) == layer
        for n in range(3):
            c.put_manifest(repo, f"extra-{n}", manifest, OCI_MANIFEST)
        assert sorted(c.tags(repo, page_size=2)) == ["1.0", "extra-0", "extra-1", "extra-2"]
        assert {repo, other} <= set(c.catalog(page_size=1))
        assert c.referrers(repo, digest) is None  # Distribution 2.8 has no referrers API
        with pytest.raises(
            ImageNotFoundError, match=rf"{site.secure}/{repo}:nope: not found \(MANIFEST_UNKNOWN\)"
        ):
            c.get_manifest(repo, "nope")


def test_large_blobs_stream_both_ways_without_holding_them(site, clean_env, tmp_path):
    repo = f"big/blob-{uuid.uuid4().hex[:6]}"
    size = 40 << 20
    src = tmp_path / "blob"
    hasher = hashlib.sha256()
    with src.open("wb") as fh:
        for i in range(size >> 20):
            piece = hashlib.sha256(str(i).encode()).digest() * (1 << 15)  # 1 MiB
            hasher.update(piece)
            fh.write(piece)
    digest = Digest(hasher.hexdigest())
    with secure_client(site, chunk_size=16 << 20) as c:
        c.ping()
        tracemalloc.start()
        try:
            with src.open("rb") as fh:
                assert c.upload_blob(repo, digest, fh, size=size) == "uploaded"
            _, upload_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            with (tmp_path / "back").open("wb") as out:
                assert c.download_blob(repo, digest, out) == size
            _, download_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert c.blob_size(repo, digest) == size
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest.hex
    # a few 1 MiB pieces in flight, never the 40 MiB blob
    assert upload_peak < 8 << 20, upload_peak
    assert download_peak < 8 << 20, download_peak


def test_without_the_ca_the_certificate_does_not_verify(site, clean_env):
    endpoint = Endpoint(site.secure, flags=SOURCE)
    with (
        RegistryClient(endpoint, resolver(site.authfile, SOURCE.authfile)) as c,
        pytest.raises(TLSError) as e,
    ):
        c.tags("team/app")
    text = str(e.value)
    assert f"https://{site.secure}/v2/: its certificate did not verify against the system CAs" in text
    assert "--src-cert-dir DIR" in text and "--no-src-tls-verify" in text and "\n" not in text


def test_tls_verification_off_still_speaks_tls_first(site, clean_env):
    endpoint = Endpoint(site.secure, tls_verify=False)
    with RegistryClient(endpoint, resolver(site.authfile, "--authfile")) as c:
        assert c.ping() == f"https://{site.secure}"


def test_wrong_password_names_the_file_not_the_password(site, clean_env, tmp_path):
    wrong = write_authfile(tmp_path / "wrong.json", site.secure, USER, site.password + "-wrong")
    with secure_client(site, resolver(wrong, DESTINATION.authfile)) as c, pytest.raises(AuthError) as e:
        c.tags("team/app")
    text = str(e.value)
    assert text == (
        f"team/app: {site.secure} refused the credentials from {wrong} (--dest-authfile), entry "
        f"'{site.secure}' (401 UNAUTHORIZED); fix them, or point --dest-authfile at the right file"
    )
    assert site.password not in text


def test_no_credentials_says_where_it_looked(site, clean_env):
    with secure_client(site, resolver(None, DESTINATION.authfile)) as c, pytest.raises(AuthError) as e:
        c.head_manifest("team/app", "1")
    text = str(e.value)
    assert "demands credentials (401) and none were found for" in text  # a HEAD has no body
    assert f"{clean_env}/.docker/config.json" in text and text.endswith("log in or pass --dest-authfile FILE")


# --- plain HTTP ------------------------------------------------------------------------------
def test_plain_http_registry_with_tls_verification_off(site, clean_env):
    repo = f"plain/app-{uuid.uuid4().hex[:6]}"
    endpoint = Endpoint(site.plain, tls_verify=False, loopback_only=True)
    with RegistryClient(endpoint, resolver(None, "--dest-authfile")) as c:
        assert c.ping() == f"http://{site.plain}"
        digest = push(c, repo, "1", "plain")
        assert c.get_manifest(repo, "1").digest == digest
        assert c.tags(repo) == ("1",)


def test_plain_http_registry_with_tls_verification_on_is_a_tls_error(site, clean_env):
    with RegistryClient(Endpoint(site.plain, flags=SOURCE)) as c, pytest.raises(TLSError) as e:
        c.ping()
    assert "TLS handshake failed" in str(e.value) and "--no-src-tls-verify" in str(e.value)


def test_nothing_listening_is_transient(clean_env):
    from layover.adapters.registry import free_port

    client = RegistryClient(Endpoint(f"127.0.0.1:{free_port()}", tls_verify=False))
    with client, pytest.raises(TransientHTTPError, match="got no answer"):
        client.ping()


# --- the probe and skopeo find the same credentials ------------------------------------------
def test_source_probe_finds_credentials_through_registry_auth_file(site, clean_env, monkeypatch):
    repo = f"probe/app-{uuid.uuid4().hex[:6]}"
    with secure_client(site) as c:
        digest = push(c, repo, "1", "probe")
    ref = ImageRef.parse(f"{repo}:1")
    # skopeo's default per-host certificate directory, under the (test's) HOME
    certs = clean_env / ".config/containers/certs.d" / site.secure
    certs.mkdir(parents=True)
    shutil.copy(site.ca_dir / "ca.crt", certs / "ca.crt")

    assert SourceProbe(site.secure).digest(ref) is None  # no credentials anywhere: 401, copy for real
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(site.authfile))
    assert SourceProbe(site.secure).digest(ref) == digest
    assert SourceProbe(site.secure, tls_verify=False).digest(ref) == digest
    wrong = write_authfile(clean_env / "wrong.json", site.secure, USER, "nope")
    assert SourceProbe(site.secure, authfile=wrong).digest(ref) is None  # the flag beats the variable


def skopeo_inspect(site: Site, ref: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    require(shutil.which("skopeo") is not None, "skopeo is missing (scripts/setup.sh installs it)")
    return subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--retry-times",
            "0",
            "--cert-dir",
            str(site.ca_dir),
            *args,
            f"docker://{site.secure}/{ref}",
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )


def skopeo_env(home: Path, run_dir: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(run_dir), **extra}


def test_skopeo_and_layover_agree_on_where_credentials_come_from(site, clean_env, tmp_path):
    repo = f"agree/app-{uuid.uuid4().hex[:6]}"
    with secure_client(site) as c:
        digest = push(c, repo, "1", "agree")
    run_dir = tmp_path / "run"
    good = site.authfile
    wrong = write_authfile(tmp_path / "wrong.json", site.secure, USER, "nope")
    unrelated = write_authfile(tmp_path / "unrelated.json", "elsewhere.example.com", "x", "y")
    docker_config = clean_env / ".docker/config.json"

    def both(env: dict[str, str], *flag: str) -> tuple[bool, bool]:
        """(skopeo could read the image, layover's resolution gave working credentials)."""
        proc = skopeo_inspect(site, f"{repo}:1", env, *flag)
        authfile = Path(flag[1]) if flag else None
        found = resolver(authfile, "--authfile", env=env).for_repository(site.secure, repo)
        if proc.returncode == 0:
            assert hashlib.sha256(proc.stdout).hexdigest() == digest.hex
        layover_ok = False
        if found is not None:
            with secure_client(site, found) as c:
                try:
                    layover_ok = c.head_manifest(repo, "1").digest == digest
                except AuthError:
                    layover_ok = False
        return proc.returncode == 0, layover_ok

    base = skopeo_env(clean_env, run_dir)
    assert both(base) == (False, False)  # nothing anywhere
    assert both({**base, "REGISTRY_AUTH_FILE": str(good)}) == (True, True)
    assert both({**base, "REGISTRY_AUTH_FILE": str(wrong)}) == (False, False)
    assert both({**base, "REGISTRY_AUTH_FILE": str(wrong)}, "--authfile", str(good)) == (True, True)
    # ${XDG_RUNTIME_DIR}/containers/auth.json, when nothing explicit is set
    write_authfile(run_dir / "containers/auth.json", site.secure, USER, site.password)
    assert both(base) == (True, True)
    (run_dir / "containers/auth.json").unlink()
    # skopeo 1.9.3 keeps searching the default files after an explicit one without an entry...
    write_authfile(docker_config, site.secure, USER, site.password)
    assert both({**base, "REGISTRY_AUTH_FILE": str(unrelated)}) == (True, True)
    # ...but the first file WITH an entry wins, even a wrong one
    assert both({**base, "REGISTRY_AUTH_FILE": str(wrong)}) == (False, False)
    # Docker's credsStore is ignored: the auths entry next to it is used
    docker_config.write_text(
        json.dumps(
            {
                "credsStore": "nosuchstore",
                "auths": {
                    site.secure: {"auth": base64.b64encode(f"{USER}:{site.password}".encode()).decode()}
                },
            }
        )
    )
    assert both(base) == (True, True)
    # a namespaced entry beats the host entry, in both
    docker_config.write_text(
        json.dumps(
            {
                "auths": {
                    site.secure: {"auth": base64.b64encode(f"{USER}:nope".encode()).decode()},
                    f"{site.secure}/{repo.split('/')[0]}": {
                        "auth": base64.b64encode(f"{USER}:{site.password}".encode()).decode()
                    },
                }
            }
        )
    )
    assert both(base) == (True, True)


def test_credentials_objects_work_directly(site, clean_env):
    creds = Credentials(USER, site.password, source="test")
    with secure_client(site, creds) as c:
        c.ping()
        assert c.catalog() is not None
    with httpx.Client(verify=False) as raw:  # the registry really demands auth
        assert raw.get(f"https://{site.secure}/v2/").status_code == 401


def test_archive_sync_skips_an_archived_image_with_credentials_from_registry_auth_file(
    site, clean_env, module_registries, tmp_path, monkeypatch
):
    """The reported bug: with the source's credentials only in REGISTRY_AUTH_FILE, skopeo copied
    fine but the probe got 401s, so every incremental release copied every image again."""
    from layover.adapters import skopeo
    from layover.copy import Route, SkopeoCopier

    repo = f"archived/app-{uuid.uuid4().hex[:6]}"
    with secure_client(site) as c:
        push(c, repo, "1", "archived")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(site.authfile))
    (tmp_path / "archive").mkdir()
    archive = module_registries.start("archive", tmp_path / "archive")
    route = Route(site.secure, archive.host, archive.storage, src_tls_verify=False)
    ref = ImageRef.parse(f"{repo}:1")
    probes: list[SourceProbe] = []

    def copier() -> SkopeoCopier:  # a new probe finds credentials as the environment is now
        probes.append(SourceProbe(site.secure, tls_verify=False))
        return SkopeoCopier(route, probes[-1])

    try:
        skopeo.copy(f"{site.secure}/{repo}:1", f"{archive.host}/{repo}:1", src_tls_verify=False)
        skipped = copier().already_there(ref)
        assert skipped is not None and skipped.blobs_copied == 0 and skipped.blobs_reused == 2
        monkeypatch.delenv("REGISTRY_AUTH_FILE")
        assert copier().already_there(ref) is None  # no credentials: copy for real
    finally:
        for probe in probes:
            probe.close()
        module_registries.stop(archive)
