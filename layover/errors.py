"""Every error Layover raises on purpose, and the exit code each one means.

    LayoverError                    catch this to catch everything below           exit 1
    ├── Transient                   worth retrying (network, 5xx, timeout): the one class
    │   │                           every retry condition checks
    │   ├── TransientCommandError   a subprocess failed for a transient reason (also CommandError)
    │   ├── TransientCopyError      one image copy failed for a transient reason (also CopyError)
    │   └── TransientHTTPError      a registry answered 5xx/429 or the connection broke
    ├── UsageError                  a flag or parameter is wrong                   exit 2
    ├── InputError                  what the user handed in cannot be used         exit 3
    │   ├── ImageListError          images.list has bad lines (every one, with its number)
    │   ├── ReferenceError_         one image reference does not follow the grammar
    │   ├── GitSourceError          a list cannot be read from git (names repo, ref, path)
    │   ├── CredentialsError        an authfile or secret is missing, unreadable or not auth JSON
    │   ├── AuthError               a registry refused the credentials (says which ones to check)
    │   ├── TLSError                a registry's certificate did not verify
    │   ├── ImageNotFoundError      the source has no such image: do not retry
    │   ├── MissingSignatureError   --attached require: listed images without a signature
    │   ├── PackageError            a package is refused (checksum, member, base): nothing changed
    │   └── TagConflictError        a target registry's tag points elsewhere: nothing was pushed
    ├── SourceUnreachableError      the source registry does not answer at all     exit 4
    ├── DiskFullError               no space left; names the path and the space needed   exit 5
    ├── VerifyError                 the package does not serve exactly the listed images exit 6
    ├── StorageError                a registry storage file is corrupt (names the file)  exit 6
    │   └── ArchiveDamagedError     archive blobs do not hash to their names: the run heals them
    ├── GCError                     marking failed: nothing was deleted                  exit 6
    ├── CommandError                a subprocess failed (argv, exit code, stderr kept)
    ├── RegistryError               a registry container or endpoint cannot be used
    │   └── RegistryHTTPError       a registry answered with a status we did not expect
    ├── CopyError                   one image could not be copied
    ├── MountError                  overlayfs could not be mounted or unmounted
    ├── LockedError                 another run holds the work dir
    ├── StageFailed                 one or more images failed; every one is named
    ├── PreflightFailed             several problems before the start; every one is named
    └── Interrupted                 Ctrl-C or SIGTERM stopped the run              exit 130/143

Every message is one line that says what happened and what to do next. Long diagnostic text
(a tool's stderr) is kept in `detail` for logs, never in the message. `cause` names the class of
failure in the one-line-per-image report (not found, unauthorized, TLS, network, disk, damaged
archive); `brief` is the message without its hint, for lines that say the hint once for many.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Sequence

# Exit codes, documented in docs/cli.md (summary in the README).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_SOURCE_UNREACHABLE = 4
EXIT_DISK = 5
EXIT_VERIFY = 6
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class LayoverError(Exception):
    """Base class: catch this to catch every error Layover raises on purpose."""

    exit_code = EXIT_FAILURE
    cause = "failed"

    def __init__(self, message: str = "", *, detail: str = "", hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.brief = message  # what happened, without the hint
        self.hint = hint  # what to do about it
        self.detail = detail  # long diagnostic text for logs (a tool's stderr), never shown inline
        self.log_file: str | None = None  # where the run wrote the detail, once it did


def brief(err: BaseException, limit: int = 300) -> str:
    """One line about `err`, hint left out, at most `limit` characters."""
    text = err.brief if isinstance(err, LayoverError) else f"{type(err).__name__}: {err}"
    line = " ".join(text.split()) or type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def cause(err: BaseException) -> str:
    """The failure class of `err` as the per-image report names it."""
    return err.cause if isinstance(err, LayoverError) else "failed"


class Transient(LayoverError):
    """A failure worth retrying: connection refused/reset, 5xx, 429, timeout."""

    cause = "network"


class UsageError(LayoverError):
    """A command-line flag or flow parameter is wrong."""

    exit_code = EXIT_USAGE
    cause = "usage"


class InputError(LayoverError):
    """Something the user handed in (list, credentials, package, reference) cannot be used."""

    exit_code = EXIT_INPUT
    cause = "input"


class ReferenceError_(InputError, ValueError):  # noqa: N801 - the builtin ReferenceError means something else
    """An image reference does not follow the Distribution reference grammar."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid image reference {text!r}: {reason}")


