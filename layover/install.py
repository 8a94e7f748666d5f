"""Install a package into a registry's storage directory: every check first, then additive and
crash-safe writes (docs/customer.md).

    1. checksum  the tarball's sha256 against PACKAGE.sha256 (or --sha256): one sequential read
                 of the file on a thread of its own, started first and running alongside steps
                 2-5 (which read the same pages); nothing is placed (6) before it has matched,
                 and a refusal while it runs is the checksum's if the checksum fails too
    2. members   headers only (no data read): regular files and directories, plain relative
                 names, no setuid/setgid/sticky bits, no duplicates, inside the file, the
                 contents file first; every member declared by the contents file with the size
                 it declares, every declared file present; link files say what they must;
                 every listed image's manifests hash to their names and walk (storage/walk.py)
                 to exactly the manifests and blobs declared
    3. base      (delta) every assumed blob is in DIR with its size (`deep`: and its sha256)
    4. space     free bytes and inodes for what DIR does not hold yet
       -- up to here nothing in DIR has changed: a refusal is a PackageError (exit 3) or a
          DiskFullError (exit 5) naming the member or the path, and what to do; from here to
          the checksum's match only the staging dir is written, and it goes on any refusal
    5. stage     new blobs into DIR/.layover-install/ (cloned out of the tarball on XFS/btrfs,
                 else copied in-kernel), each hashed from the tarball as it is copied; links
                 staged too. A blob that does not hash to its name: the staging dir goes,
                 nothing else was touched
    6. place     syncfs; the checksum's match waited for; then rename into place in FileKind
                 order: blobs, `_layers` links, revisions, tag-index entries, tags last; syncfs.
                 A new leaf directory (a blob, a link's digest dir, a whole new tag) appears by
                 one rename, so a registry serving DIR never sees a tag, or a blob, half there
    7. prune     (`prune`) the GC plan of a KeepSet of the package's images, applied
    8. verify    the verifier (storage/verify.py) on the listed images; exact after a prune

Killed at any point and run again, the same end state: staging is thrown away and redone, and
what is in place already is recognised (size checked, links compared) and kept.

Failpoints, for the crash tests only: with LAYOVER_FAILPOINTS=<name>[,<name>...] in the
environment the process stops itself (SIGSTOP) at that point, so a test can freeze it at an
exact moment, look at DIR and SIGKILL it. Names: install.checked (every check passed but the
checksum, which may still run; nothing written), install.staged (the checksum matched too),
install.blobs-midway, install.links (blobs and links in place, no tag yet), install.tags-midway.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from layover.adapters.tar_writer import copy_range, ficlonerange, start_writeback
from layover.contents import (
    CONTENTS_MEMBER,
    DELTA_README,
    DELTA_ROOT,
    MAX_CONTENTS_BYTES,
    Contents,
    ExpectedFile,
    FileKind,
    expected_tree,
    parse,
)
from layover.errors import (
    DiskFullError,
    LayoverError,
    LockedError,
    StorageError,
    UsageError,
    VerifyError,
)
from layover.imagelist import ImageList, parse_text
from layover.manifest import parse_manifest
from layover.package import Member, expected_sha256, refuse, scan_members
from layover.reference import Digest
from layover.storage.gc import KeepSet, plan_gc
from layover.storage.hashing import CHUNK, sha256_file, update_from_fd
from layover.storage.images import resolve
from layover.storage.layout import LINK_SIZE, StorageLayout, parse_link
from layover.storage.vacuum import apply_gc
from layover.storage.verify import verify_storage
from layover.storage.walk import Refs, walk
from layover.tarball import ALIGN
from layover.units import human_bytes

STAGING = ".layover-install"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class InstallOptions:
    sha256: str | None = None  # expected checksum; default: PACKAGE.sha256
    checksum: bool = True  # False only with an explicit --no-checksum
    prune: bool = False
    dry_run: bool = False
    deep: bool = False  # hash the blobs DIR already holds before relying on them
    restart_container: str | None = None  # filled in by the CLI after the restart, for the report


# --- the report: evidence a customer's security officer can keep -------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InstalledImage(_Model):
    reference: str
    digest: str
    previous: str | None = None  # what the tag pointed at before, if anything else


class BlobCounts(_Model):
    total: int = 0  # blobs of the installed package
    written: int = 0  # placed by this install
    kept: int = 0  # already in DIR with the right size (and sha256, with --deep)
    replaced: int = 0  # in DIR with a wrong size (or sha256, with --deep): replaced
    assumed: int = 0  # a delta's blobs that DIR had to hold already
    bytes_written: int = 0
    bytes_cloned: int = 0  # of bytes_written, shared with the tarball (FICLONERANGE)
    bytes_hashed: int = 0  # by the install itself (verify's hashing is under `verify`)


class PruneSummary(_Model):
    plan: str
    deleted: int = 0
    bytes_freed: int = 0


class VerifySummary(_Model):
    ok: bool
    exact: bool  # the storage dir holds exactly the package (after --prune)
    images: int
    manifests: int
    blobs: int
    bytes_hashed: int
    problems: tuple[str, ...] = ()


class Restart(_Model):
    needed: bool
    reason: str
    container: str | None = None


class InstallReport(_Model):
    schema_: Literal["layover.install-report/1"] = "layover.install-report/1"
    package: str
    package_sha256: str | None  # what the install computed (None with --no-checksum)
    checksum: Literal["verified", "skipped"]
    kind: Literal["full", "delta"]
    release: str
    base: str | None = None  # a delta's base: release and package sha256
    storage: str
    dry_run: bool
    images: tuple[InstalledImage, ...]
    blobs: BlobCounts
    links_written: int
    tags_moved: int
    checks: tuple[str, ...]  # every check that passed, in order
    prune: PruneSummary | None = None
    verify: VerifySummary | None = None
    restart: Restart
    started_at: str
    seconds: float
    phases: dict[str, float]  # seconds per phase: checksum, checks, stage, place, prune, verify

    def raise_for_verify(self) -> None:
        v = self.verify
        if v is not None and not v.ok:
            raise VerifyError(
                f"{self.storage}: installed, but verify found {len(v.problems)} problem(s), first: "
                f"{v.problems[0]}; run the install again with --deep to replace damaged blobs"
            )

    def to_json(self) -> str:
        import json

        doc = self.model_dump(mode="json")
        doc["schema"] = doc.pop("schema_")
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        b = self.blobs
        verb = "would install" if self.dry_run else "installed"
        lines = [
            f"{verb} {self.package} ({self.kind}, {self.release}) into {self.storage}",
            f"  checks: {', '.join(self.checks)}",
            f"  {len(self.images)} images, {self.tags_moved} tags moved; blobs: {b.written} written "
            f"({human_bytes(b.bytes_written)}, {human_bytes(b.bytes_cloned)} cloned), {b.kept} kept, "
            f"{b.replaced} replaced, {b.assumed} assumed; {self.links_written} links",
        ]
        if self.prune is not None:
            lines.append(f"  prune: {self.prune.plan}")
        if self.verify is not None:
            v = self.verify
            lines.append(
                f"  verify: {'OK' if v.ok else 'FAILED'} ({v.images} images, {v.blobs} blobs, "
                f"{human_bytes(v.bytes_hashed)} hashed{', exact' if v.exact else ''})"
            )
        lines.append(f"  restart: {self.restart.reason}")
        return "\n".join(lines)


# --- the plan: everything decided and checked before DIR changes --------------------------------
@dataclass
class _Place:
    """One file to put in place."""

    path: str  # final path in DIR
    kind: FileKind
    digest: str  # blob hex, or what the link says
    size: int
    member: Member | None = None  # where a blob's data is in the tarball
    replace: bool = False  # an existing file of another size/content is replaced
    moved_from: str | None = None  # a tag that pointed elsewhere


@dataclass
class Plan:
    package: Path
    storage: StorageLayout
    contents: Contents
    sha256: str | None
    places: list[_Place] = field(default_factory=list)
    kept: int = 0
    assumed: int = 0
    hashed: set[str] = field(default_factory=set)  # blobs in DIR hashed by --deep
    bytes_hashed: int = 0
    previous: dict[str, str | None] = field(default_factory=dict)  # reference -> old tag digest
    checks: list[str] = field(default_factory=list)
    clone: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    checksum: _Checksum | None = None  # running until confirmed (then `sha256` is set)

    @property
    def blobs(self) -> list[_Place]:
        return [p for p in self.places if p.kind is FileKind.BLOB]

    @property
    def images(self) -> ImageList:
        return parse_text("\n".join(i.reference for i in self.contents.images) + "\n", str(self.package))


def plan_install(
    package: Path, storage: Path, opts: InstallOptions, progress: Progress = lambda _: None
) -> Plan:
    """Steps 1-4: check everything, decide every file to write. Reads only. The checksum is
    started here and runs on (`plan.checksum`): `install` confirms it before it places anything."""
    package, storage = Path(package).absolute(), Path(storage).absolute()
    if not package.is_file():
        raise UsageError(f"{package}: no such package tarball")
    if not storage.is_dir():
        raise UsageError(f"--storage {storage}: not a directory; create it (empty for a new registry)")
    fd = os.open(package, os.O_RDONLY | os.O_CLOEXEC)
    phases: dict[str, float] = {}
    checksum: _Checksum | None = None
    try:
        st = os.fstat(fd)
        if opts.checksum:
            want = expected_sha256(package, opts.sha256)
            progress(f"checksum: hashing {human_bytes(st.st_size)}, alongside the checks and staging")
            checksum = _Checksum(package, fd, st.st_size, want)
        with _checksum_first(checksum):
            mark = time.monotonic()
            members = scan_members(package, fd, st.st_size)
            contents = _contents(package, fd, members[0])
            plan = Plan(package, StorageLayout(storage), contents, None, phases=phases, checksum=checksum)
            progress(f"members: {len(members)} checked against {CONTENTS_MEMBER}")
            files = _check_members(plan, members)
            plan.checks.append("members")
            _check_links_and_manifests(plan, fd, files)
            plan.checks.append("manifests")
            _decide(plan, files, opts)
            if contents.kind == "delta":
                plan.checks.append("base")
            plan.clone = _can_clone(fd, storage, [p.member for p in plan.blobs if p.member])
            _check_space(plan)
            plan.checks.append("space")
            if os.fstat(fd).st_mtime_ns != st.st_mtime_ns or os.fstat(fd).st_size != st.st_size:
                raise refuse(package, "the file changed while it was checked")
            phases["checks"] = time.monotonic() - mark
        return plan
    finally:
        os.close(fd)


class _Checksum:
    """The tarball's sha256, computed on a thread of its own from the start: one sequential read
    of the file, alongside the member checks and the staging, which read the same pages and hash
    the blobs on other threads. Until `confirm` has matched it, nothing is placed: the checks
    only read, and staging writes only the staging dir, which goes on any refusal."""

    STEP = 64 << 20  # between two looks at the stop flag

    def __init__(self, package: Path, fd: int, size: int, want: str) -> None:
        self.package, self.size, self.want = package, size, want
        self.seconds = 0.0
        self._fd = os.dup(fd)  # the same open file the checks read, closed by the thread
        self._stop = threading.Event()
        self._got: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layover-checksum", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        try:
            h = hashlib.sha256()
            done = 0
            while done < self.size and not self._stop.is_set():
                n = min(self.STEP, self.size - done)
                got = update_from_fd(h, self._fd, done, n)
                done += got
                if got < n:
                    break
            if done == self.size:
                self._got = h.hexdigest()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that confirms
            self._error = e
        finally:
            os.close(self._fd)
            self.seconds = time.monotonic() - start

    def confirm(self) -> str:
        """Wait for the sha256; refuse the package unless it matches."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._got is None:
            raise refuse(self.package, "the file shrank while it was read")
        if self._got != self.want:
            raise refuse(
                self.package,
                f"its sha256 is {self._got}, the checksum says {self.want}: the file is damaged "
                "or not the package the checksum is for; fetch it again",
            )
        return self._got

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _checksum_first(checksum: _Checksum | None) -> Iterator[None]:
    """A refusal while the checksum still runs is the checksum's if that fails too: a damaged or
    wrong file is named as such, whichever check it tripped first."""
    try:
        yield
    except LayoverError:
        if checksum is not None:
            checksum.confirm()
        raise
    except BaseException:
        if checksum is not None:
            checksum.cancel()
        raise


