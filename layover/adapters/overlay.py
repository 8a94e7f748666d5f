"""overlayfs mounts of the archive (lower) under a disposable upper layer.

As root: `mount -t overlay`. Otherwise: `fuse-overlayfs` (unmounted with `fusermount3 -u`).
`reset` is the pipeline's overlay stage: whatever a previous (possibly crashed) run left in
upper/work/merged is thrown away and a fresh view of lower is mounted.

Never move directories inside `merged` (renaming a lower directory fails with EXDEV); delete
or copy instead (docs/design.md §3).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from layover.adapters.run import run, start_detached
from layover.errors import CommandError, MountError

log = logging.getLogger(__name__)

_MOUNTINFO = Path("/proc/self/mountinfo")
_UNSAFE_OPTION_CHARS = (",", ":", "\n")  # would split or extend the -o option string


@dataclass(frozen=True)
class MountEntry:
    mount_point: Path
    fstype: str
    source: str
    super_options: str


def mounts() -> list[MountEntry]:
    """Every mount of this process's namespace, from /proc/self/mountinfo."""
    entries = []
    for line in _MOUNTINFO.read_text().splitlines():
        # id parent major:minor root mount-point options [optional...] - fstype source super-opts
        left, _, right = line.partition(" - ")
        fields = left.split(" ")
        fstype, source, super_options = ([*right.split(" "), "", "", ""])[:3]
        entries.append(MountEntry(Path(_unescape(fields[4])), fstype, _unescape(source), super_options))
    return entries


def mount_entry(path: Path) -> MountEntry | None:
    """The topmost mount whose mount point is exactly `path`, if any."""
    target = Path(os.path.realpath(path))
    found = None
    for entry in mounts():
        if entry.mount_point == target:
            found = entry  # later lines are mounted on top of earlier ones
    return found


def is_mounted(path: Path) -> bool:
    return mount_entry(path) is not None


def mount(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    """Mount lower (read-only) + upper (writes) at merged. All four directories must exist."""
    lower, upper, work, merged = (Path(os.path.realpath(p)) for p in (lower, upper, work, merged))
    for name, p in (("lower", lower), ("upper", upper), ("work", work), ("merged", merged)):
        if not p.is_dir():
            raise MountError(f"overlay {name} dir {p} does not exist; create it (reset() does)")
        if any(c in str(p) for c in _UNSAFE_OPTION_CHARS):
            raise MountError(f"overlay {name} dir {p} contains ',' or ':'; use a path without them")
    if is_mounted(merged):
        raise MountError(f"{merged} is already mounted; unmount it first (or use reset())")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if os.geteuid() == 0:
        # volatile: no syncs of upper. Every run wipes upper/work first and the tarball is
        # fsynced on its own, so a crash loses nothing of value; without it, each copy-up the
        # package registry causes waits on the disk (bench manifests copy: 0.43 s -> 0.37 s, median of 5).
        options += ",volatile"
        argv = ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)]
    else:
        argv = ["fuse-overlayfs", "-o", options, str(merged)]
    try:
        run(argv, timeout=60)
    except CommandError as e:
        raise MountError(
            f"cannot mount overlay at {merged}: {e}. Check that upper and work are on one "
            "filesystem, that the kernel has overlayfs (modprobe overlay), and dmesg for details"
        ) from None
    log.info("mounted overlay %s (lower %s, upper %s)", merged, lower, upper)


def unmount(merged: Path, *, attempts: int = 5, delay: float = 0.5) -> None:
    """Unmount merged if it is mounted; retry while busy, then detach lazily with a warning."""
    entry = mount_entry(merged)
    if entry is None:
        return
    fuse = entry.fstype.startswith("fuse")
    argv = _unmount_argv(entry.mount_point, fuse, lazy=False)
    last: CommandError | None = None
    for i in range(attempts):
        try:
            run(argv, timeout=60, cleanup=True)
            log.info("unmounted %s", entry.mount_point)
            return
        except CommandError as e:
            last = e
            if not is_mounted(entry.mount_point):
                return  # someone else unmounted it meanwhile
            if i + 1 < attempts:
                time.sleep(delay)
    log.warning(
        "%s stays busy (%s); detaching it lazily: it disappears when the last user closes "
        "it. Find holders with: fuser -vm %s",
        entry.mount_point,
        last,
        entry.mount_point,
    )
    try:
        run(_unmount_argv(entry.mount_point, fuse, lazy=True), timeout=60, cleanup=True)
    except CommandError as e:
        raise MountError(
            f"cannot unmount {entry.mount_point}: {e}; find its users with "
            f"`fuser -vm {entry.mount_point}` and stop them"
        ) from None


