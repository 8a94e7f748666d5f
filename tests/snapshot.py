"""Snapshots of a directory tree (the archive, `lower/`) that see what a content hash does not:
type, mode, owner, mtime and extended attributes of every file and directory, plus each file's
sha256. A stage that rewrote a file with the same bytes, chmod-ed it, or left an overlay xattr
behind changes the snapshot.

    before = snapshot(wd.lower)
    ... run ...
    assert_unchanged(before, snapshot(wd.lower))      # byte- and metadata-identical
    assert_only_gained(before, snapshot(wd.lower))    # archive sync added; nothing it had changed

Directory mtimes change when an entry is added below them, so `assert_only_gained` compares a
directory's type, mode, owner and xattrs but not its mtime; files are compared whole.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "dir", "symlink", "other"
    mode: int  # permission bits
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]
    sha256: str = ""  # files only

    def meta(self) -> tuple[str, int, int, int, tuple[tuple[str, bytes], ...]]:
        """Everything but the mtime: what a directory keeps while entries are added below it."""
        return (self.kind, self.mode, self.uid, self.gid, self.xattrs)


Snapshot = dict[str, Entry]


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's content, read in 1 MiB chunks (tarballs are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(path: str) -> Entry:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        kind, digest = "file", sha256_of(path)
    else:
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "other"
        digest = os.readlink(path) if kind == "symlink" else ""
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, _xattrs(path), digest)


def snapshot(root: Path, *, skip_uploads: bool = False) -> Snapshot:
    """Every entry below `root` (relative path -> Entry); `skip_uploads`: leave out `_uploads`
    contents (a registry may purge abandoned uploads on its own)."""
    out: Snapshot = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if skip_uploads and "_uploads" in Path(rel).parts[:-1]:
            dirnames[:] = []
            continue
        out[rel + "/"] = _entry(dirpath)
        for name in filenames:
            out[os.path.join(rel, name)] = _entry(os.path.join(dirpath, name))
        dirnames.sort()
    return out


def differences(before: Snapshot, after: Snapshot, *, gained_ok: bool) -> list[str]:
    problems = []
    for path, was in sorted(before.items()):
        now = after.get(path)
        if now is None:
            problems.append(f"{path}: gone")
        elif was.kind == "dir" and gained_ok:
            if was.meta() != now.meta():
                problems.append(f"{path}: {was.meta()} -> {now.meta()}")
        elif was != now:
            problems.append(f"{path}: {was} -> {now}")
    if not gained_ok:
        problems += [f"{path}: new" for path in sorted(set(after) - set(before))]
    return problems


def assert_unchanged(before: Snapshot, after: Snapshot) -> None:
    """Every entry as it was (content, type, mode, owner, mtime, xattrs), and nothing new."""
    problems = differences(before, after, gained_ok=False)
    assert not problems, f"{len(problems)} change(s) in the tree: " + "; ".join(problems[:10])


def assert_only_gained(before: Snapshot, after: Snapshot) -> None:
    """Every file as it was and every directory with its type, mode, owner and xattrs; new
    entries are allowed (archive sync adds)."""
    problems = differences(before, after, gained_ok=True)
    assert not problems, f"{len(problems)} change(s) to what the tree held: " + "; ".join(problems[:10])