def _confirm_checksum(plan: Plan) -> None:
    """Step 1's verdict, waited for: nothing is placed before it."""
    if plan.checksum is None or plan.sha256 is not None:
        return
    mark = time.monotonic()
    plan.sha256 = plan.checksum.confirm()
    plan.phases["checksum"] = plan.checksum.seconds  # on its own thread, alongside checks and stage
    plan.phases["checksum wait"] = time.monotonic() - mark  # what the install waited for it after
    plan.checks.insert(0, "checksum")


def _contents(package: Path, fd: int, first: Member) -> Contents:
    if first.name != CONTENTS_MEMBER or first.is_dir:
        raise refuse(
            package,
            f"the first member is {first.name!r}, not {CONTENTS_MEMBER}: made before "
            "Layover recorded contents, or not by Layover; rebuild it with this version",
        )
    if first.size > MAX_CONTENTS_BYTES:
        raise refuse(package, f"{CONTENTS_MEMBER} is {first.size} bytes, too large to be one")
    return parse(os.pread(fd, first.size, first.offset), f"{package}:{CONTENTS_MEMBER}")


def _check_members(plan: Plan, members: list[Member]) -> dict[str, tuple[ExpectedFile, Member | None]]:
    """Every member declared, with its size; every declared file present. Returns the storage
    files by tar name: (what it must be, its member or None for an assumed blob)."""
    c, package = plan.contents, plan.package
    root = c.storage_root or "."
    expected, dirs = expected_tree(c, root)
    allowed_files = {CONTENTS_MEMBER}
    if c.kind == "delta":
        allowed_files.add(DELTA_README)
        dirs |= {"layover", DELTA_ROOT}
    assumed = c.assumed
    by_name = {m.name: m for m in members}
    for m in members[1:]:
        if m.is_dir:
            if m.name not in dirs:
                raise refuse(
                    package, f"directory member {m.name!r} is not part of what {CONTENTS_MEMBER} declares"
                )
            continue
        want = expected.get(m.name)
        if want is None:
            if m.name in allowed_files:
                continue
            raise refuse(package, f"member {m.name!r} is not declared by {CONTENTS_MEMBER}")
        if want.kind is FileKind.BLOB and want.digest in assumed:
            raise refuse(package, f"member {m.name!r} is a blob the delta says it does not carry")
        if m.size != want.size:
            raise refuse(package, f"member {m.name!r} is {m.size} bytes, {CONTENTS_MEMBER} says {want.size}")
    files: dict[str, tuple[ExpectedFile, Member | None]] = {}
    for name, want in expected.items():
        found = by_name.get(name)
        if found is None and not (want.kind is FileKind.BLOB and want.digest in assumed):
            raise refuse(package, f"member {name!r} is declared by {CONTENTS_MEMBER} but missing")
        files[name] = (want, found)
    return files


def _check_links_and_manifests(
    plan: Plan, fd: int, files: dict[str, tuple[ExpectedFile, Member | None]]
) -> None:
    package, c = plan.package, plan.contents
    for name, (want, m) in files.items():
        if (
            want.kind is not FileKind.BLOB
            and m is not None
            and os.pread(fd, LINK_SIZE, m.offset) != f"sha256:{want.digest}".encode()
        ):
            raise refuse(package, f"link member {name!r} does not say sha256:{want.digest}")
    members = {want.digest: m for want, m in files.values() if want.kind is FileKind.BLOB}
    dir_paths = plan.storage.strings()
    docs: dict[str, Refs] = {}

    def load(hex_: str, named_by: str) -> Refs:
        if hex_ in docs:
            return docs[hex_]
        m = members.get(hex_)
        if m is not None:
            data = os.pread(fd, m.size, m.offset)
            where = f"{package}:{m.name}"
        else:  # an assumed manifest of a delta: it is in DIR (the base check comes next)
            where = dir_paths.blob_data(hex_)
            try:
                with open(where, "rb") as f:
                    data = f.read(MAX_CONTENTS_BYTES)
            except OSError:
                raise _MissingBase from None
            if hashlib.sha256(data).hexdigest() != hex_:
                assert c.delta is not None
                raise refuse(
                    package,
                    f"{where} is damaged (it does not hash to its name); it comes with "
                    f"{c.delta.base.release}: delete that blob directory and install the "
                    "base package again",
                )
        if hashlib.sha256(data).hexdigest() != hex_:
            raise refuse(
                package, f"{where}: manifest does not hash to its name sha256:{hex_} (tampered or damaged)"
            )
        try:
            docs[hex_] = Refs.of(parse_manifest(data, where))
        except LayoverError as e:
            raise refuse(package, f"{named_by}: {e}") from None
        return docs[hex_]

    for img in c.images:
        try:
            reach = walk([(img.digest[7:], img.reference)], load)
        except _MissingBase:
            continue  # reported by the base check, with the release that provides it
        manifests = {f"sha256:{h}" for h in reach.manifests}
        blobs = {f"sha256:{h}" for h in reach.blobs}
        foreign = {f"sha256:{h}" for h in reach.foreign}
        if manifests != set(img.manifests) or not blobs <= set(img.blobs) <= blobs | foreign:
            raise refuse(
                package,
                f"image {img.reference}: its manifests reference other blobs than {CONTENTS_MEMBER} declares",
            )


