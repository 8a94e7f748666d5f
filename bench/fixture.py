"""Deterministic release history for the benchmark: real-file layers pushed into a CI registry.

Layers are gzip'd tars (mtime 0, sorted plan, fixed owners/mtimes) of the contents of the
Debian packages in an apt cache (default /var/cache/apt/archives), taken in sorted file-name
order against a size budget, so they compress like real image layers; they are streamed into
files through layover.testing.images.LayerWriter, and configs, manifests and indexes are built
by the same module that builds the sample releases. Same machine + same scale + same deb cache
-> same bytes and digests on every run.

    4 bases        base/debian (os), base/python, base/java, base/node (os + runtime layer)
    60 apps        platform/*, apps/team-a/*, apps/team-b/*, data/*, tools/*, lib, lib/tools
                   each: base layers + a deps layer + a small top (app) layer + config
    multi-arch     3 Docker manifest lists and 2 OCI indexes (amd64 + arm64, untagged children)
    OCI types      the 2 indexes and every 5th single-arch app use OCI manifests/layers
    release 2      every 10th app gets a new top layer and tag, 2 apps dropped, 2 added

`scale` multiplies every layer budget; scale 1.0 is about 1.5 GB of compressed blobs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from layover.reference import Digest
from layover.testing.images import (
    DOCKER,
    DOCKER_INDENT,
    FIXED_MTIME,
    OCI,
    LayerWriter,
    Platform,
    SampleDescriptor,
    SampleManifest,
    image_config,
    image_manifest,
    index_manifest,
)

FIXTURE_VERSION = 4
DEFAULT_DEB_DIR = Path("/var/cache/apt/archives")
MiB = 1024 * 1024

# Uncompressed budgets at scale 1.0, tuned so the compressed total is about 1.5 GB: with
# the previous budgets (x1/1.35) scale 0.2 gave 224 MB; small scales are inflated by the
# 64 KiB minimum layer and do not extrapolate.
BASE_BUDGETS = {"os": 150 * MiB, "python": 120 * MiB, "java": 190 * MiB, "node": 110 * MiB}
APP_DEPS_MEAN = 60 * MiB
APP_TOP_MEAN = 8 * MiB
CREATED = "2024-06-01T00:00:00Z"  # in every config


@dataclass(frozen=True)
class LayerSpec:
    """What goes into one layer: a slice of the deb pool, a budget and a unique marker file."""

    name: str
    debs: tuple[str, ...]
    budget: int
    salt: str


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int
    path: Path  # content-addressed file in the blob cache

    def descriptor(self, media_type: str) -> SampleDescriptor:
        return SampleDescriptor(media_type, Digest.parse(self.digest), self.size)


@dataclass(frozen=True)
class FileLayer:
    blob: Blob
    diff_id: str


@dataclass(frozen=True)
class FixtureImage:
    repository: str
    tag: str
    manifest: SampleManifest  # what the tag points at (image manifest, list or index)
    children: tuple[SampleManifest, ...]  # untagged platform manifests of a list/index
    blobs: tuple[Blob, ...]  # configs and layers, every platform

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class Fixture:
    scale: float
    release1: tuple[FixtureImage, ...]
    release2: tuple[FixtureImage, ...]
    name: str = ""  # "" for the deb fixture; bench/wide.py names its own ("wide600-v1")

    @property
    def key(self) -> str:
        """Names the CI registry's cached storage: one per fixture and size."""
        return self.name or f"s{self.scale}-v{FIXTURE_VERSION}"

    def release(self, n: int) -> tuple[FixtureImage, ...]:
        return self.release1 if n == 1 else self.release2

    def all_images(self) -> tuple[FixtureImage, ...]:
        seen: dict[str, FixtureImage] = {}
        for img in self.release1 + self.release2:
            seen.setdefault(img.ref, img)
        return tuple(seen.values())

    def list_text(self, n: int) -> str:
        what = self.name or f"v{FIXTURE_VERSION}, scale {self.scale}"
        lines = [f"# layover bench fixture {what}, release {n}"]
        lines += [img.ref for img in self.release(n)]
        return "\n".join(lines) + "\n"

    def blob_digests(self, n: int) -> frozenset[str]:
        """Every blob (manifests included) that release n needs."""
        out: set[str] = set()
        for img in self.release(n):
            out.add(str(img.manifest.digest))
            out.update(str(c.digest) for c in img.children)
            out.update(b.digest for b in img.blobs)
        return frozenset(out)

    def blob_bytes(self, digests: frozenset[str]) -> int:
        sizes: dict[str, int] = {}
        for img in self.all_images():
            sizes[str(img.manifest.digest)] = img.manifest.size
            sizes.update((str(c.digest), c.size) for c in img.children)
            sizes.update((b.digest, b.size) for b in img.blobs)
        return sum(sizes[d] for d in digests)


