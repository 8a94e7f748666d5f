"""A vendor and a customer site for the install and delta tests: packages built by the real
release flow, registries serving a storage dir, pulls with skopeo, tree snapshots.

    build_packages(registries, base, skopeo)   three releases through the flow on one work dir:
        1, 2: the sample releases; 3: release 2 without apps/team-c/report, with a new
        apps/team-a/web:1.2.0 and a new two-platform platform/edge:1.0.0 (pushed with skopeo)
    snapshot(root)      path -> (kind, mode, sha256) of everything below root: "byte for byte"
    extract(tar, root)  what a customer's `tar -xf` gives, without the contents file
    pull_all(host, refs, dest)   skopeo copy of every image by tag and by digest
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from layover.contents import Contents
from layover.package import read_contents
from layover.settings import ListFromFile, ReleaseRequest
from layover.testing.push import push_release
from layover.testing.releases import release
from tests.conftest import SampleImages

REPO = Path(__file__).resolve().parents[2]
LAYOVER = str(REPO / ".venv" / "bin" / "layover")


@dataclass(frozen=True)
class Packages:
    ci_host: str
    work: Path
    tars: dict[int, Path]
    lists: dict[int, Path]

    def contents(self, n: int) -> Contents:
        return read_contents(self.tars[n])


def _release_3_list(two: str, web: str, edge: str) -> str:
    lines = [ln for ln in two.splitlines() if "apps/team-c/report" not in ln and "apps/team-a/web:" not in ln]
    return "\n".join([*lines, web, edge]) + "\n"


def build_packages(registries, base: Path, skopeo: str) -> Packages:
    from flows.release import release as release_flow

    (base / "ci").mkdir()
    ci = registries.start("ci", base / "ci")
    lists: dict[int, Path] = {}
    for n in (1, 2):
        rel = release(n)
        push_release(ci.host, rel)
        lists[n] = base / f"release-{n}.list"
        lists[n].write_text(rel.list_text())
    pusher = SampleImages()
    pusher.push(ci, "apps/team-a/web:1.2.0", layers=2, seed="release-3 web")
    pusher.push(ci, "platform/edge:1.0.0", layers=1, platforms=2, seed="release-3 edge")
    lists[3] = base / "release-3.list"
    lists[3].write_text(_release_3_list(lists[2].read_text(), "apps/team-a/web:1.2.0", "platform/edge:1.0.0"))
    tars = {}
    for n in (1, 2, 3):
        tars[n] = base / "out" / f"release-{n}.tar"
        release_flow(
            ReleaseRequest(
                images=ListFromFile(path=str(lists[n])),
                source=ci.host,
                src_tls_verify=False,
                work_dir=base / "work",
                output=tars[n],
                concurrency=4,
            )
        )
    return Packages(ci.host, base / "work", tars, lists)


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Everything below root: files by content, directories and modes; nothing else may exist."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("other", st.st_mode, "")
    return out


def extract(tarball: Path, root: Path) -> Path:
    """A plain `tar -xf` into root (as a customer without Layover would), minus the contents file."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
    shutil.rmtree(root / "layover", ignore_errors=True)
    return root


def install(
    *args: str | Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`layover install ...` as a real process."""
    p = subprocess.run(
        [LAYOVER, "install", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    if check:
        assert p.returncode == 0, f"layover install {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def pull_all(host: str, contents: Contents, dest: Path) -> int:
    """skopeo copy of every image (all platforms, digests preserved) by tag and by digest."""
    pulled = 0
    dest.mkdir(parents=True, exist_ok=True)
    for img in contents.images:
        refs = [f"{img.repository}@{img.digest}"]
        if img.tag is not None:
            refs.append(f"{img.repository}:{img.tag}")
        for ref in refs:
            out = dest / hashlib.sha256(ref.encode()).hexdigest()[:16]
            p = subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--all",
                    "--preserve-digests",
                    "--src-tls-verify=false",
                    f"docker://{host}/{ref}",
                    f"dir:{out}",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert p.returncode == 0, f"skopeo could not pull {ref} from {host}: {p.stderr[-2000:]}"
            shutil.rmtree(out)
            pulled += 1
    return pulled
