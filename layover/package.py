"""A package on disk: the tarball, its `.sha256` and its `.json` sidecar.

    release.tar          the tarball; its first member is the contents file
    release.tar.sha256   `<hex>  release.tar` (sha256sum -c format)
    release.tar.json     the run report, with the same contents document under `contents`

Where the contents come from: a tarball's first member, or a `.json` holding either a run
report (the sidecar, a work dir's `releases/<sha256>.json`) or a bare contents document.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from layover.attached import recorded_attachments
from layover.contents import CONTENTS_MEMBER, MAX_CONTENTS_BYTES, SCHEMA, Contents, parse
from layover.errors import PackageError, UsageError
from layover.imagelist import ImageList
from layover.storage.hashing import sha256_file
from layover.storage.verify import Claims, ClaimsReader, Declared

_HEX = re.compile(r"[0-9a-f]{64}")


def checksum_path(tarball: Path) -> Path:
    return tarball.with_name(tarball.name + ".sha256")


def sidecar_path(tarball: Path) -> Path:
    return tarball.with_name(tarball.name + ".json")


@dataclass(frozen=True)
class PackageRecord:
    """A package as a base or a comparison needs it: what it holds, and which tarball it is."""

    contents: Contents
    sha256: str | None  # the tarball's sha256, when known
    source: Path  # the file it was read from

    @property
    def label(self) -> str:
        """A short name for file names: `release-1` for release-1.tar or release-1.tar.json."""
        name = self.source.name.removesuffix(".json").removesuffix(".tar")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "base"


def read_contents(path: Path) -> Contents:
    """The contents of a tarball (its first member) or of a `.json` (sidecar or contents)."""
    return read_record(path, need_sha256=False).contents


def read_record(path: Path, *, need_sha256: bool = True) -> PackageRecord:
    """The contents and the tarball's sha256. For a tarball the sha256 comes from its `.sha256`,
    or is computed when there is none (and `need_sha256`)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such package (give a release tarball or its .json)")
    if _is_tar(path):
        contents = _contents_member(path)
        sha = None
        if need_sha256:
            sha = (
                _sha256_from_file(checksum_path(path))
                if checksum_path(path).is_file()
                else sha256_file(path)[0]
            )
        return PackageRecord(contents, sha, path)
    return _from_json(path)


def expected_sha256(tarball: Path, override: str | None) -> str:
    """The checksum the tarball must have: `--sha256 HEX`, else its `.sha256` file."""
    if override is not None:
        hex_ = override.lower().removeprefix("sha256:")
        if not _HEX.fullmatch(hex_):
            raise UsageError(f"--sha256 {override!r}: give the 64 hex digits of the package's sha256")
        return hex_
    side = checksum_path(tarball)
    if not side.is_file():
        raise PackageError(
            f"{side}: missing, so {tarball.name} cannot be checked; copy the .sha256 that "
            "came with it next to it, or give --sha256 HEX (or --no-checksum to skip the check)"
        )
    return _sha256_from_file(side)


def _sha256_from_file(side: Path) -> str:
    try:
        text = side.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise PackageError(f"{side}: cannot read ({e.strerror})") from None
    first = text.split()[0].lower() if text.split() else ""
    if not _HEX.fullmatch(first):
        raise PackageError(f"{side}: not a sha256sum line ('<64 hex>  <file>'); copy the original .sha256")
    return first


def _is_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    return len(head) == 512 and head[257:262] == b"ustar"


def _contents_member(path: Path) -> Contents:
    try:
        with tarfile.open(path, "r:") as tf:
            first = tf.next()
            if first is None or first.name != CONTENTS_MEMBER or not first.isreg():
                raise PackageError(
                    f"{path}: the first member is {first.name if first else 'missing'!r}, not "
                    f"{CONTENTS_MEMBER}: the package was made before Layover recorded its "
                    "contents, or not by Layover; rebuild it"
                )
            if first.size > MAX_CONTENTS_BYTES:
                raise PackageError(f"{path}: {CONTENTS_MEMBER} is {first.size} bytes, too large to be one")
            f = tf.extractfile(first)
            assert f is not None
            data = f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PackageError(
            f"{path}: cannot read it as a tar archive ({e}); the file is damaged or no package"
        ) from None
    return parse(data, f"{path}:{CONTENTS_MEMBER}")


