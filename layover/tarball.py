"""The release tarball's format, decided without touching a disk.

A release tarball is a POSIX (pax) tar of registry storage with `docker/registry/v2/...` at its
root, so `tar -xf` into a registry's /var/lib/registry restores it. Leading files come first,
before the sorted tree: the contents file `layover/contents.json` (layover/contents.py), so a
reader knows what the package holds before it reaches any blob. This module decides every
byte that is not file data: which members exist and in what order, each member's header bytes,
and where each member's data starts. The I/O adapter (layover/adapters/tar_writer.py) only
fills in file data at the offsets planned here, by whichever data path the filesystem allows.

Determinism: the plan depends only on (name, kind, size) of each member, never on the
filesystem, so clone, in-kernel copy and buffered copy produce the same bytes and the same
sha256.

    member at offset o (a multiple of 512), file of size >= ALIGN:
      o         pax 'x' header block        ././@PaxHeader, size = len(records)
      o+512     pax records                 "path=...", ["size=..."], "comment=xxx...": the
                                            comment pads the records so that data lands on
                                            a 4 KiB boundary (and fills its last block exactly)
      d-512     ustar header block
      d         file data                   d % ALIGN == 0: the whole 4 KiB blocks can be
                                            cloned (FICLONERANGE) from the blob file
      d+size    zero padding to 512

    directory, or file smaller than ALIGN: a plain ustar header (pax only when the name does
    not fit ustar), data, zero padding to 512. Aligning these would only cost space: a file
    smaller than one block has nothing to clone.

    end: two zero blocks.

Owner: uid/gid 0 with empty uname/gname. A name would be looked up in the extracting host's
user database; an empty name tells GNU tar, bsdtar and tarfile to use the number, and 0 is
root everywhere, so extraction does not depend on either host's /etc/passwd. mtime is a
constant (0 unless the caller passes one, e.g. SOURCE_DATE_EPOCH); modes are fixed at 0755 for
directories and 0644 for files: the registry needs neither times nor exec bits.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from layover.errors import StorageError

# The contents document (layover/contents.py) is the package's first member, beside docker/: a
# path the registry never reads, found before any blob by a reader that streams the tarball once.
CONTENTS_MEMBER = "layover/contents.json"
# A delta's storage tree lives below this directory, so that a plain `tar -xf` of a delta into
# a registry's root adds nothing the registry reads (docs/customer.md, "Deltas").
DELTA_ROOT = "layover/delta"
# A delta's note for whoever runs plain `tar -xf` on it (layover/delta.py writes it).
DELTA_README = "layover/README.txt"
MAX_CONTENTS_BYTES = 64 << 20  # a 100,000-blob package's contents file is about 20 MB

BLOCK = 512
ALIGN = 4096  # the page / filesystem block size reflinks work in (XFS and btrfs default)
DIR_MODE = 0o755
FILE_MODE = 0o644

_USTAR_SIZE_MAX = 0o77777777777  # 11 octal digits: 8 GiB - 1
_USTAR_TIME_MAX = 0o77777777777
_PAX_NAME = b"././@PaxHeader"  # what Python's tarfile writes; GNU tar and bsdtar ignore it
# " comment=" plus "\n" around the value: a record is "<len> comment=<value>\n"
_COMMENT_OVERHEAD = len(" comment=\n")


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"


@dataclass(frozen=True)
class Entry:
    """One member before layout: its name relative to the storage root, kind and size."""

    name: str  # posix, relative, no trailing slash: "docker/registry/v2/blobs"
    kind: Kind
    size: int = 0  # 0 for directories


@dataclass(frozen=True)
class PlannedMember:
    """Where one member sits in the tarball and the header bytes that precede its data."""

    entry: Entry
    offset: int  # where the member's first header block starts
    header: bytes  # every byte from offset up to data_offset
    data_offset: int  # where the file data starts (== offset + len(header))
    padding: int  # zero bytes after the data, up to the next 512 boundary

    @property
    def aligned(self) -> bool:
        return self.entry.kind is Kind.FILE and self.entry.size >= ALIGN

    @property
    def end(self) -> int:
        return self.data_offset + self.entry.size + self.padding


@dataclass(frozen=True)
class TarPlan:
    members: tuple[PlannedMember, ...]
    trailer_offset: int  # where the two end-of-archive zero blocks start
    size: int  # total tarball size

    @property
    def trailer(self) -> bytes:
        return bytes(2 * BLOCK)


# --- names and order ---------------------------------------------------------------------
def check_name(name: str) -> str:
    """A member name must be relative, normalised and free of `..`; return it unchanged."""
    problem = ""
    if not name:
        problem = "empty member name"
    elif name.startswith("/"):
        problem = "absolute member name"
    elif "\x00" in name:
        problem = "NUL byte in member name"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "member name with an empty, '.' or '..' component"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "member name is not valid UTF-8"
    if problem:
        raise StorageError(
            name,
            f"{problem}: refusing to put it in a release tarball; "
            "the storage tree must hold only plain relative paths",
        )
    return name


def sort_key(name: str) -> tuple[bytes, ...]:
    """Byte order of path components: a directory sorts right before its own contents."""
    return tuple(name.encode("utf-8").split(b"/"))  # UTF-8 never has a "/" byte inside a character


def ordered(entries: Iterable[Entry]) -> list[Entry]:
    """Validate names, refuse duplicates and orphans, and sort for a deterministic tarball."""
    result = sorted(entries, key=lambda e: sort_key(check_name(e.name)))
    dirs: set[str] = set()
    seen: set[str] = set()
    for e in result:
        if e.name in seen:
            raise StorageError(e.name, "listed twice: the member list must name each path once")
        seen.add(e.name)
        parent = e.name.rpartition("/")[0]
        if parent and parent not in dirs:
            raise StorageError(
                e.name,
                f"its parent directory {parent!r} is not a member: "
                "list every directory so extraction recreates it",
            )
        if e.kind is Kind.DIR:
            dirs.add(e.name)
        elif e.size < 0:
            raise StorageError(e.name, f"negative size {e.size}")
    return result


# --- header bytes --------------------------------------------------------------------------
def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated, zero-padded octal field of `width` bytes."""
    return b"%0*o\x00" % (width - 1, value)


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) if `name` fits ustar's 155 + 100 byte fields, else None."""
    if len(name) <= 100:
        return b"", name
    # split at the last slash that leaves prefix <= 155 (never an empty name or prefix); an
    # earlier slash would only leave more than the rest's 100 bytes
    i = name.rfind(b"/", 1, min(len(name) - 2, 155) + 1)
    if i > 0 and len(name) - i - 1 <= 100:
        return name[:i], name[i + 1 :]
    return None


