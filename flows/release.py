"""The release flow: images.list + source registries -> verified release tarball.

Composition only: every stage is a task in tasks/, every decision is in the library, and the
registries the run owns live exactly as long as the `with registries(wd)` block. A run that
fails or is stopped (Ctrl-C, SIGTERM, a Prefect cancel) still ends with its report, saying the
stage it stopped in: FILE.failed.json and the release-report artifact.
"""

from __future__ import annotations

import functools
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, runtime
from prefect.task_runners import ThreadPoolTaskRunner

from layover import progress, version
from layover.adapters import run as commands
from layover.adapters.console import survive_a_closed_console
from layover.adapters.lock import work_dir_lock
from layover.adapters.runlog import write_failure_log
from layover.adapters.tar_writer import partial_files
from layover.attached import AttachedRow, report_rows
from layover.contents import Contents
from layover.converge import RetryPolicy, SourceWatch
from layover.copy import ManifestCopier, NativeCopier, Route, SkopeoCopier
from layover.errors import ArchiveDamagedError, LayoverError, StageFailed, brief, signal_of
from layover.registries import registries
from layover.report import ReleaseReport, StageReport
from layover.settings import ReleaseRequest
from layover.workdir import WorkDir
from tasks.archive_sync import plan_archive, sync_archive
from tasks.attached_sync import attach, attached_syncer, discovering
from tasks.credentials import source_authfile
from tasks.delta import write_deltas
from tasks.fanout import MAX_CONCURRENCY
from tasks.gc import collect_garbage
from tasks.heal import heal_archive
from tasks.load_list import LoadedList, load_images
from tasks.overlay_reset import reset_overlay
from tasks.package_sync import link_package, sync_package
from tasks.preflight import check_request
from tasks.progress import ArtifactProgress
from tasks.prune import prune
from tasks.registries import clear_stale, teardown
from tasks.report import publish, publish_report
from tasks.tarball import write_release_tarball
from tasks.verify import verify_package


def _run_name() -> str:
    """`release-7.2.list from ci:5000`: what the run builds, not Prefect's random words. A name
    someone gave the run (the API, the UI's run form) stays in front: `nightly-rerun: release...`."""
    request = runtime.flow_run.parameters.get("request")
    try:
        if isinstance(request, dict):
            request = ReleaseRequest.model_validate(request)
    except ValueError:  # the run fails on its parameters in a moment, saying why
        return "layover release (invalid parameters)"
    release = request.run_name if isinstance(request, ReleaseRequest) else "layover release"
    given = runtime.flow_run.name
    if given and not _random_words(given) and not given.endswith(release):
        return f"{given}: {release}"
    return release


def _random_words(name: str) -> bool:
    """Whether `name` is a slug Prefect made up (coolname's words, as in "crafty-cat")."""
    words = name.split("-")
    return len(words) == 2 and all(w in _slug_words() for w in words)


@functools.cache
def _slug_words() -> frozenset[str]:
    import coolname
    import coolname.loader

    config = coolname.loader.load_config(Path(coolname.__file__).parent / "data")
    words: set[str] = set()
    for entry in config.values():
        for item in [*(entry.get("words") or ()), *(entry.get("phrases") or ())]:  # type: ignore[misc]
            words.update(item.split() if isinstance(item, str) else item)
    return frozenset(words)


@flow(
    name="layover-release",
    flow_run_name=_run_name,
    description="Package a release's images.list into a verified registry-storage tarball.",
    # Prefect types the runner's future parameter in a way no instance satisfies
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
    validate_parameters=True,
)
def release(request: ReleaseRequest) -> ReleaseReport:
    started, clock = datetime.now(UTC), time.monotonic()
    survive_a_closed_console()  # a worker that dies must not take the run down with it
    tracker = progress.StageTracker()
    stages: list[StageReport] = []
    listed: LoadedList | None = None
    artifacts = ArtifactProgress()
    with progress.reporting_to(progress.Tee(tracker, progress.current(), artifacts)):
        try:
            with progress.stage("preflight"):
                listed = load_images(request.images)  # every bad line reported before anything is copied
                check_request(request, listed.images)
            built = _build(request, listed, stages)
        except BaseException as e:
            artifacts.close()
            _publish_failure(request, listed, stages, tracker.current, e, started, clock)
            raise
        finally:
            artifacts.close()
    report = _report(request, listed, stages, started, clock, built=built)
    publish_report(report, WorkDir.at(request.work_dir))
    return report


