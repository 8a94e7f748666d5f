"""The per-image copy both sync stages fan out: one `skopeo copy`, retried on transient errors.

Retries live here, on the Prefect task, and nowhere below it (skopeo runs with
`--retry-times 0`): stacking retry layers multiplies attempts (DESIGN §5).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from layover.adapters import skopeo
from layover.adapters.manifest_copy import copy_manifests
from layover.adapters.registry import Registry
from layover.adapters.registry_api import RegistryAPI
from layover.adapters.source_probe import SourceProbe
from layover.storage.images import image_complete, resolve
from layover.errors import (
    CommandError,
    CopyError,
    DiskFullError,
    LayoverError,
    StorageError,
    Transient,
)
from layover.storage.layout import StorageLayout
from layover.reference import Digest, ImageRef
from layover.storage.repair import scan_repository
from layover.report import ImageCopy
from layover.workdir import WorkDir
from tasks.registries import manager, revive


@dataclass(frozen=True)
class Endpoints:
    """Where one stage copies from and to."""

    src_host: str
    dst_host: str
    dst_storage: Path  # the destination registry's root dir, to size the blobs that moved
    src_tls_verify: bool = True
    src_authfile: Path | None = None
    # Registries this run owns on either end: revived before a retry if they stopped answering.
    own: tuple[Registry, ...] = ()
    wd: WorkDir | None = None
    timeout: float = 900
    # "skopeo": a real copy that moves blobs (archive sync). "manifests": write manifests only,
    # in process (package sync: every blob is already there).
    copier: Literal["skopeo", "manifests"] = "skopeo"


def _transient_only(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry connection errors, 5xx and timeouts; an unknown image or a denied login stays failed."""
    try:
        state.result()
    except Transient:
        return True
    except Exception:
        return False
    return False


def already_archived(ref: ImageRef, ends: Endpoints) -> ImageCopy | None:
    """The copy's result without copying, if the archive already holds, whole, the digest the
    source's tag has now (one HEAD request); None means a real copy must run."""
    started = time.monotonic()
    layout = StorageLayout(ends.dst_storage)
    digest = _probe(ends).digest(ref)
    if digest is None or resolve(layout, ref) != digest:
        return None
    blobs = image_complete(layout, ref.repository, digest)
    if blobs is None:
        return None
    return ImageCopy(str(ref), str(digest), 0, blobs, 0, time.monotonic() - started)


def copy_one(ref: ImageRef, ends: Endpoints) -> ImageCopy:
    started = time.monotonic()
    layout = StorageLayout(ends.dst_storage)
    if ends.copier == "manifests":
        digest, _ = copy_manifests(_api(ends.src_host), _api(ends.dst_host), ref)
        blobs = image_complete(layout, ref.repository, digest)
        if blobs is None:
            raise CopyError(f"{ref}: written, but the package does not hold it whole")
        return ImageCopy(str(ref), str(digest), 0, blobs, 0, time.monotonic() - started)
    result = skopeo.copy(
        f"docker://{ref.at(ends.src_host)}",
        f"docker://{ends.dst_host}/{ref.destination_suffix}",
        src_tls_verify=ends.src_tls_verify,
        dest_tls_verify=False,  # our registries listen on 127.0.0.1, plain HTTP
        src_authfile=ends.src_authfile,
        timeout=ends.timeout,
    )
    copied = tuple(sorted((d.hex, _size(layout, d)) for d in result.copied))
    return ImageCopy(
        image=str(ref),
        manifest_digest=str(result.manifest_digest) if result.manifest_digest else None,
        blobs_copied=len(result.copied),
        blobs_reused=len(result.skipped),
        bytes_copied=sum(size for _, size in copied),
        seconds=time.monotonic() - started,
        copied=copied,
    )


def _size(layout: StorageLayout, digest: Digest) -> int:
    try:
        return layout.blob_data(digest).stat().st_size
    except FileNotFoundError:
        return 0  # a foreign layer has no data; nothing moved


_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def _api(host: str) -> RegistryAPI:
    """One HTTP client per registry of ours, shared by the copy threads."""
    with _clients_lock:
        api = _clients.get(host)
        if api is None:
            api = _clients[host] = RegistryAPI(host)
        return api  # type: ignore[return-value]


