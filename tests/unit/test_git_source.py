"""read_list_at against real git repositories built in tmp_path (local paths and file:// URLs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layover.adapters.git import GitList, read_list_at
from layover.errors import GitSourceError, LayoverError
from tests.gitrepo import git


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    """main: c1 (tag v1 annotated, v1-light lightweight) -> c2 (list changed after tagging)."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "images.list").write_text("alpine:3.19\n")
    (r / "releases").mkdir()
    (r / "releases" / "images.list").write_text("busybox:1.36\n")
    (r / "link.list").symlink_to("images.list")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "c1")
    c1 = git(r, "rev-parse", "HEAD")
    git(r, "tag", "-a", "v1", "-m", "release v1")
    git(r, "tag", "v1-light")
    (r / "images.list").write_text("alpine:3.20\n")
    git(r, "commit", "-q", "-am", "c2")
    c2 = git(r, "rev-parse", "HEAD")
    return {"path": str(r), "url": f"file://{r}", "c1": c1, "c2": c2}


@pytest.mark.parametrize("where", ["path", "url"])
@pytest.mark.parametrize(
    ("ref", "commit", "data"),
    [
        ("v1", "c1", b"alpine:3.19\n"),  # annotated tag peels to its commit
        ("v1-light", "c1", b"alpine:3.19\n"),
        ("main", "c2", b"alpine:3.20\n"),  # the branch moved on after tagging
        ("@c1", "c1", b"alpine:3.19\n"),  # a full commit id
    ],
)
def test_reads_the_list_at_the_exact_commit(
    repo: dict[str, str], tmp_path: Path, where: str, ref: str, commit: str, data: bytes
) -> None:
    ref = repo[ref[1:]] if ref.startswith("@") else ref
    got = read_list_at(repo[where], ref, "images.list", cache_dir=tmp_path / "cache")
    assert got == GitList(data=data, commit=repo[commit], repo=repo[where], ref=ref, path="images.list")


def test_short_commit_id_resolves_locally(repo: dict[str, str]) -> None:
    got = read_list_at(repo["path"], repo["c1"][:10], "images.list")
    assert got.commit == repo["c1"]
    assert got.data == b"alpine:3.19\n"


@pytest.mark.parametrize("path", ["releases/images.list", "./releases/images.list", "releases//images.list"])
def test_path_in_a_subdirectory_is_normalised(repo: dict[str, str], path: str) -> None:
    got = read_list_at(repo["path"], "main", path)
    assert (got.path, got.data) == ("releases/images.list", b"busybox:1.36\n")


def test_bare_repository_is_read_in_place(repo: dict[str, str], tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", repo["path"], str(bare))
    assert read_list_at(str(bare), "v1", "images.list").commit == repo["c1"]


def test_cache_is_reused_and_follows_a_moved_branch(repo: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert read_list_at(repo["url"], "main", "images.list", cache_dir=cache).commit == repo["c2"]
    (Path(repo["path"]) / "images.list").write_text("alpine:3.21\n")
    git(Path(repo["path"]), "commit", "-q", "-am", "c3")
    got = read_list_at(repo["url"], "main", "images.list", cache_dir=cache)
    assert got.data == b"alpine:3.21\n"
    assert got.commit == git(Path(repo["path"]), "rev-parse", "HEAD")
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one cache repo per URL
    # shallow: the cache holds the fetched commits, never the whole history
    assert (next(p for p in cache.iterdir() if p.is_dir()) / "shallow").is_file()


@pytest.mark.parametrize(
    ("where", "ref", "path", "reason"),
    [
        ("path", "v9", "images.list", "no commit by that name"),
        ("url", "v9", "images.list", "couldn't find remote ref v9"),
        ("path", "main", "missing.list", "no such file at commit"),
        ("url", "main", "missing.list", "no such file at commit"),
        ("path", "main", "releases", "is a directory"),
        ("path", "main", "link.list", "is a symlink"),
        ("path", "main", "../etc/passwd", "inside the repository"),
        ("path", "main", "/etc/passwd", "relative to the repository root"),
        ("path", "--upload-pack=touch", "images.list", "not a usable ref"),
        ("path", "main:images.list", "images.list", "not a usable ref"),
        ("path", "", "images.list", "not a usable ref"),
    ],
)
def test_errors_name_repo_ref_and_path(
    repo: dict[str, str], tmp_path: Path, where: str, ref: str, path: str, reason: str
) -> None:
    with pytest.raises(GitSourceError) as e:
        read_list_at(repo[where], ref, path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert reason in msg
    assert repo[where] in msg and repr(ref) in msg and repr(path) in msg
    assert isinstance(e.value, LayoverError)


def test_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    # GIT_CEILING_DIRECTORIES stops git from finding a repository above tmp_path
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
        with pytest.raises(GitSourceError, match="not a git repository"):
            read_list_at(str(plain), "main", "images.list")


def test_missing_directory_that_is_not_a_url(tmp_path: Path) -> None:
    with pytest.raises(GitSourceError, match="no such directory, and not a URL"):
        read_list_at(str(tmp_path / "nope"), "main", "images.list")


def test_password_in_url_never_appears(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens, so the fetch fails fast and stays on this host.
    url = "https://builder:s3cr3t-token@127.0.0.1:9/repo.git"
    with pytest.raises(GitSourceError) as e:
        read_list_at(url, "main", "images.list", cache_dir=tmp_path / "cache")
    text = str(e.value) + repr(e.value.__cause__)
    assert "s3cr3t-token" not in text
    assert "builder:***@127.0.0.1:9" in str(e.value)