@dataclass(frozen=True)
class _Built:
    sha256: str
    size: int
    contents: Contents
    attached: tuple[AttachedRow, ...]


def _build(request: ReleaseRequest, listed: LoadedList, stages: list[StageReport]) -> _Built:
    wd = WorkDir.at(request.work_dir)
    holder = f"{runtime.flow_run.name or 'layover'} ({runtime.flow_run.id or 'no run id'})"
    run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    with (
        work_dir_lock(wd.lock, holder, wait_seconds=request.lock_wait_seconds, run_id=run_id) as held,
        registries(wd) as regs,
    ):
        clear_stale(wd, request.output, held.dead)
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
                sources=request.sources,
                src_cert_dir=request.src_cert_dir,
            )
            hosts = request.sources.hosts(listed.images.refs) or {request.source: 0}
            probe = regs.probes(
                request.sources,
                listed.images.refs,
                tls_verify=request.src_tls_verify,
                authfile=authfile,
                cert_dir=request.src_cert_dir,
            )
            clients = {
                host: regs.source(
                    host,
                    tls_verify=request.src_tls_verify,
                    authfile=authfile,
                    timeout=min(request.copy_timeout_seconds, 60),
                    cert_dir=request.src_cert_dir,
                )
                for host in hosts
            }
            # The watch asks the registry most images come from whether it still answers.
            main_source = max(hosts, key=lambda h: hosts[h])
            watch = SourceWatch(main_source, request.source_down_seconds, clients[main_source].answers)
            guard = regs.guard(archive, destination=archive)
            copier = (
                NativeCopier(to_archive, probe, clients, regs.client(archive), guard, watch.ok)
                if request.copier == "native"
                else SkopeoCopier(to_archive, probe, guard, watch.ok)
            )
            policy = RetryPolicy(
                retries=request.copy_retries,
                image_deadline=(request.copy_retries + 1) * request.copy_timeout_seconds,
                stage_deadline=request.stage_deadline_seconds,
            )
            # Discovery for the images archive sync finds already archived runs while it copies
            # the others (tasks/attached_sync.py); the attached stage does the rest.
            with attached_syncer(to_archive, request.attached) as syncer:
                with progress.stage("archive sync", images=len(listed.images)):
                    plan = plan_archive(listed.images, copier, concurrency=request.concurrency)
                    with discovering(
                        syncer, plan.archived, concurrency=request.concurrency, retries=request.copy_retries
                    ) as early:
                        stages.append(
                            sync_archive(plan, copier, watch, concurrency=request.concurrency, policy=policy)
                        )
                # Every listed image's signatures and SBOMs; from here on they are images of the package.
                with progress.stage("attached sync", images=len(listed.images)):
                    attached_stage, attached = attach(
                        listed.images,
                        syncer,
                        request.attached,
                        concurrency=request.concurrency,
                        retries=request.copy_retries,
                        early=early,
                    )
            stages.append(attached_stage)
            package_images = attached.images
            # From here on the archive is history, never written: no registry serves it, or (to
            # PUT manifests through a package registry) one serves it read-only.
            regs.stop(archive)

            def build_package() -> tuple[StageReport, str, int, Contents]:  # stages 2-7
                with progress.stage("overlay reset"):
                    stages.append(reset_overlay(wd))
                with progress.stage("manifest pruning"):
                    stages.append(prune(wd))
                if request.package_sync == "files":
                    stages.append(link_package(wd, package_images))
                else:
                    archive = regs.serve_archive(read_only=True)
                    package = regs.serve_package()
                    to_package = Route(
                        archive.host,
                        package.host,
                        wd.merged,
                        src_tls_verify=False,
                        timeout=request.copy_timeout_seconds,
                    )
                    to_package_copier = ManifestCopier(
                        to_package,
                        regs.api(archive),
                        regs.api(package),
                        regs.guard(archive, package, destination=package),
                    )
                    stages.append(
                        sync_package(
                            package_images,
                            to_package_copier,
                            concurrency=request.concurrency,
                            retries=request.copy_retries,
                        )
                    )
                    regs.stop(package)  # never delete under a running registry
                with progress.stage("gc"):
                    stages.append(collect_garbage(wd, package_images))
                with progress.stage("verify"):
                    # blob data is hashed once, by the tarball stage, before it publishes
                    stages.append(verify_package(wd, package_images, attached.record, hash_blobs=False))
                with progress.stage("tarball"):
                    return write_release_tarball(wd, request.output, listed, package_images, attached.record)

            try:
                tar_stage, sha256, size, contents = build_package()
            except ArchiveDamagedError as damage:
                # Archive blobs that do not hash to their names (found by verify or by the
                # tarball, which then published nothing): archive sync's heal puts them back
                # from the source with the overlay unmounted, then the package is built again,
                # once (docs/design.md §1, stage 1c). The main source is asked for them.
                with progress.stage("archive heal"):
                    stages.append(heal_archive(wd, package_images, damage, regs, clients[main_source]))
                tar_stage, sha256, size, contents = build_package()
            stages.append(tar_stage)
            if request.delta_from:
                with progress.stage("deltas"):
                    stages.extend(write_deltas(wd, request, sha256))
        except BaseException as e:
            sig = signal_of(e)
            if sig is not None:  # stopping: end every copy now, start none (before teardown)
                commands.stop_all(sig)
                for partial in partial_files(request.output):  # a signal may land anywhere
                    partial.unlink(missing_ok=True)
            raise
        finally:
            teardown(wd, regs)
    return _Built(sha256, size, contents, report_rows(attached.record))