def ustar_header(name: bytes, *, mode: int, size: int, mtime: int, typeflag: bytes) -> bytes:
    """One 512-byte ustar header. A name that does not fit is truncated: the caller must then
    put the full name in a pax `path` record (readers prefer it)."""
    split = _split_ustar(name)
    prefix, short = split if split is not None else (b"", name[:100])
    block = bytearray(
        b"%s%s%s%s%s        %s%s%s"
        % (
            short.ljust(100, b"\x00"),
            _octal(mode, 8),
            _ZERO8 * 2,  # uid, gid
            _octal(size if size <= _USTAR_SIZE_MAX else 0, 12),  # pax `size` carries larger sizes
            _octal(min(mtime, _USTAR_TIME_MAX), 12),
            # the 8 spaces above: the checksum, computed over the block with its field as spaces
            typeflag,
            _LINK_TO_DEVMINOR,
            prefix.ljust(155, b"\x00") + bytes(12),
        )
    )
    assert len(block) == BLOCK, len(block)
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


_ZERO8 = b"%07o\x00" % 0
# linkname (empty), magic, version, uname and gname (empty on purpose, see module docstring),
# devmajor, devminor
_LINK_TO_DEVMINOR = bytes(100) + b"ustar\x00" + b"00" + bytes(32) + bytes(32) + _ZERO8 * 2


