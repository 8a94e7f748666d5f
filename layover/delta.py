"""Delta packages: every manifest, tag and link of a full package, but only the blob data its
base does not hold (docs/customer.md, "Deltas").

    layover/contents.json        kind "delta": the base (package sha256, release) and every blob
                                 assumed present, with its size; images and blobs describe the
                                 whole release, as in the full package
    layover/README.txt           says what this is and that it needs `layover install`
    layover/delta/docker/...     the storage tree, minus the assumed blobs' data

Why under `layover/delta/`: a plain `tar -xf` of a delta into a registry's storage dir then
writes nothing the registry reads, so it cannot produce tags whose blobs are missing; the
customer's registry keeps serving exactly what it served. `layover install` checks that every
assumed blob is in the storage dir (size; `--deep`: sha256) before it writes anything.

The delta is cut from the full package's tarball, member by member: its data ranges are
aligned there, so on XFS/btrfs the delta's blob data is cloned, not copied.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from layover.adapters.tar_writer import ListedMember, ListedTree, MemoryFile, TarResult, write_tarball
from layover.contents import (
    CONTENTS_MEMBER,
    DELTA_README,
    DELTA_ROOT,
    AssumedBlob,
    Base,
    Contents,
    Delta,
    assemble,
)
from layover.errors import PackageError
from layover.package import Member, PackageRecord, read_contents, read_record, scan_members, sidecar_path
from layover.storage.layout import StorageLayout
from layover.tarball import Entry, Kind
from layover.units import human_bytes


@dataclass(frozen=True)
class DeltaResult:
    tar: TarResult
    contents: Contents
    new_sha256: str | None
    base: PackageRecord

    def summary(self) -> str:
        t = self.contents.totals
        return (
            f"delta {self.tar.path} ({human_bytes(self.tar.size)}, sha256 {self.tar.sha256}): "
            f"from {self.base.contents.release} to {self.contents.release}; carries {t.carried_blobs} blobs "
            f"({human_bytes(t.carried_bytes)}), assumes {t.blobs - t.carried_blobs} "
            f"({human_bytes(t.bytes - t.carried_bytes)})"
        )

    def to_json(self) -> str:
        """The delta's `.json` sidecar: what `layover contents` and a later delta's --base read."""
        return (
            json.dumps(
                {
                    "kind": "delta",
                    "output": str(self.tar.path),
                    "sha256": self.tar.sha256,
                    "tarball_bytes": self.tar.size,
                    "new_sha256": self.new_sha256,
                    "base_sha256": self.base.sha256,
                    "seconds": round(self.tar.seconds, 3),
                    "contents": self.contents.to_obj(),
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )


def default_output(new: Path, base: PackageRecord, label: str | None = None) -> Path:
    """release.tar + base release-1 -> release.from-release-1.tar, beside the full package."""
    stem = new.name.removesuffix(".tar")
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", label) if label else base.label
    return new.with_name(f"{stem}.from-{tag}.tar")


def delta_contents(new: Contents, base: PackageRecord) -> Contents:
    """NEW's contents as a delta against `base`: the blobs both hold (same digest and size) are
    assumed, not carried."""
    if new.kind != "full":
        raise PackageError(
            "a delta is cut from a full package, and this one is a delta; give the full "
            "package of the new release"
        )
    if base.sha256 is None:
        raise PackageError(
            f"{base.source}: no package sha256 recorded, so the delta could not name its base; "
            "give the base's tarball (with its .sha256) or its .json sidecar"
        )
    have = {b.digest: b.size for b in base.contents.blobs}
    assumed = tuple(
        AssumedBlob(digest=b.digest, size=b.size) for b in new.blobs if have.get(b.digest) == b.size
    )
    return assemble(
        new.images,
        list_source=new.list_source,
        list_commit=new.list_commit,
        sizes={b.digest: b.size for b in new.blobs},
        delta=Delta(
            base=Base(sha256=base.sha256, release=base.contents.release, kind=base.contents.kind),
            assumed=assumed,
        ),
    )


def readme(c: Contents) -> bytes:
    assert c.delta is not None
    b = c.delta.base
    return (
        "This is a Layover delta package.\n\n"
        f"It brings {c.release} to a registry that already holds\n"
        f"{b.release} (package sha256 {b.sha256}).\n"
        f"It carries only the {c.totals.carried_blobs} blobs the registry does not have yet; the other\n"
        f"{len(c.delta.assumed)} must be there already.\n\n"
        "Install it with:\n\n"
        "    layover install THIS.tar --storage /var/lib/registry\n\n"
        "which checks that every blob it assumes is there before it writes anything.\n"
        "A plain `tar -xf` only unpacks it below layover/delta/, where no registry looks:\n"
        "it changes nothing the registry serves. Delete that directory afterwards.\n"
    ).encode()


def write_delta(
    new_tar: Path, base: PackageRecord, output: Path, *, new_sha256: str | None = None
) -> DeltaResult:
    """Write the delta of the full package `new_tar` against `base`, with `.sha256` and `.json`."""
    new_tar = Path(new_tar)
    new = read_contents(new_tar)
    contents = delta_contents(new, base)
    fd = os.open(new_tar, os.O_RDONLY | os.O_CLOEXEC)
    try:
        members = scan_members(new_tar, fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    listed = _members(new_tar, members, contents)
    result = write_tarball(
        ListedTree(tuple(listed)),
        output,
        first=[MemoryFile(CONTENTS_MEMBER, contents.to_bytes()), MemoryFile(DELTA_README, readme(contents))],
    )
    done = DeltaResult(result, contents, new_sha256, base)
    side = sidecar_path(output)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(done.to_json())
    os.replace(tmp, side)
    return done


def _members(new_tar: Path, members: list[Member], contents: Contents) -> list[ListedMember]:
    """The full package's storage members below layover/delta/, minus the assumed blobs (their
    data and directories, and a blobs/sha256/<hh> directory that has nothing left)."""
    paths = StorageLayout(Path(".")).strings()
    assumed = set(contents.assumed)
    carried = set(contents.blob_sizes) - assumed
    skip = {paths.blob_dir(h) for h in assumed} | {paths.blob_data(h) for h in assumed}
    skip |= {os.path.dirname(paths.blob_dir(h)) for h in assumed} - {
        os.path.dirname(paths.blob_dir(h)) for h in carried
    }
    out = [ListedMember(Entry("layover", Kind.DIR)), ListedMember(Entry(DELTA_ROOT, Kind.DIR))]
    for m in members:
        if m.name == CONTENTS_MEMBER or m.name in skip:
            continue
        if not (m.name == "docker" or m.name.startswith("docker/")):
            raise PackageError(
                f"{new_tar}: member {m.name!r} is not registry storage; give a full Layover package"
            )
        name = f"{DELTA_ROOT}/{m.name}"
        if m.is_dir:
            out.append(ListedMember(Entry(name, Kind.DIR)))
        else:
            out.append(ListedMember(Entry(name, Kind.FILE, m.size), new_tar, m.offset))
    return out


def recorded_base(releases: Path, commit: str, source_prefix: str) -> PackageRecord | None:
    """The newest package this work dir built from the list at `commit` (its releases/ records),
    whose list source starts with `source_prefix` (repository:path@)."""
    found: list[tuple[float, PackageRecord]] = []
    for path in sorted(releases.glob("*.json")) if releases.is_dir() else []:
        try:
            record = read_record(path)
        except PackageError:
            continue  # a record from before contents were kept: not a usable base
        c = record.contents
        if c.kind == "full" and c.list_commit == commit and c.list_source.startswith(source_prefix):
            found.append((path.stat().st_mtime, record))
    return max(found, key=lambda f: f[0])[1] if found else None