def _report(
    request: ReleaseRequest,
    listed: LoadedList | None,
    stages: list[StageReport],
    started: datetime,
    clock: float,
    *,
    built: _Built | None = None,
    status: str = "succeeded",
    failed_stage: str | None = None,
    error: str | None = None,
    failures: tuple[str, ...] = (),
) -> ReleaseReport:
    return ReleaseReport(
        list_source=listed.source if listed else str(getattr(request.images, "path", "")),
        list_commit=listed.commit if listed else None,
        images=len(listed.images) if listed else 0,
        output=str(request.output),
        sha256=built.sha256 if built else "",
        tarball_bytes=built.size if built else 0,
        stages=tuple(stages),
        contents=built.contents if built else None,
        attached=built.attached if built else (),
        status=status,
        source=", ".join([request.source, *request.registry_map]),
        layover_version=version(),
        started=started.isoformat(timespec="seconds"),
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_seconds=round(time.monotonic() - clock, 3),
        failed_stage=failed_stage,
        error=error,
        failures=failures,
    )


def _publish_failure(
    request: ReleaseRequest,
    listed: LoadedList | None,
    stages: list[StageReport],
    stage: str | None,
    err: BaseException,
    started: datetime,
    clock: float,
) -> None:
    """The failed run's report and log, written whatever else is failing: they are how the
    user learns where it stopped."""
    sig = signal_of(err)
    failures = tuple(err.lines()) if isinstance(err, StageFailed) else ()
    message = f"interrupted by {_signame(sig)}" if sig is not None else brief(err, 500)
    report = _report(
        request,
        listed,
        stages,
        started,
        clock,
        status="interrupted" if sig else "failed",
        failed_stage=stage,
        error=message,
        failures=failures,
    )
    logger = get_run_logger()
    try:
        logger.error("stopped in %s: %s", stage or "preparation", message)
        for line in failures:
            logger.error(line)
        for image, e in getattr(err, "failures", ()) or [("", err)]:
            detail = getattr(e, "detail", "")
            if detail:  # the long text the one-line messages leave out (skopeo's stderr)
                logger.error("%s%s", f"{image}: " if image else "", detail)
        log_file = write_failure_log(WorkDir.at(request.work_dir).logs, request.run_name, err)
        if log_file is not None and isinstance(err, LayoverError):
            err.log_file = str(log_file)
        publish(report)
    except Exception as e:  # noqa: BLE001 - reporting a failure must not replace it
        logger.warning("could not publish the failure report: %s", brief(e))


def _signame(sig: int) -> str:
    return signal.Signals(sig).name