def pax_record(key: str, value: bytes) -> bytes:
    """`"<len> key=value\\n"` where <len> counts the whole record, itself included."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def comment_record(total: int) -> bytes:
    """A pax `comment` record of exactly `total` bytes (total >= 12), used as filler."""
    value_len = total - len(str(total)) - _COMMENT_OVERHEAD
    if value_len < 0:
        raise ValueError(f"a comment record cannot be {total} bytes long")
    record = str(total).encode() + b" comment=" + b"x" * value_len + b"\n"
    assert len(record) == total
    return record


_MIN_COMMENT = 12  # the shortest comment record: "11 comment=\n"


def _pad_to_block(n: int) -> int:
    return -n % BLOCK


def _member_header(entry: Entry, offset: int, mtime: int) -> bytes:
    is_dir = entry.kind is Kind.DIR
    name = entry.name.encode("utf-8") + (b"/" if is_dir else b"")
    mode = DIR_MODE if is_dir else FILE_MODE
    typeflag = b"5" if is_dir else b"0"
    ustar = ustar_header(name, mode=mode, size=entry.size, mtime=mtime, typeflag=typeflag)

    records = b""
    if not name.isascii() or _split_ustar(name) is None:
        records += pax_record("path", name)
    if entry.size > _USTAR_SIZE_MAX:
        records += pax_record("size", str(entry.size).encode())
    if mtime > _USTAR_TIME_MAX:
        records += pax_record("mtime", str(mtime).encode())

    aligned = entry.kind is Kind.FILE and entry.size >= ALIGN
    if aligned:
        if not records:
            # always carry the path: a reader then never depends on how ustar split the name
            records = pax_record("path", name)
        # data offset = offset + 512 (pax header) + len(records) + 512 (ustar); make it a
        # multiple of ALIGN with a comment record that also fills the last record block.
        need = -(offset + 2 * BLOCK + len(records)) % ALIGN
        while need < _MIN_COMMENT:
            need += ALIGN
        records += comment_record(need)
    if not records:
        return ustar
    pax = ustar_header(_PAX_NAME, mode=FILE_MODE, size=len(records), mtime=mtime, typeflag=b"x")
    header = pax + records + bytes(_pad_to_block(len(records))) + ustar
    if aligned:
        assert (offset + len(header)) % ALIGN == 0
    return header


def plan(entries: Iterable[Entry], *, mtime: int = 0, first: Sequence[Entry] = ()) -> TarPlan:
    """Lay out every member. Raises StorageError for bad names, duplicates or orphans.

    `first`: files placed before the sorted tree, in the order given, e.g. the contents file
    (`layover/contents.json`), so a reader finds it without reading any blob. They need no
    directory member: every extractor creates a missing parent (their own parents are the
    only ones they may lack)."""
    if mtime < 0:
        raise ValueError("mtime must be >= 0")
    leading = list(first)
    for e in leading:
        check_name(e.name)
        if e.kind is not Kind.FILE or e.size < 0:
            raise StorageError(e.name, "a leading member must be a file with a size >= 0")
    tree = ordered(entries)
    names = [e.name for e in leading]
    clash = set(names) & {e.name for e in tree} or {n for n in names if names.count(n) > 1}
    if clash:
        raise StorageError(sorted(clash)[0], "listed twice: the member list must name each path once")
    members: list[PlannedMember] = []
    offset = 0
    for entry in [*leading, *tree]:
        header = _member_header(entry, offset, mtime)
        data_offset = offset + len(header)
        padding = _pad_to_block(entry.size)
        members.append(PlannedMember(entry, offset, header, data_offset, padding))
        offset = data_offset + entry.size + padding
    return TarPlan(tuple(members), offset, offset + 2 * BLOCK)


def data_regions(member: PlannedMember) -> tuple[int, int]:
    """(clonable, tail): the leading bytes of the file that can be shared block for block,
    and the bytes after them that must be written. Only aligned members clone anything."""
    size = member.entry.size
    if not member.aligned:
        return 0, size
    clonable = size - size % ALIGN
    return clonable, size - clonable


def directories_of(names: Sequence[str]) -> set[str]:
    """Every ancestor directory of `names` (for callers that list files only)."""
    dirs: set[str] = set()
    for n in names:
        parts = n.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs
