"""The release flow: images.list + CI registry -> verified release tarball.

Composition only: every stage is a task in tasks/, every decision is in the library, and the
registries the run owns live exactly as long as the `with registries(wd)` block.
"""

from __future__ import annotations

from prefect import flow, runtime
from prefect.task_runners import ThreadPoolTaskRunner

from layover.adapters.lock import work_dir_lock
from layover.attached import report_rows
from layover.converge import RetryPolicy, SourceWatch
from layover.copy import ManifestCopier, NativeCopier, Route, SkopeoCopier
from layover.errors import ArchiveDamagedError
from layover.registries import registries
from layover.report import ReleaseReport
from layover.settings import ReleaseRequest
from layover.workdir import WorkDir
from tasks.archive_sync import sync_archive
from tasks.attached_sync import attach
from tasks.credentials import source_authfile
from tasks.delta import write_deltas
from tasks.fanout import MAX_CONCURRENCY
from tasks.gc import collect_garbage
from tasks.heal import heal_archive
from tasks.load_list import load_images
from tasks.overlay_reset import reset_overlay
from tasks.package_sync import link_package, sync_package
from tasks.prune import prune
from tasks.registries import clear_stale, teardown
from tasks.report import publish_report
from tasks.tarball import write_release_tarball
from tasks.verify import verify_package


@flow(
    name="layover-release",
    description="Package a release's images.list into a verified registry-storage tarball.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),
    validate_parameters=True,
)
def release(request: ReleaseRequest) -> ReleaseReport:
    wd = WorkDir.at(request.work_dir)
    listed = load_images(request.images)  # every bad line reported before anything is copied
    holder = f"{runtime.flow_run.name or 'layover'} ({runtime.flow_run.id or 'no run id'})"
    with work_dir_lock(wd.lock, holder, wait_seconds=request.lock_wait_seconds), registries(wd) as regs:
        clear_stale(wd, request.output)
        try:
            authfile = source_authfile(wd, request)
            archive = regs.serve_archive()
            to_archive = Route(
                request.source,
                archive.host,
                wd.lower,
                request.src_tls_verify,
                authfile,
                request.copy_timeout_seconds,
            )
            probe = regs.probe(request.source, tls_verify=request.src_tls_verify, authfile=authfile)
            source = regs.source(
                request.source,
                tls_verify=request.src_tls_verify,
                authfile=authfile,
                timeout=min(request.copy_timeout_seconds, 60),
            )
            watch = SourceWatch(request.source, request.source_down_seconds, source.answers)
            guard = regs.guard(archive, destination=archive)
            copier = (
                NativeCopier(to_archive, probe, source, regs.client(archive), guard, watch.ok)
                if request.copier == "native"
                else SkopeoCopier(to_archive, probe, guard, watch.ok)
            )
            policy = RetryPolicy(
                retries=request.copy_retries,
                image_deadline=(request.copy_retries + 1) * request.copy_timeout_seconds,
                stage_deadline=request.stage_deadline_seconds,
            )
            stages = [
                sync_archive(listed.images, copier, watch, concurrency=request.concurrency, policy=policy)
            ]
            # Every listed image's signatures and SBOMs; from here on they are images of the package.
            attached_stage, attached = attach(
                listed.images, to_archive, request.attached, concurrency=request.concurrency,
                retries=request.copy_retries,
            )
            stages.append(attached_stage)
            package_images = attached.images
            # From here on the archive is history, never written: no registry serves it, or (to
            # PUT manifests through a package registry) one serves it read-only.
            regs.stop(archive)

            def build_package() -> None:  # stages 2-6
                stages.append(reset_overlay(wd))
                stages.append(prune(wd))
                if request.package_sync == "files":
                    stages.append(link_package(wd, package_images))
                else:
                    archive = regs.serve_archive(read_only=True)
                    package = regs.serve_package()
                    to_package = Route(archive.host, package.host, wd.merged, src_tls_verify=False,
                                       timeout=request.copy_timeout_seconds)
                    to_package_copier = ManifestCopier(
                        to_package, regs.api(archive), regs.api(package),
                        regs.guard(archive, package, destination=package),
                    )
                    stages.append(
                        sync_package(package_images, to_package_copier, concurrency=request.concurrency,
                                     retries=request.copy_retries)
                    )
                    regs.stop(package)  # never delete under a running registry
                stages.append(collect_garbage(wd, package_images))
                stages.append(verify_package(wd, package_images, attached.record))

            try:
                build_package()
            except ArchiveDamagedError as damage:
                # Archive blobs that do not hash to their names: archive sync's heal puts them
                # back from the source with the overlay unmounted, then the package is built
                # again, once (docs/design.md §1, stage 1c).
                stages.append(heal_archive(wd, package_images, damage, regs, source))
                build_package()
            tar_stage, sha256, size, contents = write_release_tarball(
                wd, request.output, listed, package_images, attached.record
            )
            stages.append(tar_stage)
            stages += write_deltas(wd, request, sha256)
        finally:
            teardown(wd, regs)
    report = ReleaseReport(
        list_source=listed.source,
        list_commit=listed.commit,
        images=len(listed.images),
        output=str(request.output),
        sha256=sha256,
        tarball_bytes=size,
        stages=tuple(stages),
        contents=contents,
        attached=report_rows(attached.record),
    )
    publish_report(report, wd)
    return report