def _probe(ends: Endpoints) -> SourceProbe:
    key = f"probe:{ends.src_host}:{ends.src_tls_verify}:{ends.src_authfile}"
    with _clients_lock:
        probe = _clients.get(key)
        if probe is None:
            probe = _clients[key] = SourceProbe(
                ends.src_host, tls_verify=ends.src_tls_verify, authfile=ends.src_authfile
            )
        return probe  # type: ignore[return-value]


def copy_task(stage: str) -> Task:
    """A copy task for one stage, named so the UI shows `archive-sync: lib/app:1.0`."""

    @task(
        name=f"{stage}-copy",
        task_run_name=f"{stage}: {{ref}}",
        retries=3,
        retry_delay_seconds=exponential_backoff(backoff_factor=2),
        retry_jitter_factor=0.5,
        retry_condition_fn=_transient_only,
        cache_policy=NO_CACHE,
        # No tags: Prefect acquires a tag concurrency slot for every tagged task run, one
        # request at a time per tag set. Measured, 300 small images: 30.3 s with a tag, 24.4 s
        # without. Cap copies per run with --concurrency, runs per pool with the work pool's
        # concurrency limit (docs/runbook.md).
    )
    def copy_image(ref: ImageRef, ends: Endpoints) -> ImageCopy:
        return copy_diagnosed(ref, ends)

    return copy_image


def copy_diagnosed(ref: ImageRef, ends: Endpoints) -> ImageCopy:
    """copy_one, with failures turned into what to do about them."""
    try:
        return copy_one(ref, ends)
    except (CommandError, CopyError) as e:
        # A full disk or a damaged file under a registry of ours shows up as a bare HTTP 500:
        # name the directory or file instead (and do not retry: neither clears itself).
        better = _disk_full(ref, ends) or _damaged_storage(ref, ends, e)
        if better is not None:
            raise better from e
        if isinstance(e, Transient):
            _revive_own(ends)
        raise


def _revive_own(ends: Endpoints) -> None:
    """A registry of ours that died (killed, engine restart) is brought back before Prefect's
    retry, so the retry has something to talk to."""
    if ends.wd is not None:
        for reg in ends.own:
            revive(ends.wd, reg)


def _disk_full(ref: ImageRef, ends: Endpoints) -> DiskFullError | None:
    """A registry of ours writing to a full disk answers 500 (which looks transient); its log
    says "no space left on device"."""
    if ends.wd is None:
        return None
    storage = os.path.realpath(ends.dst_storage)
    for reg in ends.own:
        if os.path.realpath(reg.storage) != storage:
            continue
        try:
            said = "no space left on device" in manager(ends.wd).logs(reg)[-20000:]
        except LayoverError:
            said = False
        if said:
            st = os.statvfs(storage)
            # ENOSPC also means "no inodes left": registry storage is many small files and dirs
            inodes = f", {st.f_favail} inodes free" if st.f_files else ""
            return DiskFullError(
                f"{ends.dst_storage}: no space left on device while copying {ref} "
                f"({st.f_bavail * st.f_frsize} bytes{inodes}; the image's new blobs and links "
                "need more): free space (or inodes) or move the work dir to a bigger disk and run "
                "again. The archive keeps everything already copied; nothing was shipped"
            )
    return None


def _damaged_storage(ref: ImageRef, ends: Endpoints, e: LayoverError) -> StorageError | None:
    """Our registry answering 500 is usually a damaged file in its storage (a garbage link, a
    manifest blob that is not what its digest says): name the file rather than a bare HTTP 500."""
    if ends.wd is None or not ends.own:
        return None
    seen: set[str] = set()
    for reg in ends.own:
        storage = os.path.realpath(reg.storage)
        if storage in seen:
            continue
        seen.add(storage)
        damage = scan_repository(StorageLayout(Path(storage)), ref.repository)
        if damage:
            return StorageError(
                str(damage[0].path),
                f"{damage[0].reason} ({len(damage)} damaged file(s) for {ref.repository}, found "
                f"after: {e}); nothing shipped. Run `layover repair-archive {ends.wd.root}` and "
                "run again: archive sync re-fetches the removed files from the source",
            )
    return None