class ImageListError(InputError):
    """An images.list has one or more bad lines. Every bad line is listed."""

    def __init__(self, path: str, problems: Sequence[tuple[int, str, str]]) -> None:
        self.path = path
        self.problems = tuple(problems)  # (line number, line text, reason)
        lines = [f"{path}:{n}: {reason} (line: {text!r})" for n, text, reason in self.problems]
        super().__init__(
            f"{path}: {len(self.problems)} bad line(s); fix them and run again, nothing was copied:\n"
            + "\n".join(lines)
        )


class GitSourceError(InputError):
    """The images.list could not be read from a git repository at a ref."""

    def __init__(self, repo: str, ref: str, path: str, reason: str) -> None:
        self.repo = repo
        self.ref = ref
        self.path = path
        self.reason = reason
        super().__init__(f"images.list {path!r} at {ref!r} in {repo}: {reason}")


class CredentialsError(InputError):
    """An authfile or credentials block is missing, unreadable or not a containers-auth.json."""

    cause = "credentials"


class AuthError(InputError):
    """A registry refused the credentials (or demanded some we do not have)."""

    cause = "unauthorized"


class TLSError(InputError):
    """A registry's TLS certificate did not verify."""

    cause = "TLS"


class ImageNotFoundError(InputError):
    """The source registry has no such image (or tag, or digest): retrying will not help."""

    cause = "not found"


class MissingSignatureError(InputError):
    """`--attached require` and listed images have no signature at the source: every one is named."""

    def __init__(self, images: Sequence[str]) -> None:
        self.images = tuple(images)
        super().__init__(
            f"--attached require: {len(self.images)} listed image(s) have no signature at the source; "
            "sign them (cosign sign) or run with --attached copy:\n"
            + "\n".join(f"{image}: no signature" for image in self.images)
        )


class PackageError(InputError):
    """A package (tarball, contents file, delta) is refused; nothing was changed."""


class TagConflictError(InputError):
    """A registry being pushed to already has a tag at another digest (`--on-existing-tag fail`)."""


class SourceUnreachableError(LayoverError):
    """The source registry does not answer at all (not a flaky request: a dead host)."""

    exit_code = EXIT_SOURCE_UNREACHABLE
    cause = "network"


class DiskFullError(LayoverError):
    """No space left on a device; the message names the path."""

    exit_code = EXIT_DISK
    cause = "disk"


class VerifyError(LayoverError):
    """The package cannot serve every listed image exactly."""

    exit_code = EXIT_VERIFY
    cause = "verify"


class StorageError(LayoverError):
    """A file in a registry storage tree is corrupt or unreadable."""

    exit_code = EXIT_VERIFY
    cause = "damaged archive"

    def __init__(self, path: str, reason: str, *, hint: str = "", detail: str = "") -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}", hint=hint, detail=detail)


class ArchiveDamagedError(StorageError):
    """Blobs of the archive (seen through the package) do not hash to their names. The release
    flow catches it and heals the archive once (tasks/heal.py); it reaches the user only if the
    damage is still there after that."""

    def __init__(self, path: str, reason: str, blobs: Sequence[str]) -> None:
        # blobs: the damaged blobs' sha256 hex names (what their storage dirs are called)
        super().__init__(path, reason)
        self.blobs = tuple(blobs)


class GCError(LayoverError):
    """Marking failed; GC deleted nothing. The message names the file."""

    exit_code = EXIT_VERIFY
    cause = "damaged storage"