# --- the deb pool ------------------------------------------------------------------------


@dataclass
class _Pool:
    """Sorted debs with their installed sizes; layers take consecutive slices."""

    debs: list[tuple[str, int]]
    cursor: int = 0
    laps: int = field(default=0)

    def take(self, budget: int) -> tuple[tuple[str, ...], int]:
        taken: list[str] = []
        total = 0
        while total < budget:
            path, size = self.debs[self.cursor]
            taken.append(path)
            total += size
            self.cursor += 1
            if self.cursor == len(self.debs):
                self.cursor, self.laps = 0, self.laps + 1
        return tuple(taken), self.laps


def deb_pool(deb_dir: Path, cache: Path) -> list[tuple[str, int]]:
    """Every .deb in deb_dir (sorted) with its Installed-Size in bytes.

    The first listing is pinned in the cache and reused while all its files exist: apt adds
    debs to its cache whenever anything is installed, and one new name early in the sort
    order would shift every layer's slice and change every digest.
    """
    pinned = cache / f"debpool-pinned-{hashlib.sha256(str(deb_dir).encode()).hexdigest()[:8]}.json"
    if pinned.exists():
        pool = [(str(deb_dir / n), s) for n, s in json.loads(pinned.read_text())]
        if all(os.path.exists(p) for p, _ in pool):
            return pool
    debs = sorted(p.name for p in deb_dir.glob("*.deb"))
    if len(debs) < 20:
        raise SystemExit(
            f"bench fixture: only {len(debs)} .deb files in {deb_dir}; fill the cache with "
            "`apt-get install --download-only <packages>` or pass --deb-dir"
        )
    key = hashlib.sha256("\n".join(debs).encode()).hexdigest()[:16]
    index = cache / f"debpool-{key}.json"
    if index.exists():
        pinned.write_text(index.read_text())
        return [(str(deb_dir / n), s) for n, s in json.loads(index.read_text())]
    sizes = []
    for name in debs:
        out = subprocess.run(
            ["dpkg-deb", "-f", str(deb_dir / name), "Installed-Size"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        kib = int(out) if out.isdigit() else 0
        if kib > 16:  # skip empty transitional packages
            sizes.append((name, kib * 1024))
    cache.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(sizes))
    pinned.write_text(json.dumps(sizes))
    return [(str(deb_dir / n), s) for n, s in sizes]


# --- building one layer ------------------------------------------------------------------


def _members(deb: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    # stderr is dropped: closing the pipe early makes dpkg-deb complain about SIGPIPE.
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for m in tf:
                yield m, tf
    finally:
        proc.stdout.close()
        proc.wait()


def build_layer(spec: LayerSpec, blob_dir: Path) -> FileLayer:
    """Write one gzip'd layer tar into the blob cache; return its digests. Deterministic."""
    marker = blob_dir / "specs" / (hashlib.sha256(repr(spec).encode()).hexdigest() + ".json")
    if marker.exists():
        d = json.loads(marker.read_text())
        return FileLayer(Blob(d["digest"], d["size"], blob_dir / d["digest"][7:]), d["diff_id"])
    blob_dir.mkdir(parents=True, exist_ok=True)
    tmp = blob_dir / f".tmp-{os.getpid()}"
    with open(tmp, "wb") as raw:
        # GNU tar headers (not the samples' PAX) are part of these layers' bytes: keep them.
        writer = LayerWriter(raw, tar_format=tarfile.GNU_FORMAT)
        with writer as out:
            salt = spec.salt.encode()
            ti = tarfile.TarInfo(f"etc/layer-{spec.name.replace('/', '_')}")
            ti.size, ti.mtime, ti.mode = len(salt), FIXED_MTIME, 0o644
            out.addfile(ti, io.BytesIO(salt))
            written = 0
            seen: set[str] = set()  # docker refuses a layer with a path twice
            for deb in spec.debs:
                for m, tf in _members(deb):
                    if written >= spec.budget:
                        break
                    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                        continue
                    m.mtime, m.uid, m.gid, m.uname, m.gname = FIXED_MTIME, 0, 0, "root", "root"
                    m.name = m.name.removeprefix("./")
                    if not m.name or m.name in seen:
                        continue
                    if m.islnk():  # a hard link to a file we skipped would not extract
                        m.linkname = m.linkname.removeprefix("./")
                        if m.linkname not in seen:
                            continue
                    if m.isfile() and m.size > spec.budget - written:
                        continue  # one huge binary must not blow a small layer's budget
                    seen.add(m.name)
                    if m.isfile():
                        out.addfile(m, tf.extractfile(m))
                        written += m.size
                    else:
                        out.addfile(m)
                if written >= spec.budget:
                    break
    digest, diff_id = str(writer.digest), str(writer.diff_id)
    final = blob_dir / digest[7:]
    os.replace(tmp, final)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"digest": digest, "size": writer.size, "diff_id": diff_id}))
    return FileLayer(Blob(digest, writer.size, final), diff_id)