def reset(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    """Unmount, replace upper/work/merged with empty directories and mount a fresh view of lower.

    The old directories are renamed aside and deleted by a detached `rm -rf`: deleting the last
    package's upper (every manifest and whiteout it wrote) took 1.0 s of a 600-image release's
    critical path (issue 15); a rename takes microseconds. A process, not a thread: a Python
    thread deleting thousands of files took ~10% of the run's samples under the GIL (py-spy,
    bench/README.md), and a process outlives a CLI that exits first. Whatever is still aside
    when the next reset runs (a killed run's), that reset deletes too.
    """
    lower = Path(os.path.realpath(lower))
    dirs = [Path(os.path.realpath(p)) for p in (upper, work, merged)]
    for p in dirs:
        # Emptying lower (or a directory holding it) would destroy the archive.
        if p == lower or p in lower.parents or lower in p.parents:
            raise MountError(f"{p} overlaps the lower dir {lower}; keep upper/work/merged apart")
    unmount(dirs[2])
    if is_mounted(dirs[2]):
        raise MountError(f"{dirs[2]} is still mounted after unmount; not deleting anything")
    aside: list[Path] = []
    for p in dirs:
        if is_mounted(p):
            raise MountError(f"{p} is a mount point; refusing to empty it")
        aside += sorted(p.parent.glob(f".{p.name}.discarded-*"))  # a dead run's leftovers
        if p.exists():
            # same directory, so the same filesystem: a rename, never a copy
            gone = p.with_name(f".{p.name}.discarded-{uuid.uuid4().hex[:12]}")
            os.rename(p, gone)
            aside.append(gone)
        p.mkdir(parents=True)
    mount(lower, *dirs)
    if aside:
        start_detached(["rm", "-rf", "--one-file-system", "--", *map(str, aside)])


def hide_in_upper(lower: Path, upper: Path, work: Path, merged: Path, rel_paths: list[str]) -> int:
    """Hide `rel_paths` of lower from the merged view, the way deleting them in merged would,
    but by writing the kernel's whiteouts (0/0 character devices) straight into upper while the
    overlay is unmounted, then mounting it again. Returns how many were hidden.

    Why: deleting a lower tree through the mount makes one whiteout per file and directory,
    serialised inside overlayfs (measured: 1,000 repositories' `_manifests`, 2.2-6 s; threads
    made it slower); this is one mknod per tree. Kernel overlayfs as root only (`can_hide`).
    """
    lower, upper = Path(os.path.realpath(lower)), Path(os.path.realpath(upper))
    for rel in rel_paths:  # all checked before anything is unmounted
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise MountError(f"cannot hide {rel!r}: give a path relative to the lower dir")
    unmount(merged)
    if is_mounted(merged):
        raise MountError(f"{merged} is still mounted; not touching its upper dir")
    hidden = 0
    for rel in rel_paths:
        parts = Path(rel).parts
        # parents as lower has them (mode, owner), so the merged view's attributes do not change
        for i in range(1, len(parts)):
            up = upper.joinpath(*parts[:i])
            if not up.is_dir():
                st = os.lstat(lower.joinpath(*parts[:i]))
                up.mkdir()
                os.chown(up, st.st_uid, st.st_gid)
                os.chmod(up, stat.S_IMODE(st.st_mode))
        target = upper / rel
        try:
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        except FileExistsError:
            st = os.lstat(target)
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                raise MountError(
                    f"{target} exists in upper and is not a whiteout; reset the overlay first"
                ) from None
            continue
        hidden += 1
    # A `volatile` mount leaves work/incompat/volatile, and the kernel refuses to mount over it
    # again until it is removed (after a crash upper may be inconsistent). Here nothing
    # crashed: upper was just written by this process. work holds nothing else worth keeping.
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    mount(lower, upper, work, merged)
    return hidden


def can_hide(merged: Path) -> bool:
    """Whether `hide_in_upper` applies: a kernel overlay mounted by root."""
    entry = mount_entry(merged)
    return entry is not None and entry.fstype == "overlay" and os.geteuid() == 0


def whiteout_hider(
    lower: Path, upper: Path, work: Path, merged: Path
) -> Callable[[Sequence[str]], int] | None:
    """`hide_in_upper` bound to this overlay, or None where it does not apply (fuse-overlayfs,
    not root): the caller then deletes through the mount."""
    if not can_hide(merged):
        return None
    return lambda rel_paths: hide_in_upper(lower, upper, work, merged, list(rel_paths))


@contextmanager
def mounted(lower: Path, upper: Path, work: Path, merged: Path, *, fresh: bool = False) -> Iterator[Path]:
    """Mount for the duration of the block (after `reset` when fresh) and always unmount."""
    if fresh:
        reset(lower, upper, work, merged)
    else:
        mount(lower, upper, work, merged)
    try:
        yield Path(merged)
    finally:
        unmount(Path(merged))


def _unmount_argv(path: Path, fuse: bool, *, lazy: bool) -> list[str]:
    if fuse and os.geteuid() != 0:
        tool = shutil.which("fusermount3") or "fusermount"
        return [tool, "-uz" if lazy else "-u", str(path)]
    return ["umount", "-l", str(path)] if lazy else ["umount", str(path)]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
