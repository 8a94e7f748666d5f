"""Read an images.list from a git repository at the exact commit a ref names.

    read_list_at(repo, ref, path) -> GitList(data, commit, repo, ref, path)
    list_refs(repo)              -> every tag and branch, as full ref names (refs/tags/v1, ...)

`repo` is a directory on this host (bare or not) or a URL (file://, ssh://, https://, git://,
or scp-style host:path). A directory is read in place. A URL is shallow-fetched (depth 1, just
that ref) into a bare cache repository, one per URL, under `cache_dir`; concurrent runs share
it under an flock. The ref is resolved to a full commit id first and the file is read from that
commit, never from a branch tip read a second time, so the commit recorded in the report is
exactly the one whose list was built.

Every git call goes through layover.adapters.run (argv lists, no shell). Passwords embedded in a
URL are redacted from logs, errors and the returned `repo`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from layover.adapters.run import REDACTED, run
from layover.errors import CommandError, GitSourceError

FETCH_TIMEOUT = 300.0  # a shallow fetch of one ref; generous for slow links
LOCAL_TIMEOUT = 60.0

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# scp-like syntax: [user@]host:path, where host has no slash (git's own rule)
_SCP = re.compile(r"^(?:[^@/\s]+@)?[^@/:\s]+:(?!//)")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


@dataclass(frozen=True)
class GitList:
    data: bytes  # the file's bytes at `commit`
    commit: str  # full commit id the ref resolved to
    repo: str  # as given, with any password redacted
    ref: str  # as given: branch, tag or commit
    path: str  # normalised path inside the repository


def read_list_at(repo: str, ref: str, path: str, *, cache_dir: Path | None = None) -> GitList:
    """Resolve `ref` in `repo` to a commit and return the bytes of `path` at that commit.

    `cache_dir` holds shallow clones of remote repositories; default
    $XDG_CACHE_HOME/layover/git (read when called, not at import).
    """
    shown, secrets = _redact_url(repo)
    norm = _check(shown, repo, ref, path)
    local = Path(repo).expanduser()
    if not _is_url(repo) and local.is_dir():
        commit = _resolve(local, f"{ref}^{{commit}}", shown, ref, norm, secrets)
        data = _read_blob(local, commit, shown, ref, norm, secrets)
        return GitList(data=data, commit=commit, repo=shown, ref=ref, path=norm)
    if not _is_url(repo):
        raise GitSourceError(
            shown,
            ref,
            norm,
            "no such directory, and not a URL; give a path to a git repository on the build host "
            "or a URL (file://, ssh://, https://, host:path)",
        )
    cache = _cache_root(cache_dir) / hashlib.sha256(repo.encode()).hexdigest()[:24]
    with _locked(cache):
        _ensure_bare(cache, shown, ref, norm)
        _fetch(cache, repo, ref, shown, norm, secrets)
        commit = _resolve(cache, "FETCH_HEAD^{commit}", shown, ref, norm, secrets)
        if _FULL_SHA.match(ref) and commit != ref:
            # a commit id is its own ref: anything else means the server sent something else
            raise GitSourceError(shown, ref, norm, f"fetched {commit}, not the commit asked for")
        data = _read_blob(cache, commit, shown, ref, norm, secrets)
    return GitList(data=data, commit=commit, repo=shown, ref=ref, path=norm)


def list_refs(repo: str) -> list[str]:
    """Every tag and branch of `repo` as full ref names (`refs/tags/v1`, `refs/heads/main`),
    sorted. A directory is read in place; a URL is asked with `git ls-remote` (names only,
    nothing is fetched)."""
    shown, secrets = _redact_url(repo)
    if not repo.strip() or repo.startswith("-"):
        raise GitSourceError(shown, "*", "-", "give a path to a git repository or a URL")
    local = Path(repo).expanduser()
    if not _is_url(repo) and local.is_dir():
        argv = ["git", "-C", str(local), "for-each-ref", "--format=%(refname)", "refs/tags", "refs/heads"]
    elif _is_url(repo):
        argv = ["git", "ls-remote", "--refs", "--tags", "--heads", "--end-of-options", repo]
    else:
        raise GitSourceError(
            shown,
            "*",
            "-",
            "no such directory, and not a URL; give a path to a git repository on the build host or a URL",
        )
    try:
        out = run(argv, timeout=FETCH_TIMEOUT, env=_env(), secrets=secrets).text
    except CommandError as e:
        raise GitSourceError(shown, "*", "-", f"listing tags and branches: {_explain(e.stderr)}") from e
    # for-each-ref prints one name a line; ls-remote "<sha>\t<name>"
    return sorted(line.rsplit("\t", 1)[-1] for line in out.splitlines() if line.strip())


# --- checks ---------------------------------------------------------------------------------


def _check(shown: str, repo: str, ref: str, path: str) -> str:
    """Refuse inputs that git could read as options or that escape the repository."""
    if not repo.strip():
        raise GitSourceError(shown, ref, path, "the repository is empty; give a path or URL")
    if repo.startswith("-"):
        raise GitSourceError(shown, ref, path, "a repository may not start with '-'")
    if not ref or ref.startswith("-") or any(c.isspace() or ord(c) < 32 for c in ref) or ":" in ref:
        raise GitSourceError(
            shown,
            ref,
            path,
            "not a usable ref; give a branch, tag or commit id (no spaces, ':' or leading '-')",
        )
    if not path or path.startswith("/") or "\\" in path:
        raise GitSourceError(shown, ref, path, "give the list's path relative to the repository root")
    parts = [p for p in PurePosixPath(path).parts if p != "."]
    if not parts or ".." in parts:
        raise GitSourceError(shown, ref, path, "the path must stay inside the repository (no '..')")
    return "/".join(parts)


def _is_url(repo: str) -> bool:
    return bool(_URL.match(repo) or (_SCP.match(repo) and not Path(repo).exists()))


def _redact_url(repo: str) -> tuple[str, tuple[str, ...]]:
    """Hide a password in https://user:password@host/..., so it never reaches logs or reports."""
    if not _URL.match(repo):
        return repo, ()
    parts = urlsplit(repo)
    if parts.password is None:
        return repo, ()
    netloc = parts.netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    return urlunsplit(parts._replace(netloc=netloc)), (parts.password,)


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "layover" / "git"


