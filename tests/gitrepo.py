"""Git repositories for the tests that read an images.list from git: `git` with a fixed author
and no user or system config (the host's git settings never leak into a test), and a repository
holding one images.list per tag.

    git(cwd, *args) -> stdout                       stripped
    list_repo(path, {tag: text, ...}) -> path       images.list committed and tagged once per tag,
                                                    in order, on branch main
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/bin:/bin",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def list_repo(path: Path, lists: Mapping[str, str]) -> Path:
    """A new repository at `path`: for each (tag, text), images.list := text, committed, tagged."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for tag, text in lists.items():
        (path / "images.list").write_text(text)
        git(path, "add", "images.list")
        git(path, "commit", "-q", "-m", tag)
        git(path, "tag", tag)
    return path