# --- the release plan --------------------------------------------------------------------

_NAMESPACES = (
    ("platform", 12),
    ("apps/team-a", 14),
    ("apps/team-b", 14),
    ("data", 10),
    ("tools", 8),
)
_WORDS = (
    "api",
    "auth",
    "billing",
    "cache",
    "catalog",
    "gateway",
    "ingest",
    "indexer",
    "mailer",
    "metrics",
    "notify",
    "orders",
    "payments",
    "proxy",
    "reports",
    "scheduler",
    "search",
    "session",
    "storage",
    "sync",
    "web",
    "worker",
)


@dataclass(frozen=True)
class _AppPlan:
    repository: str
    base: str  # os | python | java | node
    arches: tuple[str, ...]
    kind: str  # docker | oci | docker-list | oci-index
    deps_budget: int
    top_budget: int


def _plan_apps() -> tuple[list[_AppPlan], list[_AppPlan]]:
    """60 release-1 apps plus 2 apps new in release 2."""
    rng = random.Random(20240601)
    names: list[str] = ["lib", "lib/tools"]
    for ns, count in _NAMESPACES:
        for i in range(count):
            names.append(f"{ns}/{_WORDS[(i * 7 + len(ns)) % len(_WORDS)]}-{i}")
    names = [*names[:60], "apps/team-a/newcomer", "platform/fresh-start"]
    plans: list[_AppPlan] = []
    for i, name in enumerate(names):
        base = ("os", "python", "java", "node")[i % 4]
        arches: tuple[str, ...]
        if i in (3, 21, 40):
            kind, arches = "docker-list", ("amd64", "arm64")
        elif i in (11, 33):
            kind, arches = "oci-index", ("amd64", "arm64")
        else:
            kind, arches = ("oci" if i % 5 == 0 else "docker"), ("amd64",)
        plans.append(
            _AppPlan(
                name,
                base,
                arches,
                kind,
                int(APP_DEPS_MEAN * rng.uniform(0.3, 1.7)),
                int(APP_TOP_MEAN * rng.uniform(0.3, 1.7)),
            )
        )
    return plans[:60], plans[60:]


def _config(arch: str, layers: list[FileLayer], name: str) -> bytes:
    return image_config(
        Platform(arch),
        [Digest.parse(layer.diff_id) for layer in layers],
        cmd=[f"/usr/local/bin/{name.rsplit('/', 1)[-1]}"],
        labels={"org.example.image": name},
        history=[f"layer {i}" for i in range(len(layers))],
        created=CREATED,
        sort_keys=True,
    )


