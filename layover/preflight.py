"""Everything a release run needs, checked before anything starts (no Prefect, no container, no
mount): well under a second when all is well, and every problem found at once, one line each,
naming the flag (CLI) or the parameter (Prefect) to fix.

    images     the list names at least one image; no repository path filled from two sources
    output     not a directory; its directory can be written
    work_dir   not a file; its directory can be written; no other run holds it (lock)
    space      the work dir's and the output's filesystems hold what the last release needed
    tools      root (overlay mounts), skopeo on PATH, the Docker engine answers
    auth       the authfile (flag or REGISTRY_AUTH_FILE) is readable containers-auth JSON
    cert dir   --src-cert-dir is a directory
    source     every source registry answers GET /v2/ within a few seconds, with the
               credentials skopeo will use (401 without credentials is fine: it is up)

The machine is asked through `Host` (layover/adapters/host.py), so every rule here is testable
without one. The same checks run as the flow's first task, for runs Prefect starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

from layover.errors import (
    AuthError,
    CredentialsError,
    DiskFullError,
    InputError,
    LayoverError,
    LockedError,
    PreflightFailed,
    RegistryError,
    SourceUnreachableError,
    TLSError,
    UsageError,
)
from layover.imagelist import ImageList
from layover.naming import name
from layover.settings import ReleaseRequest
from layover.sources import SourceMap, check_one_source_per_repository
from layover.units import human_bytes

PING_TIMEOUT = 5.0  # seconds for one GET /v2/: a registry that answers at all answers in less
SPACE_FLOOR = 256 << 20  # free space below this fails even a first release, which has no estimate


class Reach(Enum):
    OK = "ok"  # 200, or 401 with credentials that then worked
    ANONYMOUS = "anonymous"  # 401 and no credentials configured: the registry is up
    REFUSED = "refused"  # 401/403 with the credentials we have
    TLS = "tls"  # the certificate did not verify
    UNREACHABLE = "unreachable"  # no answer, refused connection, unknown host, timeout
    NOT_A_REGISTRY = "not a registry"  # an answer, but not the registry API (404, 5xx)


@dataclass(frozen=True)
class Ping:
    reach: Reach
    detail: str = ""  # status or reason, one line, no secrets
    credentials: str = ""  # where the credentials came from, when there were any


@dataclass(frozen=True)
class Need:
    """What the last release built with this work dir or output took: the space estimate."""

    archive_bytes: int  # what archive sync added to the work dir
    tarball_bytes: int
    source: str  # the report it was read from


def need_from_report(doc: object, source: str) -> Need | None:
    """The estimate from a run's report (FILE.json): its tarball and what archive sync added."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tarball_bytes"), int):
        return None
    stages = doc.get("stages")
    if not isinstance(stages, list):
        stages = []
    archive = sum(
        s.get("bytes_moved", 0)
        for s in stages
        if isinstance(s, dict) and s.get("name") == "archive sync" and isinstance(s.get("bytes_moved"), int)
    )
    return Need(archive, doc["tarball_bytes"], source)


class Host(Protocol):
    """What preflight asks of the machine."""

    def is_root(self) -> bool: ...
    def which(self, tool: str) -> str | None: ...
    def docker_problem(self) -> str | None: ...
    def cannot_write(self, directory: Path) -> str | None: ...
    def lock_holder(self, lock: Path) -> str | None: ...
    def free_bytes(self, path: Path) -> int: ...
    def same_filesystem(self, a: Path, b: Path) -> bool: ...
    def read(self, path: Path) -> bytes: ...
    def env(self, key: str) -> str | None: ...
    def last_need(self, work_dir: Path, output: Path) -> Need | None: ...
    def ping(
        self, host: str, *, tls_verify: bool, cert_dir: Path | None, authfile: Path | None, timeout: float
    ) -> Ping: ...


@dataclass(frozen=True)
class Plan:
    """What to check: the settings of one run, as the request has them."""

    images: ImageList
    images_field: str  # "images" for a file, "images.repo" for a list in git
    sources: SourceMap
    work_dir: Path
    output: Path
    src_tls_verify: bool = True
    src_authfile: Path | None = None
    src_cert_dir: Path | None = None
    check_lock: bool = True


def check(plan: Plan, host: Host) -> None:
    """Raise the one problem, or PreflightFailed naming every problem; return if all is well."""
    problems = find_problems(plan, host)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise PreflightFailed(problems)


