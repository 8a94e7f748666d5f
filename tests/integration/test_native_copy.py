"""The native copier against skopeo, on real registries: the same images give the same digests and,
after GC, the same storage files, for every kind of image archive sync meets.

Two archives are filled side by side from the same sources, one by NativeCopier, one by
SkopeoCopier: sample releases 1 then 2 (Docker v2 and OCI manifests, a Docker manifest list and
an OCI index with untagged children, nested names, shared bases), an image with foreign layers,
and an image behind TLS + basic auth (a CA made here with openssl).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover.adapters.credential_helper import resolver
from layover.adapters.registry_api import RegistryAPI
from layover.adapters.registry_client import DESTINATION, SOURCE, Endpoint, RegistryClient
from layover.adapters.registry_copy import Landed
from layover.adapters.source_probe import SourceProbe
from layover.copy import NativeCopier, Route, SkopeoCopier
from layover.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, parse_manifest
from layover.reference import Digest, ImageRef
from layover.storage.gc import KeepSet, plan_gc
from layover.storage.layout import StorageLayout
from layover.storage.vacuum import apply_gc
from layover.testing.push import push_release
from layover.testing.releases import release
from tests.conftest import require
from tests.tls import secure_registry_files, write_authfile

pytestmark = pytest.mark.integration

FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def _sha(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def files(root: Path) -> dict[str, str]:
    """Every regular file under the storage tree -> sha256 of its content."""
    out: dict[str, str] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@dataclass
class Side:
    name: str
    storage: Path
    host: str
    copiers: dict[str, NativeCopier | SkopeoCopier]  # source host -> copier into this archive


@dataclass
class Site:
    ci: str
    secure: str
    ca_dir: Path
    authfile: Path
    native: Side
    skopeo: Side
    clients: list[RegistryClient]


def push_foreign(host: str, repository: str, tag: str) -> None:
    """An image whose manifest names a foreign layer (with urls) that is never pushed."""
    config = json.dumps({"architecture": "amd64", "os": "windows", "rootfs": {"type": "layers"}}).encode()
    layer = b"own layer of a windows-ish image\n" * 50
    foreign = _sha(b"the foreign base layer, not in any registry")
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": str(_sha(config))},
        "layers": [
            {
                "mediaType": FOREIGN,
                "size": 12345,
                "digest": str(foreign),
                "urls": ["https://example.invalid/base.tar.gz"],
            },
            {"mediaType": DOCKER_LAYER, "size": len(layer), "digest": str(_sha(layer))},
        ],
    }
    with RegistryAPI(host) as api:
        for blob in (config, layer):
            api.push_blob(repository, _sha(blob), blob)
        api.put_manifest(repository, tag, json.dumps(doc, indent=3).encode(), DOCKER_MANIFEST)


@pytest.fixture(scope="module")
def site(module_registries, skopeo_bin) -> Iterator[Site]:
    require(shutil.which("openssl") is not None, "openssl is missing (apt-get install openssl)")
    require(shutil.which("htpasswd") is not None, "htpasswd is missing (apt-get install apache2-utils)")
    with tempfile.TemporaryDirectory(prefix="layover-native-copy-") as tmp:
        base = Path(tmp)
        for d in ("ci", "secure", "native", "skopeo"):
            (base / d).mkdir()
        files = secure_registry_files(base, "ci-user")
        ci = module_registries.start("ci", base / "ci")
        secure = module_registries.start(
            "secure", base / "secure", auth_htpasswd=files.htpasswd, tls=(files.cert, files.key)
        )
        authfile = write_authfile(base / "auth.json", secure.host, "ci-user", files.password)
        for n in (1, 2):
            push_release(ci.host, release(n, scale=0.2))
        push_foreign(ci.host, "windows/app", "1")
        clients: list[RegistryClient] = []
        sides = {}
        for name in ("native", "skopeo"):
            reg = module_registries.start(f"archive-{name}", base / name)
            sides[name] = Side(name, base / name, reg.host, {})
        for src, tls, auth, ca_dir in (
            (ci.host, False, None, None),
            (secure.host, True, authfile, files.ca_dir),
        ):
            for side in sides.values():
                route = Route(src, side.host, side.storage, src_tls_verify=False, src_authfile=auth)
                probe = SourceProbe(src, tls_verify=False, authfile=auth)
                if side.name == "skopeo":
                    side.copiers[src] = SkopeoCopier(route, probe)
                    continue
                source = RegistryClient(
                    Endpoint(src, tls_verify=tls, cert_dir=ca_dir, flags=SOURCE),
                    resolver(auth, SOURCE.authfile),
                )
                dst = RegistryClient(
                    Endpoint(side.host, tls_verify=False, loopback_only=True, flags=DESTINATION)
                )
                clients += [source, dst]
                side.copiers[src] = NativeCopier(route, probe, source, dst)
        try:
            yield Site(
                ci.host, secure.host, files.ca_dir, authfile, sides["native"], sides["skopeo"], clients
            )
        finally:
            for c in clients:
                c.close()


def copy_both(site: Site, source: str, refs: list[ImageRef]) -> dict[str, tuple[str | None, str | None]]:
    """Copy every ref into both archives; image -> (native's digest, skopeo's digest)."""
    out = {}
    for ref in refs:
        native = site.native.copiers[source].copy(ref)
        sko = site.skopeo.copiers[source].copy(ref)
        out[str(ref)] = (native.manifest_digest, sko.manifest_digest)
    return out


def same_after_gc(site: Site, keep: list[ImageRef]) -> None:
    """GC both archives from the same keep set (on copies: the archives keep their history) and
    compare every file."""
    trees = []
    for side in (site.native, site.skopeo):
        copy = side.storage.parent / f"{side.name}-gc"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(side.storage, copy, symlinks=True)
        keep_set = KeepSet(tags=frozenset((r.repository, r.tag) for r in keep if r.tag))
        apply_gc(plan_gc(StorageLayout(copy), keep=keep_set))
        trees.append(files(copy))
        shutil.rmtree(copy)
    native, sko = trees
    assert sorted(set(native) ^ set(sko)) == []
    assert {k for k in native if native[k] != sko[k]} == set()
    assert len(native) >= 6  # at least: manifest, config, layer, their links, the tag


def test_sample_releases_copy_to_the_same_digests_and_files(site):
    rel1 = [ImageRef.parse(f"{img.repository}:{img.tag}") for img in release(1, scale=0.2).images]
    digests = copy_both(site, site.ci, rel1)
    assert all(n == s and n is not None for n, s in digests.values()), digests
    same_after_gc(site, rel1)
    # release 2 on top: new top layers, shared bases already archived (mounts, present blobs)
    rel2 = [ImageRef.parse(f"{img.repository}:{img.tag}") for img in release(2, scale=0.2).images]
    digests = copy_both(site, site.ci, rel2)
    assert all(n == s and n is not None for n, s in digests.values()), digests
    same_after_gc(site, rel2)
    # and a second native copy of the same images moves nothing
    again = [site.native.copiers[site.ci].copy(r) for r in rel2]
    assert sum(c.blobs_copied for c in again) == 0


def test_foreign_layers_are_left_where_they_live_as_skopeo_leaves_them(site):
    ref = ImageRef.parse("windows/app:1")
    (native, sko) = copy_both(site, site.ci, [ref])["windows/app:1"]
    assert native == sko
    landed = Landed()
    site.native.copiers[site.ci].copy(ref, landed)
    assert landed.blobs == 0  # nothing more to land, and the foreign layer never was
    same_after_gc(site, [ref])


def test_an_image_behind_tls_and_basic_auth(site):
    repo = f"secure/app-{uuid.uuid4().hex[:6]}"
    rel = release(1, scale=0.2)
    img = rel.images[3]
    # copy one sample image (with its index children if any) from the plain CI registry
    with (
        RegistryClient(
            Endpoint(site.secure, cert_dir=site.ca_dir, loopback_only=True, flags=DESTINATION),
            resolver(site.authfile, DESTINATION.authfile),
        ) as up,
        RegistryClient(Endpoint(site.ci, tls_verify=False, loopback_only=True)) as ci,
    ):
        top = ci.get_manifest(img.repository, img.tag)
        tree = [top]
        for child in parse_manifest(top.data, "ci").children:
            tree.insert(0, ci.get_manifest(img.repository, child))
        for m in tree:
            for blob in parse_manifest(m.data, "ci").blobs:
                up.upload_blob(repo, blob, ci.get_blob(img.repository, blob))
        for m in tree[:-1]:
            up.put_manifest(repo, m.digest, m.data, m.media_type)
        up.put_manifest(repo, "1", top.data, top.media_type)
    ref = ImageRef.parse(f"{repo}:1")
    (native, sko) = copy_both(site, site.secure, [ref])[f"{repo}:1"]
    assert native == sko == str(top.digest)
    same_after_gc(site, [ref])