class _MissingBase(Exception):
    pass


def _decide(plan: Plan, files: dict[str, tuple[ExpectedFile, Member | None]], opts: InstallOptions) -> None:
    """What DIR holds already, the delta's base, and every file to place."""
    c, paths = plan.contents, plan.storage.strings()
    # the same tree drawn below DIR: same keys in the same order, paths built by StorageLayout
    in_dir, _ = expected_tree(c, str(plan.storage.root))
    missing: list[str] = []
    for (want, m), path in zip(files.values(), in_dir, strict=True):
        if want.kind is FileKind.BLOB:
            have = _size(path)
            ok = have == want.size
            if ok and opts.deep:
                got, n = sha256_file(path)
                plan.bytes_hashed += n
                plan.hashed.add(want.digest)
                ok = got == want.digest
            if m is None:  # assumed by a delta
                if not ok:
                    missing.append(
                        f"sha256:{want.digest} ({human_bytes(want.size)}"
                        f"{', damaged' if have is not None else ''})"
                    )
                plan.assumed += 1
                continue
            if ok:
                plan.kept += 1
                continue
            plan.places.append(_Place(path, want.kind, want.digest, want.size, m, replace=have is not None))
            continue
        current = _link(path)
        if current == want.digest:
            continue
        plan.places.append(
            _Place(
                path,
                want.kind,
                want.digest,
                want.size,
                replace=current is not None,
                moved_from=current if want.kind is FileKind.TAG else None,
            )
        )
    if missing:
        assert c.delta is not None
        base = c.delta.base
        raise refuse(
            plan.package,
            f"{len(missing)} blob(s) the delta assumes are not in {plan.storage.root}: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; they come with "
            f"{base.release} (package sha256 {base.sha256}): install that package (or the "
            "deltas leading to it) first",
        )
    plan.places.sort(key=lambda p: (list(FileKind).index(p.kind), p.path))
    if opts.deep:
        plan.checks.append("existing blobs hashed")
    for img in c.images:
        if img.tag is not None:
            old = _link(paths.tag_current_link(img.repository, img.tag))
            plan.previous[img.reference] = f"sha256:{old}" if old and old != "corrupt" else old