# The checks that passed in this context, the lock aside: `layover run` checks before it starts
# Prefect, and the flow it then runs in the same process need not ask the machine again.
_passed: ContextVar[Plan | None] = ContextVar("layover_preflight_passed", default=None)


def remember_passed(plan: Plan) -> None:
    """Note that `plan` has just passed `check`, for `passed_already` in this context."""
    _passed.set(replace(plan, check_lock=False))


def passed_already(plan: Plan) -> bool:
    """Whether the same checks (same list, paths, sources; the lock aside) passed in this context."""
    return _passed.get() == replace(plan, check_lock=False)


def find_problems(plan: Plan, host: Host) -> list[LayoverError]:
    """Every problem, in the order a user fixes them: flags, inputs, space, tools, source."""
    with ThreadPoolExecutor(4) as pool:  # the slow questions (network, engine) at once
        pings = {
            h: pool.submit(
                host.ping,
                h,
                tls_verify=plan.src_tls_verify,
                cert_dir=plan.src_cert_dir,
                authfile=plan.src_authfile,
                timeout=PING_TIMEOUT,
            )
            for h in sorted(plan.sources.hosts(plan.images.refs))
        }
        docker = pool.submit(host.docker_problem)
        problems = [*_paths(plan, host), *_images(plan), *_credentials(plan, host), *_space(plan, host)]
        problems += _tools(host, docker.result())
        problems += _source(plan, {h: f.result() for h, f in pings.items()})
    return problems


# --- the checks -----------------------------------------------------------------------------
def _images(plan: Plan) -> list[LayoverError]:
    if not plan.images.entries:
        return [
            InputError(
                f"{name(plan.images_field)} {plan.images.source}: the list names no image; "
                "add one reference per line"
            )
        ]
    try:
        check_one_source_per_repository(plan.images, plan.sources)
    except InputError as e:
        return [e]
    return []


def _paths(plan: Plan, host: Host) -> list[LayoverError]:
    out: list[LayoverError] = []
    flag = name("output")
    if plan.output.is_dir():
        out.append(
            UsageError(
                f"{flag} {plan.output}: is a directory; give the tarball's file name, "
                f"e.g. {plan.output / 'release.tar'}"
            )
        )
    else:
        problem = _unwritable(plan.output.parent, host)
        if problem:
            out.append(UsageError(f"{flag} {plan.output}: {problem}; choose a directory you can write"))
    flag = name("work_dir")
    if plan.work_dir.exists() and not plan.work_dir.is_dir():
        out.append(UsageError(f"{flag} {plan.work_dir}: is not a directory"))
    else:
        problem = _unwritable(plan.work_dir, host)
        if problem:
            out.append(UsageError(f"{flag} {plan.work_dir}: {problem}; choose a directory you can write"))
        elif plan.check_lock:
            holder = host.lock_holder(plan.work_dir / "lock")
            if holder:
                out.append(
                    LockedError(
                        f"work dir {plan.work_dir} is in use by {holder}; wait for it to "
                        f"finish, or use another {flag}"
                    )
                )
    return out