def _write_blob(blob_dir: Path, data: bytes) -> Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_dir / digest[7:]
    if not path.exists():
        blob_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return Blob(digest, len(data), path)


def build(scale: float, cache: Path, deb_dir: Path = DEFAULT_DEB_DIR, jobs: int = 2) -> Fixture:
    """Plan every layer, build the missing ones in parallel, assemble both releases."""
    pool = _Pool(deb_pool(deb_dir, cache))
    blob_dir = cache / "blobs"
    specs: dict[str, LayerSpec] = {}

    def spec(name: str, budget: float) -> None:
        b = max(int(budget * scale), 64 * 1024)
        debs, laps = pool.take(b)
        specs[name] = LayerSpec(name, debs, b, f"{name} v{FIXTURE_VERSION} lap {laps}\n")

    for base, budget in BASE_BUDGETS.items():
        spec(f"base/{base}", budget)
    spec("base/os@arm64", BASE_BUDGETS["os"])
    apps1, added = _plan_apps()
    changed = {p.repository for i, p in enumerate(apps1) if i % 10 == 5}  # 6 of 60, incl. 1 list
    dropped = {apps1[8].repository, apps1[47].repository}
    for p in apps1 + added:
        for arch in p.arches:
            spec(f"{p.repository}@{arch}/deps", p.deps_budget)
            spec(f"{p.repository}@{arch}/top", p.top_budget)
            if p.repository in changed:
                spec(f"{p.repository}@{arch}/top2", p.top_budget)

    with ProcessPoolExecutor(max_workers=jobs) as ex:
        names = sorted(specs, key=lambda n: -specs[n].budget)  # big first: better packing
        built = dict(
            zip(names, ex.map(build_layer, [specs[n] for n in names], [blob_dir] * len(names)), strict=False)
        )

    def base_layers(base: str, arch: str) -> list[FileLayer]:
        os_layer = built["base/os@arm64" if arch == "arm64" else "base/os"]
        return [os_layer] if base == "os" else [os_layer, built[f"base/{base}"]]

    def image(
        repo: str, tag: str, kind: str, arches: tuple[str, ...], layer_sets: dict[str, list[FileLayer]]
    ) -> FixtureImage:
        fmt = OCI if kind.startswith("oci") else DOCKER
        children: list[SampleManifest] = []
        blobs: list[Blob] = []
        for arch in arches:
            cfg = _write_blob(blob_dir, _config(arch, layer_sets[arch], repo))
            blobs += [cfg] + [layer.blob for layer in layer_sets[arch]]
            # The bench writes every manifest, OCI ones too, indented as docker does.
            children.append(
                image_manifest(
                    fmt,
                    cfg.descriptor(fmt.config),
                    [x.blob.descriptor(fmt.layer) for x in layer_sets[arch]],
                    indent=DOCKER_INDENT,
                    platform=Platform(arch),
                )
            )
        if kind in ("docker", "oci"):
            return FixtureImage(repo, tag, children[0], (), tuple(blobs))
        return FixtureImage(
            repo, tag, index_manifest(fmt, children, indent=DOCKER_INDENT), tuple(children), tuple(blobs)
        )

    def app(p: _AppPlan, top: str, tag: str) -> FixtureImage:
        sets = {
            a: [
                *base_layers(p.base, a),
                built[f"{p.repository}@{a}/deps"],
                built[f"{p.repository}@{a}/{top}"],
            ]
            for a in p.arches
        }
        return image(p.repository, tag, p.kind, p.arches, sets)

    bases = [
        image(
            f"base/{b}",
            {"os": "12", "python": "3.11", "java": "17", "node": "20"}[b],
            "docker",
            ("amd64",),
            {"amd64": base_layers(b, "amd64")},
        )
        for b in BASE_BUDGETS
    ]
    r1 = bases + [app(p, "top", "1.4.0") for p in apps1]
    r2 = bases + [
        app(p, "top2", "1.4.1") if p.repository in changed else app(p, "top", "1.4.0")
        for p in apps1
        if p.repository not in dropped
    ]
    r2 += [app(p, "top", "1.0.0") for p in added]
    return Fixture(scale, tuple(r1), tuple(r2))