# --- git calls ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    # Never prompt (a worker has no terminal); C locale so stderr matches what we look for;
    # literal pathspecs so a '*' in a file name is not a glob.
    return {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "GIT_LITERAL_PATHSPECS": "1",
    }


def _git(
    gitdir: Path,
    args: list[str],
    shown: str,
    ref: str,
    path: str,
    secrets: tuple[str, ...],
    *,
    timeout: float = LOCAL_TIMEOUT,
    what: str,
) -> bytes:
    try:
        return run(
            ["git", "-C", str(gitdir), *args],
            timeout=timeout,
            env=_env(),
            secrets=secrets,
        ).stdout
    except CommandError as e:
        raise GitSourceError(shown, ref, path, f"{what}: {_explain(e.stderr)}") from e


def _explain(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "(no output)"
    if "not a git repository" in stderr:
        return f"{last}; point repo at a git repository (its work tree or the bare .git)"
    if "dubious ownership" in stderr:
        return f"{last}; run as the repository's owner or add it to git's safe.directory"
    if "couldn't find remote ref" in stderr or "unknown revision" in stderr:
        return f"{last}; check that the branch or tag exists and has been pushed"
    return last


def _resolve(
    gitdir: Path,
    rev: str,
    shown: str,
    ref: str,
    path: str,
    secrets: tuple[str, ...],
) -> str:
    try:
        out = run(
            ["git", "-C", str(gitdir), "rev-parse", "--verify", "--quiet", "--end-of-options", rev],
            timeout=LOCAL_TIMEOUT,
            env=_env(),
            secrets=secrets,
            check=False,
        )
    except CommandError as e:
        raise GitSourceError(shown, ref, path, f"git rev-parse: {_explain(e.stderr)}") from e
    if out.returncode != 0:
        if "not a git repository" in out.stderr or "dubious ownership" in out.stderr:
            raise GitSourceError(shown, ref, path, _explain(out.stderr))
        raise GitSourceError(
            shown,
            ref,
            path,
            "no commit by that name; check the branch, tag or commit id (a tag must be pushed)",
        )
    return out.text.strip()


def _read_blob(
    gitdir: Path,
    commit: str,
    shown: str,
    ref: str,
    path: str,
    secrets: tuple[str, ...],
) -> bytes:
    # ls-tree first: it tells a missing file from a directory, a symlink or a submodule.
    listing = _git(
        gitdir,
        ["ls-tree", "-z", "--full-tree", commit, "--", path],
        shown,
        ref,
        path,
        secrets,
        what="git ls-tree",
    )
    entry = next((e for e in listing.split(b"\0") if e.endswith(b"\t" + path.encode())), None)
    if entry is None:
        raise GitSourceError(
            shown,
            ref,
            path,
            f"no such file at commit {commit}; check the path inside the repository",
        )
    mode, kind, obj = entry.split(b"\t", 1)[0].decode().split()
    if kind != "blob" or mode == "120000":
        what = {"tree": "a directory", "commit": "a submodule"}.get(kind, "a symlink")
        raise GitSourceError(shown, ref, path, f"is {what} at commit {commit}, not a file")
    return _git(gitdir, ["cat-file", "blob", obj], shown, ref, path, secrets, what="git cat-file")


def _ensure_bare(cache: Path, shown: str, ref: str, path: str) -> None:
    if (cache / "HEAD").is_file():
        return
    _git(cache, ["init", "--bare", "--quiet"], shown, ref, path, (), what="git init")


def _fetch(
    cache: Path,
    url: str,
    ref: str,
    shown: str,
    path: str,
    secrets: tuple[str, ...],
) -> None:
    # Depth 1 and no tags: only the one commit we build from crosses the wire.
    _git(
        cache,
        ["fetch", "--quiet", "--depth=1", "--no-tags", "--end-of-options", url, ref],
        shown,
        ref,
        path,
        secrets,
        timeout=FETCH_TIMEOUT,
        what="git fetch",
    )


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One fetch per cache repository at a time: FETCH_HEAD is shared state."""
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache.with_name(cache.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield
    finally:
        os.close(fd)