def _unwritable(directory: Path, host: Host) -> str | None:
    """Why nothing can be created in `directory` (or the nearest existing parent), or None."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    problem = host.cannot_write(existing)
    return f"cannot write in {existing} ({problem})" if problem else None


def _credentials(plan: Plan, host: Host) -> list[LayoverError]:
    out: list[LayoverError] = []
    if plan.src_authfile is not None:
        problem = authfile_problem(plan.src_authfile, host)
        if problem:
            out.append(CredentialsError(f"{name('src_authfile')} {plan.src_authfile}: {problem}"))
    else:
        env_file = host.env("REGISTRY_AUTH_FILE")
        if env_file:
            problem = authfile_problem(Path(env_file), host)
            if problem:
                out.append(
                    CredentialsError(
                        f"REGISTRY_AUTH_FILE={env_file}: {problem} (skopeo reads it when "
                        f"{name('src_authfile')} is not given): fix it, or unset REGISTRY_AUTH_FILE"
                    )
                )
    if plan.src_cert_dir is not None and not plan.src_cert_dir.is_dir():
        out.append(
            UsageError(
                f"{name('src_cert_dir')} {plan.src_cert_dir}: no such directory "
                "(it holds the registry's CA as *.crt)"
            )
        )
    return out


def authfile_problem(path: Path, host: Host) -> str | None:
    """What is wrong with a containers-auth.json (never quoting its content), or None."""
    try:
        data = host.read(path)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory, not a containers-auth.json file"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    try:
        doc = json.loads(data)
    except ValueError as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        return f'is not JSON{where}; it must be a containers-auth.json ({{"auths": {{...}}}})'
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        return 'is not a containers-auth.json: "auths" must be an object of registries'
    return None


def _space(plan: Plan, host: Host) -> list[LayoverError]:
    work = _existing(plan.work_dir)
    out_dir = _existing(plan.output.parent)
    need = host.last_need(plan.work_dir, plan.output)
    work_need = max(SPACE_FLOOR, need.archive_bytes if need else 0)
    out_need = max(SPACE_FLOOR, need.tarball_bytes if need else 0)
    basis = f"estimated from the last release ({need.source})" if need else "the minimum for any release"
    wanted = [(work, work_need, "work_dir"), (out_dir, out_need, "output")]
    if host.same_filesystem(work, out_dir):
        wanted = [(work, work_need + out_need, "work_dir")]
    out: list[LayoverError] = []
    for path, want, field in wanted:
        free = host.free_bytes(path)
        if free < want:
            out.append(
                DiskFullError(
                    f"{path}: {human_bytes(free)} free, the run needs about {human_bytes(want)} ({basis}); "
                    f"free space, or give {name(field)} on a bigger filesystem"
                )
            )
    return out


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _tools(host: Host, docker_problem: str | None) -> list[LayoverError]:
    out: list[LayoverError] = []
    if not host.is_root():
        out.append(LayoverError("layover run needs root: it mounts overlayfs; run it as root"))
    if host.which("skopeo") is None:
        out.append(
            LayoverError(
                "skopeo is not installed (not on PATH); install it "
                "(apt-get install skopeo; scripts/setup.sh does)"
            )
        )
    if docker_problem:
        out.append(
            RegistryError(
                f"the Docker engine does not answer ({docker_problem}); start dockerd (scripts/setup.sh does)"
            )
        )
    return out


def _source(plan: Plan, pings: Mapping[str, Ping]) -> list[LayoverError]:
    out: list[LayoverError] = []
    counts = plan.sources.hosts(plan.images.refs)
    for host, ping in pings.items():
        what = _which_source(plan, host, counts[host])
        if ping.reach in (Reach.OK, Reach.ANONYMOUS):
            continue
        if ping.reach is Reach.UNREACHABLE:
            out.append(
                SourceUnreachableError(
                    f"{what}: no registry answers ({ping.detail}); check the host and port, and that the "
                    f"registry is up (waited up to {PING_TIMEOUT:g} s)"
                )
            )
        elif ping.reach is Reach.NOT_A_REGISTRY:
            out.append(
                SourceUnreachableError(
                    f"{what}: GET /v2/ answered {ping.detail}, not the registry API; check the host and port"
                )
            )
        elif ping.reach is Reach.TLS:
            out.append(
                TLSError(
                    f"{what}: TLS certificate did not verify ({ping.detail})",
                    hint=f"give its CA with {name('src_cert_dir')} DIR (DIR/*.crt), or turn verification "
                    f"off with {name('src_tls_verify')}",
                )
            )
        else:
            out.append(
                AuthError(
                    f"{what}: refused the credentials from {ping.credentials or 'the default authfiles'} "
                    f"({ping.detail})",
                    hint=f"log in again (skopeo login), or give the right file with {name('src_authfile')}",
                )
            )
    return out


def _which_source(plan: Plan, host: str, images: int) -> str:
    if host == plan.sources.default:
        return f"{name('source')} {host}"
    redirected = [src for src, dst in plan.sources.redirects if dst == host]
    via = f" (via {name('registry_map')} {redirected[0]}={host})" if redirected else ""
    return f"source registry {host}{via}, named by {images} image(s) in the list"


def plan_for(request: ReleaseRequest, images: ImageList, *, check_lock: bool = True) -> Plan:
    """What to check for one release request."""
    return Plan(
        images=images,
        images_field=request.list_field,
        sources=request.sources,
        work_dir=request.work_dir.absolute(),
        output=request.output.absolute(),
        src_tls_verify=request.src_tls_verify,
        src_authfile=request.src_authfile,
        src_cert_dir=request.src_cert_dir,
        check_lock=check_lock and request.lock_wait_seconds == 0,
    )
