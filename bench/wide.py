"""The wide fixture: many small images on a few shared bases, where the cost per image decides.

    12 base layers        1-3 MB each, shared: every image has one of 4 "os" layers and one of 8
                          "runtime" layers (so every base blob is in ~50-150 repositories)
    N images              (600 by default) one repository each, in 10 namespaces; each image is
                          its two base layers + one app layer of 40-400 KB + a config
    every 20th image      a 2-platform OCI index (amd64 + arm64, untagged children, one app
                          layer per platform); every 3rd other image an OCI manifest, the rest
                          Docker v2 schema 2
    release 2             N/10 images get a new app layer and tag (every 20th of them an
                          index), N/50 are dropped, ceil(N × 14/600) are new

At N = 600: 60 changed, 12 dropped, 14 new, as in issue 15. Layers are gzip'd tars of one file
of seeded pseudo-random bytes (incompressible, like the compressed content of a real layer), so
the same N gives the same digests on every machine and no deb cache is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import random
import tarfile
from pathlib import Path

from bench.fixture import Blob, Fixture, FixtureImage
from layover.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)
from layover.testing.images import SampleManifest

WIDE_VERSION = 1
BASES = 12
_NAMESPACES = ("platform", "payments", "search", "data", "tools", "edge", "ml", "identity", "ops", "web")
_MTIME = 1_700_000_000


def _layer(blob_dir: Path, name: str, size: int) -> tuple[Blob, str]:
    """A gzip'd tar holding `size` seeded random bytes; (blob, diff_id). Cached by name."""
    marker = (
        blob_dir
        / "wide-specs"
        / (hashlib.sha256(f"{WIDE_VERSION} {name} {size}".encode()).hexdigest() + ".json")
    )
    if marker.exists():
        d = json.loads(marker.read_text())
        return Blob(d["digest"], d["size"], blob_dir / d["digest"][7:]), d["diff_id"]
    data = random.Random(f"wide {name}").randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(f"opt/{name.replace('/', '_')}.bin")
        info.size, info.mtime, info.mode = size, _MTIME, 0o644
        tf.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, compresslevel=1, mtime=0)
    blob = _write(blob_dir, gz)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {"digest": blob.digest, "size": blob.size, "diff_id": "sha256:" + hashlib.sha256(tar).hexdigest()}
        )
    )
    return blob, "sha256:" + hashlib.sha256(tar).hexdigest()


def _write(blob_dir: Path, data: bytes) -> Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_dir / digest[7:]
    if not path.exists():
        blob_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return Blob(digest, len(data), path)


def _manifest(oci: bool, config: Blob, layers: list[Blob]) -> SampleManifest:
    mt = OCI_MANIFEST if oci else DOCKER_MANIFEST
    doc = {
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {
            "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
            "size": config.size,
            "digest": config.digest,
        },
        "layers": [
            {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": b.size, "digest": b.digest}
            for b in layers
        ],
    }
    return SampleManifest(json.dumps(doc, indent=3).encode(), mt)


def build(images: int, cache: Path) -> Fixture:
    """Release 1 with `images` images and release 2 after it, blobs written into the cache."""
    blob_dir = cache / "blobs"
    rng = random.Random(f"wide plan {WIDE_VERSION}")
    bases = [_layer(blob_dir, f"base-{i}", rng.randint(1_000_000, 3_000_000)) for i in range(BASES)]
    changed_n, dropped_n, new_n = images // 10, images // 50, math.ceil(images * 14 / 600)

    def image(i: int, version: int, tag: str) -> FixtureImage:
        ns = _NAMESPACES[i % len(_NAMESPACES)]
        repo = f"{ns}/svc-{i:04d}"
        arches = ("amd64", "arm64") if i % 20 == 0 else ("amd64",)
        oci = i % 20 == 0 or i % 3 == 0
        app_size = random.Random(f"wide size {i}").randint(40_000, 400_000)
        base_blobs = [bases[i % 4], bases[4 + (i // 4) % 8]]
        children, blobs = [], []
        for arch in arches:
            app = _layer(blob_dir, f"{repo}@{arch}/v{version}", app_size)
            layers = [*base_blobs, app]
            cfg = json.dumps(
                {
                    "architecture": arch,
                    "os": "linux",
                    "created": "2024-06-01T00:00:00Z",
                    "config": {"Cmd": [f"/opt/svc-{i:04d}"], "Labels": {"version": str(version)}},
                    "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
            config = _write(blob_dir, cfg)
            blobs += [config, *(b for b, _ in layers)]
            children.append(_manifest(oci, config, [b for b, _ in layers]))
        if len(arches) == 1:
            return FixtureImage(repo, tag, children[0], (), tuple(blobs))
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": c.media_type,
                    "size": len(c.data),
                    "digest": str(c.digest),
                    "platform": {"architecture": a, "os": "linux"},
                }
                for c, a in zip(children, arches, strict=True)
            ],
        }
        return FixtureImage(
            repo,
            tag,
            SampleManifest(json.dumps(doc, indent=3).encode(), OCI_INDEX),
            tuple(children),
            tuple(blobs),
        )

    # spread the changes and drops over the list; index images (every 20th) among the changed
    step = images / max(changed_n, 1)
    changed = {int(k * step) for k in range(changed_n)}
    dropped = {int(k * images / max(dropped_n, 1)) + 7 for k in range(dropped_n)} - changed
    r1 = tuple(image(i, 1, "1.0.0") for i in range(images))
    r2 = tuple(
        image(i, 2, "1.1.0") if i in changed else r1[i] for i in range(images) if i not in dropped
    ) + tuple(image(images + k, 1, "1.0.0") for k in range(new_n))
    return Fixture(float(images), r1, r2, name=f"wide{images}-v{WIDE_VERSION}")
