"""Every error Layover raises on purpose.

    LayoverError                 catch this to catch everything below
    ├── ImageListError           images.list has bad lines (all of them, with line numbers)
    ├── ReferenceError_          one image reference does not follow the grammar
    ├── StorageError             a registry storage tree is corrupt (names the file)
    ├── GCError                  marking failed: nothing was deleted
    ├── VerifyError              the package does not serve every listed image
    ├── CommandError             a subprocess failed (argv, exit code, stderr kept)
    │   ├── TransientCommandError    worth retrying: connection, 5xx, timeout
    │   └── ImageNotFoundError       the source has no such image: do not retry
    ├── RegistryError            a registry container could not be started or reached
    ├── MountError               overlayfs could not be mounted or unmounted
    ├── LockedError              another run holds the work dir
    ├── GitSourceError           an images.list could not be read from git (names repo, ref, path)
    └── DiskFullError            no space left; names the path and the space needed

Every message says what happened and what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence


class LayoverError(Exception):
    """Base class: catch this to catch every error Layover raises on purpose."""


class ReferenceError_(LayoverError, ValueError):  # noqa: N801 - avoid shadowing builtin ReferenceError
    """An image reference does not follow the Distribution reference grammar."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid image reference {text!r}: {reason}")


class ImageListError(LayoverError):
    """An images.list has one or more bad lines. Every bad line is listed."""

    def __init__(self, path: str, problems: Sequence[tuple[int, str, str]]) -> None:
        self.path = path
        self.problems = tuple(problems)  # (line number, line text, reason)
        lines = [f"{path}:{n}: {reason} (line: {text!r})" for n, text, reason in self.problems]
        super().__init__(
            f"{path}: {len(self.problems)} bad line(s); fix them and run again, nothing was copied:\n"
            + "\n".join(lines)
        )


class StorageError(LayoverError):
    """A file in a registry storage tree is corrupt or unreadable."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class GCError(LayoverError):
    """Marking failed; GC deleted nothing."""


class VerifyError(LayoverError):
    """The package cannot serve every listed image exactly."""


class CommandError(LayoverError):
    """A subprocess exited non-zero. Keeps argv (secrets removed), exit code and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, hint: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "(no output)"
        msg = f"{argv[0]} exited {returncode}: {tail}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class TransientCommandError(CommandError):
    """A failure worth retrying: connection refused/reset, 5xx, timeout."""


class ImageNotFoundError(CommandError):
    """The source registry has no such image (or denies it): retrying will not help."""


class RegistryError(LayoverError):
    """A registry container could not be created, started or reached."""


class MountError(LayoverError):
    """An overlay mount or unmount failed."""


class LockedError(LayoverError):
    """Another run holds the work dir."""


class GitSourceError(LayoverError):
    """The images.list could not be read from a git repository at a ref."""

    def __init__(self, repo: str, ref: str, path: str, reason: str) -> None:
        self.repo = repo
        self.ref = ref
        self.path = path
        self.reason = reason
        super().__init__(f"images.list {path!r} at {ref!r} in {repo}: {reason}")


class DiskFullError(LayoverError):
    """No space left on a device; the message names the path."""