def _size(path: str) -> int | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def _link(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(LINK_SIZE + 1)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return parse_link(raw) or "corrupt"


def _can_clone(fd: int, storage: Path, blobs: list[Member]) -> bool:
    """Whether blocks can be shared from the tarball into DIR: tried once on an unnamed temp
    file (O_TMPFILE), which vanishes when closed, so DIR is not changed."""
    aligned = next((m for m in blobs if m.offset % ALIGN == 0 and m.size >= ALIGN), None)
    if aligned is None or os.fstat(fd).st_dev != os.stat(storage).st_dev:
        return False
    try:
        probe = os.open(storage, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError:
        return False
    try:
        ficlonerange(fd, aligned.offset, ALIGN, probe, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(probe)


def _check_space(plan: Plan) -> None:
    need = 0
    for p in plan.blobs:
        tail = p.size % ALIGN if plan.clone and p.member and p.member.offset % ALIGN == 0 else p.size
        need += -(-tail // ALIGN) * ALIGN
    new_files = len(plan.places)
    need += 2 * new_files * ALIGN  # a link file and its digest directory take a block each
    st = os.statvfs(plan.storage.root)
    free = st.f_bavail * st.f_frsize
    if free < need or (st.f_files and st.f_favail < 2 * new_files):
        raise DiskFullError(
            f"{plan.storage.root}: not enough space for the package: about {human_bytes(need)} and "
            f"{2 * new_files} inodes needed, {human_bytes(free)} and {st.f_favail} inodes free; "
            "free space and run again. Nothing was changed"
        )


# --- writing --------------------------------------------------------------------------------
def install(
    package: Path,
    storage: Path,
    opts: InstallOptions,
    progress: Progress = lambda _: None,
    restarter: Callable[[str], None] | None = None,
) -> InstallReport:
    """Check, write, prune, verify. `restarter(name)` restarts the container
    `opts.restart_container` when a restart is needed. A failed verify is in the report
    (`raise_for_verify`): the caller writes the report first."""
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _dir_lock(Path(storage)):
        plan = plan_install(package, storage, opts, progress)
        written = _Written()
        prune: PruneSummary | None = None
        verify: VerifySummary | None = None
        with _checksum_first(plan.checksum):
            if not opts.dry_run:
                _failpoint("install.checked")
                _write(plan, written, progress)
            _confirm_checksum(plan)
        if opts.prune:
            mark = time.monotonic()
            prune = _prune(plan, dry_run=opts.dry_run, progress=progress)
            plan.phases["prune"] = time.monotonic() - mark
        if not opts.dry_run:
            progress("verify: the installed images")
            mark = time.monotonic()
            verify = _verify(plan, exact=opts.prune)
            plan.phases["verify"] = time.monotonic() - mark
            if verify.ok:
                plan.checks.append("verify")
        restart = _restart_advice(plan, prune, opts)
        if restart.needed and opts.restart_container and restarter is not None:
            progress(f"restart: container {opts.restart_container}")
            restarter(opts.restart_container)
    c = plan.contents
    b = written
    report = InstallReport(
        package=str(plan.package),
        package_sha256=plan.sha256,
        checksum="verified" if opts.checksum else "skipped",
        kind=c.kind,
        release=c.release,
        base=f"{c.delta.base.release} (package sha256 {c.delta.base.sha256})" if c.delta else None,
        storage=str(plan.storage.root),
        dry_run=opts.dry_run,
        images=tuple(
            InstalledImage(
                reference=i.reference, digest=i.digest, previous=_moved(plan, i.reference, i.digest)
            )
            for i in c.images
        ),
        blobs=BlobCounts(
            total=len(c.blobs),
            written=b.blobs,
            kept=plan.kept,
            replaced=sum(1 for p in plan.blobs if p.replace),
            assumed=plan.assumed,
            bytes_written=b.bytes,
            bytes_cloned=b.cloned,
            bytes_hashed=b.hashed + plan.bytes_hashed,
        ),
        links_written=b.links,
        tags_moved=sum(1 for p in plan.places if p.kind is FileKind.TAG and p.moved_from),
        checks=tuple(plan.checks),
        prune=prune,
        verify=verify,
        restart=restart,
        started_at=started_at,
        seconds=round(time.monotonic() - started, 3),
        phases={k: round(v, 3) for k, v in plan.phases.items()},
    )
    return report


def _moved(plan: Plan, reference: str, digest: str) -> str | None:
    old = plan.previous.get(reference)
    return old if old is not None and old != digest else None


@dataclass
class _Written:
    blobs: int = 0
    links: int = 0
    bytes: int = 0
    cloned: int = 0
    hashed: int = 0
    hashed_digests: set[str] = field(default_factory=set)


@contextmanager
def _dir_lock(storage: Path) -> Iterator[None]:
    """One install per storage dir: an flock on the directory itself (creates no file)."""
    try:
        fd = os.open(storage, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(
            f"--storage {storage}: not a directory; create it (empty for a new registry)"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{storage}: another layover install (or prune) is writing it; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _write(plan: Plan, written: _Written, progress: Progress) -> None:
    stage = plan.storage.root / STAGING
    shutil.rmtree(stage, ignore_errors=True)  # what a killed install left
    owner = _Owner.of(plan.storage)
    try:
        stage.mkdir()
        mark = time.monotonic()
        fd = os.open(plan.package, os.O_RDONLY | os.O_CLOEXEC)
        try:
            staged = _stage(plan, fd, stage, written, owner, progress)
        finally:
            os.close(fd)
        plan.phases["stage"] = time.monotonic() - mark
        mark = time.monotonic()
        syncfs(stage)
        plan.phases["sync"] = time.monotonic() - mark
        _confirm_checksum(plan)
        _failpoint("install.staged")
        mark = time.monotonic()
        _place(plan, staged, written, owner, progress)
        syncfs(stage)
        plan.phases["place"] = time.monotonic() - mark
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"{plan.storage.root}: no space left while installing ({e.strerror}); nothing "
                "half-written is in place: free space and run the install again"
            ) from None
        raise StorageError(
            str(e.filename or plan.storage.root),
            f"cannot write ({e.strerror}) while installing; "
            "nothing half-written is in place: fix it and run the install again",
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _stage(
    plan: Plan, fd: int, stage: Path, written: _Written, owner: _Owner, progress: Progress
) -> dict[str, Path]:
    """Copy every new blob into the staging dir, hashing the tarball's bytes as they go, and
    write every link there. Returns final path -> staged path."""
    staged: dict[str, Path] = {}
    blobs = sorted(plan.blobs, key=lambda p: p.member.offset if p.member else 0)
    progress(
        f"stage: {len(blobs)} blobs ({human_bytes(sum(p.size for p in blobs))})"
        f"{', cloned out of the tarball' if plan.clone else ''}"
    )
    checks: list[tuple[_Place, Future[str]]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i, p in enumerate(blobs):
            assert p.member is not None
            tmp = stage / f"b{i}"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                owner.file(out)
                written.cloned += _copy(fd, p.member, out, plan.clone)
                # the disk starts writing while later blobs are copied, not all at the syncfs
                start_writeback(out, 0, p.size)
            finally:
                os.close(out)
            checks.append((p, pool.submit(_sha256_range, fd, p.member.offset, p.size)))
            staged[p.path] = tmp
        for p, fut in checks:
            got = fut.result()
            if got != p.digest:
                raise refuse(
                    plan.package,
                    f"member for blob sha256:{p.digest} hashes to sha256:{got}: its data "
                    "was tampered with or damaged",
                )
            written.hashed += p.size
            written.hashed_digests.add(p.digest)
    plan.checks.append("blob digests")
    for i, p in enumerate(q for q in plan.places if q.kind is not FileKind.BLOB):
        tmp = stage / f"l{i}"
        owner.write(tmp, f"sha256:{p.digest}".encode())
        staged[p.path] = tmp
    return staged


def _sha256_range(fd: int, offset: int, size: int) -> str:
    h = hashlib.sha256()
    if update_from_fd(h, fd, offset, size) != size:
        raise OSError(errno.EIO, "the package file shrank while it was read")
    return h.hexdigest()


def _copy(src: int, m: Member, dst: int, clone: bool) -> int:
    """Put the member's data into dst: shared blocks plus a written tail on XFS/btrfs, else an
    in-kernel copy, else through user space. Returns the bytes cloned."""
    size = m.size
    if clone and m.offset % ALIGN == 0 and size >= ALIGN:
        aligned = size - size % ALIGN
        try:
            ficlonerange(src, m.offset, aligned, dst, 0)
            if size > aligned:
                copy_range(src, m.offset + aligned, size - aligned, dst, aligned)
            return aligned
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            os.ftruncate(dst, 0)  # fall back below; a half-done clone leaves nothing behind
    try:
        copy_range(src, m.offset, size, dst, 0)
        return 0
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
    except Exception:  # noqa: BLE001 - the source shrank: the buffered copy below says so
        pass
    os.ftruncate(dst, 0)
    done = 0
    while done < size:
        data = os.pread(src, min(CHUNK, size - done), m.offset + done)
        if not data:
            raise OSError(errno.EIO, "the package file shrank while it was read")
        os.pwrite(dst, data, done)
        done += len(data)
    return 0


def _place(plan: Plan, staged: dict[str, Path], written: _Written, owner: _Owner, progress: Progress) -> None:
    """Rename staged files into place, in FileKind order. A new leaf directory is renamed in
    whole, so it appears with its file; a new tag appears with its link in one rename."""
    order = [p for p in plan.places if p.kind is not FileKind.TAG_INDEX]
    index = {
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(p.path)))): p
        for p in plan.places
        if p.kind is FileKind.TAG_INDEX
    }
    progress(f"place: {len(plan.blobs)} blobs, then {len(plan.places) - len(plan.blobs)} links, tags last")
    blobs_total = len(plan.blobs)
    done_blobs = 0
    tags = [p for p in order if p.kind is FileKind.TAG]
    done_tags = 0
    links_done = False
    for p in order:
        if p.kind is FileKind.TAG and not links_done:
            # tag-index entries of tags that exist already go just before the tags
            for tag_dir, ip in sorted(index.items()):
                if os.path.isdir(tag_dir):
                    _put(ip.path, staged[ip.path], owner)
                    written.links += 1
            links_done = True
            _failpoint("install.links")
        if p.kind is FileKind.TAG:
            tag_dir = os.path.dirname(os.path.dirname(p.path))
            entry = index.get(tag_dir)
            if not os.path.isdir(tag_dir) and entry is not None:
                _new_tag(tag_dir, p, entry, staged, owner)
                written.links += 2
            else:
                _put(p.path, staged[p.path], owner)
                written.links += 1
            done_tags += 1
            if done_tags == len(tags) // 2 or len(tags) == 1:
                _failpoint("install.tags-midway")
            continue
        _put(p.path, staged[p.path], owner)
        if p.kind is FileKind.BLOB:
            written.blobs += 1
            written.bytes += p.size
            done_blobs += 1
            if done_blobs == max(1, blobs_total // 2):
                _failpoint("install.blobs-midway")
        else:
            written.links += 1
    if not links_done:
        for _, ip in sorted(index.items()):
            _put(ip.path, staged[ip.path], owner)
            written.links += 1
        _failpoint("install.links")


@dataclass(frozen=True)
class _Owner:
    """What the install creates gets the modes `tar -xf` gives as root (0644, 0755) whatever the
    umask, and, when run as root, the owner of the storage dir: a registry running as its own
    user (Harbor's does) must be able to write beside what was installed."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def of(cls, storage: StorageLayout) -> _Owner:
        st = os.stat(storage.v2 if storage.v2.is_dir() else storage.root)
        return cls(st.st_uid, st.st_gid) if os.geteuid() == 0 else cls()

    def file(self, fd: int) -> None:
        os.fchmod(fd, 0o644)
        if self.uid is not None and self.gid is not None:
            os.fchown(fd, self.uid, self.gid)

    def mkdir(self, path: str | Path) -> None:
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        self.makedirs(os.path.dirname(path))
        try:
            self.mkdir(path)
        except FileExistsError:
            pass

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            self.file(fd)
        finally:
            os.close(fd)


def _put(final: str, tmp: Path, owner: _Owner) -> None:
    """Rename `tmp` to `final`. If final's directory does not exist, the directory is made in
    the staging area with the file inside and renamed in whole."""
    leaf = os.path.dirname(final)
    if os.path.isdir(leaf):
        os.rename(tmp, final)
        return
    holder = tmp.with_name(tmp.name + ".d")
    owner.mkdir(holder)
    os.rename(tmp, holder / os.path.basename(final))
    owner.makedirs(os.path.dirname(leaf))
    os.rename(holder, leaf)


def _new_tag(tag_dir: str, current: _Place, index: _Place, staged: dict[str, Path], owner: _Owner) -> None:
    """A tag that does not exist yet appears with its current link and index entry at once."""
    holder = staged[current.path].with_name(staged[current.path].name + ".t")
    entry = holder / os.path.relpath(index.path, tag_dir)
    owner.mkdir(holder)
    owner.mkdir(holder / "current")
    owner.makedirs(str(entry.parent))
    os.rename(staged[current.path], holder / "current" / "link")
    os.rename(staged[index.path], entry)
    owner.makedirs(os.path.dirname(tag_dir))
    os.rename(holder, tag_dir)


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding `path`: one call instead of an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc_syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int]:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not glibc: sync everything

        def sync_all(fd: int) -> int:
            os.sync()
            return 0

        return sync_all
    fn.argtypes = [ctypes.c_int]
    return lambda fd: int(fn(fd))


_libc_syncfs = _load_syncfs()


def _failpoint(name: str) -> None:
    if name in os.environ.get("LAYOVER_FAILPOINTS", "").split(","):
        os.kill(os.getpid(), signal.SIGSTOP)


# --- after writing ----------------------------------------------------------------------------
def keep_set(contents: Contents) -> KeepSet:
    return KeepSet(
        tags=frozenset((i.repository, i.tag) for i in contents.images if i.tag is not None),
        digests=frozenset((i.repository, Digest(i.digest[7:])) for i in contents.images if i.tag is None),
    )


def _prune(plan: Plan, *, dry_run: bool, progress: Progress) -> PruneSummary:
    keep = keep_set(plan.contents)
    if dry_run:
        # The plan depends on the tree after the install, which a dry run does not write; what it
        # is sure to delete is every tag the package does not list (and what only they use).
        paths = plan.storage.strings()
        tags = [
            f"{repo}:{tag}"
            for repo in plan.storage.repository_names()
            for tag in sorted(_subdirs(paths.tags(repo)))
            if (repo, tag) not in keep.tags
        ]
        shown = ", ".join(tags[:10]) + (" ..." if len(tags) > 10 else "")
        return PruneSummary(
            plan=f"after the install, {len(tags)} tag(s) the package does not list would be "
            f"deleted{': ' + shown if tags else ''}, with every blob only they use"
        )
    gc_plan = plan_gc(plan.storage, keep=keep)
    progress(f"prune: {gc_plan.summary()}")
    result = apply_gc(gc_plan)
    return PruneSummary(plan=gc_plan.summary(), deleted=result.deleted, bytes_freed=result.bytes_freed)


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _verify(plan: Plan, *, exact: bool) -> VerifySummary:
    """The verifier's checks of the installed images: tags, manifests, links, every blob present.
    Blob contents are not hashed again: what this install wrote was hashed as it was staged,
    and what DIR held already was size-checked (hashed too with --deep)."""
    hashed = frozenset(plan.contents.blob_sizes)
    report = verify_storage(plan.storage, plan.images, listed_only=not exact, hashed=hashed)
    problems = [str(p) for p in report.problems]
    for img in plan.contents.images:
        got = resolve(plan.storage, img.ref)
        if got is None or str(got) != img.digest:
            problems.append(f"{img.reference}: resolves to {got or 'nothing'}, the package has {img.digest}")
    return VerifySummary(
        ok=not problems,
        exact=exact,
        images=report.images,
        manifests=report.manifests,
        blobs=report.blobs,
        bytes_hashed=report.bytes_hashed,
        problems=tuple(problems[:50]),
    )


def _restart_advice(plan: Plan, prune: PruneSummary | None, opts: InstallOptions) -> Restart:
    if opts.dry_run:
        return Restart(needed=False, reason="dry run: nothing changed")
    if prune is not None and prune.deleted:
        return Restart(
            needed=True,
            container=opts.restart_container,
            reason="--prune deleted files: a registry serving the storage dir must be restarted "
            "(its blob-descriptor cache may still answer for deleted blobs)",
        )
    if any(p.replace for p in plan.blobs):
        return Restart(
            needed=True,
            container=opts.restart_container,
            reason="damaged blobs were replaced: restart a registry serving the storage dir so it "
            "forgets what it cached about them",
        )
    return Restart(
        needed=False,
        reason="not needed: a running registry serves the new images at once "
        "(it does not cache lookups that missed)",
    )
