"""Builds registry storage trees in a temp dir the way docker-registry 2.8 lays them out.

Manifests are real JSON blobs stored under their true sha256, with the links a push creates:
blobs pushed to a repo get `_layers` links, manifests get revision links, tags get a current link
plus an index entry for every digest they ever pointed at. Tests then break things on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from layover.reference import Digest
from layover.storage.layout import StorageLayout, write_link

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


class StorageBuilder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = StorageLayout(root)
        self.layout.blobs.mkdir(parents=True, exist_ok=True)
        self.layout.repositories.mkdir(parents=True, exist_ok=True)

    # --- raw pieces ----------------------------------------------------------------------
    def blob(self, data: bytes) -> Digest:
        d = digest_of(data)
        path = self.layout.blob_data(d)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return d

    def link_layer(self, repo: str, d: Digest) -> None:
        write_link(self.layout.layer_link(repo, d), d)

    def revision(self, repo: str, d: Digest) -> None:
        write_link(self.layout.revision_link(repo, d), d)

    def push_blob(self, repo: str, data: bytes) -> Digest:
        d = self.blob(data)
        self.link_layer(repo, d)
        return d

    def push_manifest(self, repo: str, doc: dict | bytes) -> Digest:
        data = doc if isinstance(doc, bytes) else json.dumps(doc, indent=3).encode()
        d = self.blob(data)
        self.revision(repo, d)
        return d

    # --- whole images --------------------------------------------------------------------
    def image(
        self,
        repo: str,
        layers: list[bytes] | None = None,
        *,
        config: bytes | None = None,
        oci: bool = False,
        media_type: bool = True,
        foreign: list[str] = (),  # digests (sha256:...) of foreign layers, not pushed
        foreign_with_urls: bool = False,
        salt: str = "",
    ) -> Digest:
        """Push config + layers (linked) and an image manifest; returns the manifest digest."""
        layers = [f"layer {repo} {salt}".encode()] if layers is None else layers
        config = (
            config
            if config is not None
            else json.dumps({"arch": "amd64", "salt": salt, "repo": repo}).encode()
        )
        cfg = self.push_blob(repo, config)
        descs = []
        for data in layers:
            d = self.push_blob(repo, data)
            descs.append(
                {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": len(data), "digest": str(d)}
            )
        for fd in foreign:
            desc = {"mediaType": OCI_NONDIST if oci else DOCKER_FOREIGN, "size": 1, "digest": fd}
            if foreign_with_urls:
                desc = {
                    "mediaType": OCI_LAYER,
                    "size": 1,
                    "digest": fd,
                    "urls": ["https://example.invalid/x"],
                }
            descs.append(desc)
        doc: dict = {
            "schemaVersion": 2,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "size": len(config),
                "digest": str(cfg),
            },
            "layers": descs,
        }
        if media_type:
            doc["mediaType"] = OCI_MANIFEST if oci else DOCKER_MANIFEST
        return self.push_manifest(repo, doc)

    def index(
        self, repo: str, children: list[Digest], *, oci: bool = True, media_type: bool = True, salt: str = ""
    ) -> Digest:
        doc: dict = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
                    "size": 1,
                    "digest": str(c),
                    "platform": {"architecture": f"arch{i}", "os": "linux"},
                }
                for i, c in enumerate(children)
            ],
        }
        if salt:
            doc["annotations"] = {"salt": salt}
        if media_type:
            doc["mediaType"] = OCI_INDEX if oci else DOCKER_LIST
        return self.push_manifest(repo, doc)

    def schema1(self, repo: str, layers: list[bytes]) -> Digest:
        sums = [{"blobSum": str(self.push_blob(repo, data))} for data in layers]
        doc = {
            "schemaVersion": 1,
            "name": repo,
            "tag": "old",
            "architecture": "amd64",
            "fsLayers": sums,
            "history": [{"v1Compatibility": "{}"} for _ in sums],
        }
        return self.push_manifest(repo, doc)

    def tag(self, repo: str, tag: str, d: Digest, *, history: list[Digest] = ()) -> None:
        """Point `tag` at `d`; `history` are digests it pointed at before (index entries)."""
        for old in [*history, d]:
            write_link(self.layout.tag_index_link(repo, tag, old), old)
        write_link(self.layout.tag_current_link(repo, tag), d)

    def upload(self, repo: str, uuid: str = "0f1e2d3c-aaaa-bbbb-cccc-000000000001") -> Path:
        up = self.layout.uploads(repo) / uuid
        up.mkdir(parents=True, exist_ok=True)
        (up / "data").write_bytes(b"partial")
        (up / "startedat").write_bytes(b"2026-01-01T00:00:00Z")
        return up

    # --- observing -----------------------------------------------------------------------
    def files(self) -> set[str]:
        """Every file below the storage root, as posix paths relative to docker/registry/v2."""
        out: set[str] = set()
        base = str(self.layout.v2)
        for dirpath, _, filenames in os.walk(base):
            for f in filenames:
                out.add(os.path.relpath(os.path.join(dirpath, f), base))
        return out

    def dirs(self) -> set[str]:
        out: set[str] = set()
        base = str(self.layout.v2)
        for dirpath, dirnames, _ in os.walk(base):
            for d in dirnames:
                out.add(os.path.relpath(os.path.join(dirpath, d), base))
        return out


# Relative-path helpers for asserting exact surviving paths.
def blob_path(d: Digest) -> str:
    return f"blobs/sha256/{d.hex[:2]}/{d.hex}/data"


def layer_path(repo: str, d: Digest) -> str:
    return f"repositories/{repo}/_layers/sha256/{d.hex}/link"


def revision_path(repo: str, d: Digest) -> str:
    return f"repositories/{repo}/_manifests/revisions/sha256/{d.hex}/link"


def tag_paths(repo: str, tag: str, d: Digest) -> set[str]:
    t = f"repositories/{repo}/_manifests/tags/{tag}"
    return {f"{t}/current/link", f"{t}/index/sha256/{d.hex}/link"}