def _from_json(path: Path) -> PackageRecord:
    if os.path.getsize(path) > 4 * MAX_CONTENTS_BYTES:
        raise PackageError(f"{path}: too large to be a package's .json")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise PackageError(f"{path}: not a package tarball and not JSON ({e})") from None
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        return PackageRecord(parse(path.read_bytes(), str(path)), None, path)
    if not isinstance(doc, dict) or not isinstance(doc.get("contents"), dict):
        raise PackageError(
            f"{path}: has no `contents`: the package was made before Layover recorded its "
            "contents; rebuild it, or give the tarball"
        )
    sha = doc.get("sha256")
    sha = sha if isinstance(sha, str) and _HEX.fullmatch(sha) else None
    contents = parse(json.dumps(doc["contents"]).encode(), f"{path}: contents")
    return PackageRecord(contents, sha, path)


# --- a tarball's members, read safely ----------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    name: str
    is_dir: bool
    size: int
    offset: int  # where its data starts in the tarball


def refuse(package: Path, what: str) -> PackageError:
    """A package refused before anything changed: one line naming the package and what is wrong."""
    return PackageError(f"{package}: {what}; refusing the package, nothing was changed")


def scan_members(package: Path, fd: int, file_size: int) -> list[Member]:
    """Every member's header of the tarball open as `fd`, checked: regular files and directories
    only, plain relative names, no setuid/setgid/sticky bits, no duplicates, data inside the file,
    an end-of-archive marker. No member data is read (tarfile seeks over it)."""
    members: list[Member] = []
    seen: set[str] = set()
    with os.fdopen(os.dup(fd), "rb") as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tf:
                for ti in tf:
                    members.append(_member(package, ti, file_size))
                    if ti.name in seen:
                        raise refuse(package, f"member {ti.name!r} appears twice")
                    seen.add(ti.name)
                end = tf.offset
        except tarfile.TarError as e:
            raise refuse(package, f"not a readable tar archive ({e}): truncated or damaged") from None
    if os.pread(fd, 1024, end) != bytes(1024):
        raise refuse(
            package,
            f"no end-of-archive marker after the last member (at byte {end}): the "
            "tarball is truncated; fetch it again",
        )
    if not members:
        raise refuse(package, "the tarball is empty")
    return members


def _member(package: Path, ti: tarfile.TarInfo, file_size: int) -> Member:
    name = ti.name
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in name.split("/"))
    ):
        raise refuse(package, f"member {name!r} has an absolute or non-normal path ('..', '.', '//')")
    kinds = {
        tarfile.SYMTYPE: "a symbolic link",
        tarfile.LNKTYPE: "a hard link",
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a fifo",
        tarfile.CONTTYPE: "a contiguous file",
        tarfile.GNUTYPE_SPARSE: "a sparse file",
    }
    if (
        ti.type in kinds
        or ti.issparse()
        or not (ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) or ti.isdir())
    ):
        what = kinds.get(ti.type, f"of tar type {ti.type!r}")
        raise refuse(package, f"member {name!r} is {what}: a package holds only files and directories")
    if ti.mode & 0o7000:
        raise refuse(package, f"member {name!r} has setuid, setgid or sticky bits ({ti.mode:o})")
    if ti.offset_data + ti.size > file_size:
        raise refuse(package, f"member {name!r} runs past the end of the file: the tarball is truncated")
    return Member(name, ti.isdir(), 0 if ti.isdir() else ti.size, ti.offset_data)


def claims_reader(images: ImageList) -> ClaimsReader:
    """How `layover verify` reads a tarball's contents member (storage/verify.py's Claims): the
    attached artifacts it records for `images` are accepted as images of the package
    (docs/attached.md); a delta's assumed blobs and per-image lists stand in for its base."""

    def read(data: bytes, where: str) -> Claims:
        contents = parse(data, where)
        checked = recorded_attachments(contents, images)
        if contents.delta is None:
            return Claims(checked, attached=len(checked) - len(images))
        return Claims(
            checked,
            attached=len(checked) - len(images),
            assumed=frozenset(contents.assumed),
            declared={i.ref.key: Declared(tuple(i.manifests), tuple(i.blobs)) for i in contents.images},
            base=contents.delta.base.release,
        )

    return read