class CommandError(LayoverError):
    """A subprocess exited non-zero. Keeps argv (secrets removed), exit code and stderr."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stderr: str, hint: str = "", summary: str = ""
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        # `summary`: what the tool said went wrong, when the caller can tell (skopeo's fatal
        # message); otherwise the last line of stderr
        tail = summary or (stderr.strip().splitlines()[-1] if stderr.strip() else "(no output)")
        super().__init__(f"{argv[0]} exited {returncode}: {tail}", detail=stderr, hint=hint)


class TransientCommandError(CommandError, Transient):
    """A subprocess failure worth retrying: connection refused/reset, 5xx, timeout."""


class RegistryError(LayoverError):
    """A registry container or endpoint could not be created, started or reached."""


class RegistryHTTPError(RegistryError):
    """A registry answered with an unexpected HTTP status. Keeps the status and error codes."""

    def __init__(
        self, method: str, url: str, status: int, codes: tuple[str, ...], detail: str, hint: str
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.codes = codes  # Distribution error codes, e.g. ("MANIFEST_BLOB_UNKNOWN",)
        # status 0: no answer at all (connection refused or reset, timeout)
        what = f"{method} {url} returned {status}" if status else f"{method} {url} got no answer"
        if codes:
            what += f" {'/'.join(codes)}"
        if detail:
            what += f": {detail}"
        super().__init__(what, hint=hint)

    @property
    def not_found(self) -> bool:
        return self.status == 404


class TransientHTTPError(RegistryHTTPError, Transient):
    """A registry answered 5xx or 429: worth a retry."""


class CopyError(LayoverError):
    """One image could not be copied to a registry of ours."""


class TransientCopyError(CopyError, Transient):
    """A registry did not answer, or answered 5xx: worth a retry (after a revive)."""


class MountError(LayoverError):
    """An overlay mount or unmount failed."""


class LockedError(LayoverError):
    """Another run holds the work dir."""


class StageFailed(LayoverError):
    """One or more images could not be copied; every one is named.

    The message says only how many; `lines()` gives one line per image (reference, cause,
    essential detail) and the hints once each, which is how the CLI and the run's log show it."""

    def __init__(self, message: str, failures: Sequence[tuple[str, BaseException]] = ()) -> None:
        super().__init__(message)
        self.failures = tuple(failures)  # (image, its error), in list order

    def __str__(self) -> str:
        return "\n".join([self.brief, *self.lines()])

    def lines(self, limit: int = 20) -> list[str]:
        """`<image>: <cause>: <detail>` for the first `limit` images, then what was left out,
        then each distinct hint once."""
        out = [f"{image}: {cause(e)}: {brief(e, 400)}" for image, e in self.failures[:limit]]
        if len(self.failures) > limit:
            out.append(f"... and {len(self.failures) - limit} more image(s)")
        hints: list[str] = []
        for _, e in self.failures:
            h = getattr(e, "hint", "")
            if h and h not in hints:
                hints.append(h)
        return out + [f"hint: {h}" for h in hints]

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """The most telling cause: every image failed for one reason -> that reason's code."""
        codes = {getattr(e, "exit_code", EXIT_FAILURE) for _, e in self.failures}
        return codes.pop() if len(codes) == 1 else EXIT_FAILURE


class PreflightFailed(LayoverError):
    """Preflight found several problems (one alone is raised as itself); nothing was started.
    The exit code is the first problem's: they are ordered flags, inputs, space, tools, source."""

    def __init__(self, problems: Sequence[LayoverError]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{len(self.problems)} problems found before starting; nothing was started")

    def __str__(self) -> str:
        return "\n".join([self.brief, *self.lines()])

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return self.problems[0].exit_code if self.problems else EXIT_FAILURE

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class Interrupted(LayoverError):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run; what was archived stays."""

    cause = "interrupted"

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signal_number


def signal_of(err: BaseException) -> int | None:
    """The signal that `err` means the run is stopping for: Ctrl-C's KeyboardInterrupt, our
    Interrupted, Prefect's TerminationSignal (SIGTERM: systemd stop, a cancel); else None."""
    if isinstance(err, KeyboardInterrupt):
        return _signal.SIGINT
    if isinstance(err, Interrupted):
        return err.signal_number
    sig = getattr(err, "signal", None)  # prefect.exceptions.TerminationSignal carries .signal
    return sig if isinstance(sig, int) and type(err).__name__ == "TerminationSignal" else None
