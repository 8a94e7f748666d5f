"""A package tarball read in place: its members indexed once, each file read by byte range.

A release tarball is an uncompressed tar, so every member's data is one contiguous byte range
of the file. Indexing reads only the headers (tarfile seeks over the data); afterwards any
member, a multi-GiB layer included, streams out of its range with pread, from any thread,
without extracting anything or holding it in memory.

What is refused (PackageError, one line naming the member): a compressed or unreadable tarball,
member names that are absolute or contain `..`, a name listed twice, members that are neither
regular files nor directories (links, devices, sparse files), and a member whose data runs past
the end of the file (a truncated tarball). Nothing here writes a file: names are looked up,
never used as paths.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from layover.errors import PackageError

_PIECE = 1 << 20


@dataclass(frozen=True)
class Member:
    name: str  # normalised: no leading "./", no trailing "/"
    offset: int  # where the data starts in the tarball
    size: int


class TarIndex:
    """Every file member by name, every directory with its children. Thread-safe reads."""

    def __init__(self, path: Path, files: dict[str, Member], dirs: dict[str, set[str]], fd: int) -> None:
        self.path = path
        self._files = files
        self._dirs = dirs
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> TarIndex:
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise PackageError(f"{path}: cannot open the package ({e.strerror})") from None
        try:
            files, dirs = _index(path, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, files, dirs, fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TarIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lookups -------------------------------------------------------------------------
    def member(self, name: str) -> Member | None:
        return self._files.get(name)

    def is_dir(self, name: str) -> bool:
        return name in self._dirs

    def children(self, directory: str) -> list[str]:
        """Names (not paths) directly below `directory`, sorted."""
        return sorted(self._dirs.get(directory, ()))

    def subdirs(self, directory: str) -> list[str]:
        return [c for c in self.children(directory) if f"{directory}/{c}" in self._dirs]

    # --- reading -------------------------------------------------------------------------
    def read(self, name: str, *, limit: int) -> bytes:
        """A small member whole (a link, a manifest); PackageError if it is missing or larger."""
        m = self._files.get(name)
        if m is None:
            raise PackageError(f"{self.path}: member {name} is missing; the package is incomplete")
        if m.size > limit:
            raise PackageError(
                f"{self.path}: member {name} is {m.size} bytes, more than the {limit} such a file may "
                "have; the package is damaged"
            )
        return b"".join(self._pieces(m))

    def reader(self, name: str) -> RangeReader:
        m = self._files.get(name)
        if m is None:
            raise PackageError(f"{self.path}: member {name} is missing; the package is incomplete")
        return RangeReader(self, m)

    def _pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def _pieces(self, m: Member) -> Iterator[bytes]:
        done = 0
        while done < m.size:
            piece = self._pread(min(_PIECE, m.size - done), m.offset + done)
            if not piece:
                raise PackageError(f"{self.path}: member {m.name} ends early; the tarball was truncated")
            done += len(piece)
            yield piece


class RangeReader:
    """A member's bytes as a read-only file object (what an upload streams from)."""

    def __init__(self, index: TarIndex, member: Member) -> None:
        self._index = index
        self._member = member
        self._pos = 0

    @property
    def size(self) -> int:
        return self._member.size

    def __iter__(self) -> Iterator[bytes]:
        while piece := self.read(_PIECE):
            yield piece

    def read(self, n: int = -1) -> bytes:
        left = self._member.size - self._pos
        if n < 0 or n > left:
            n = left
        if n == 0:
            return b""
        data = self._index._pread(n, self._member.offset + self._pos)
        if not data:
            raise PackageError(
                f"{self._index.path}: member {self._member.name} ends early; the tarball was truncated"
            )
        self._pos += len(data)
        return data


def _index(path: Path, file_size: int) -> tuple[dict[str, Member], dict[str, set[str]]]:
    files: dict[str, Member] = {}
    dirs: dict[str, set[str]] = {"": set()}
    try:
        # "r:" = uncompressed only: a compressed tarball has no byte ranges to read in place
        with tarfile.open(path, "r:") as tf:
            seen: set[str] = set()
            for info in tf:
                name = _name(path, info.name)
                if name in seen:
                    raise PackageError(f"{path}: member {name} is listed twice; the package is damaged")
                seen.add(name)
                if info.isdir():
                    _add(dirs, name, is_dir=True)
                    continue
                if not info.isreg() or info.issparse():
                    raise PackageError(
                        f"{path}: member {name} is not a regular file or directory (a link, device or "
                        "sparse file); a Layover package holds none, refusing it"
                    )
                if info.offset_data + info.size > file_size:
                    raise PackageError(
                        f"{path}: member {name} runs past the end of the file; the tarball was truncated"
                    )
                files[name] = Member(name, info.offset_data, info.size)
                _add(dirs, name, is_dir=False)
            # tarfile ends quietly at a header cut short; a whole tar ends with zero blocks
            end = tf.offset
        with path.open("rb") as f:
            f.seek(end)
            marker = f.read(2 * tarfile.BLOCKSIZE)
        if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
            raise PackageError(
                f"{path}: no end-of-archive marker after the last member at byte {end}; the tarball "
                "was truncated"
            )
    except tarfile.CompressionError:
        raise PackageError(
            f"{path}: a compressed tarball; decompress it first (packages are plain tar)"
        ) from None
    except tarfile.ReadError as e:
        raise PackageError(
            f"{path}: not a readable uncompressed tarball ({e}); check it against its .sha256"
        ) from None
    except (EOFError, OSError) as e:
        raise PackageError(f"{path}: cannot read the tarball ({e}); check it against its .sha256") from None
    return files, dirs


def _name(path: Path, raw: str) -> str:
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    bad_part = name != "" and any(part in ("", ".", "..") for part in name.split("/"))
    if raw.startswith("/") or bad_part:
        raise PackageError(f"{path}: member name {raw!r} is absolute or has an empty, '.' or '..' part")
    return name


def _add(dirs: dict[str, set[str]], name: str, *, is_dir: bool) -> None:
    """Record `name` below its parents (a tar need not list every directory)."""
    if is_dir:
        dirs.setdefault(name, set())
    child = name
    while child:
        parent, _, base = child.rpartition("/")
        kids = dirs.setdefault(parent, set())
        if base in kids:
            break
        kids.add(base)
        child = parent
