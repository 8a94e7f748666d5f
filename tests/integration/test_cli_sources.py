"""Where images come from, through the CLI: credentials found where skopeo finds them, and
lists that mix registries.

Credentials: a CI registry with htpasswd auth; after one release fills the archive, the same
release again through each credential source (--src-authfile, REGISTRY_AUTH_FILE, the
containers auth file, the docker config) copies nothing: the archive-sync probe saw the tags with
the same credentials skopeo uses, so no image was read (no manifest GET, no blob GET at the CI
registry). A probe without them saw 401s, and every incremental release copied every image.

Sources: two registries; references without a host come from --source, those with one from
their host, and --registry-map redirects a host; two sources for one repository path fail before
anything starts.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layover import imagelist
from layover.storage.verify import verify_tarball
from layover.testing.push import push_release
from layover.testing.releases import Release, release
from layover.workdir import WorkDir
from tests.cli_runs import Cli, layover, mounted_under
from tests.conftest import require
from tests.tls import write_htpasswd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "ci-robot"


@dataclass
class Site:
    env: dict[str, str]
    base: Path
    rel: Release
    auth_ci: object  # Registry, basic auth
    password: str
    ci_a: object  # Registry, open
    ci_b: object
    manager: object  # RegistryManager

    def run(self, *args: str, env: dict[str, str] | None = None, code: int = 0) -> Cli:
        cli = Cli(layover("run", *args), env or self.env)
        got = cli.wait(timeout=300)
        assert got == code, cli.text()[-4000:]
        return cli

    def reads(self, reg: object, since: int) -> list[str]:
        """GET requests for manifests and blobs in `reg`'s access log after line `since`."""
        lines = self.manager.access_log(reg).splitlines()[since:]  # type: ignore[attr-defined]
        return [x for x in lines if re.search(r'"GET /v2/\S+/(manifests|blobs)/', x)]

    def log_length(self, reg: object) -> int:
        return len(self.manager.access_log(reg).splitlines())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def site(
    prefect_api, module_registries, require_root_overlay, skopeo_bin, tmp_path_factory
) -> Iterator[Site]:
    htpasswd = shutil.which("htpasswd")
    require(htpasswd is not None, "htpasswd is missing (apt-get install apache2-utils; scripts/setup.sh)")
    base = tmp_path_factory.mktemp("cli-sources")
    password = f"pw-{uuid.uuid4().hex}"
    write_htpasswd(base / "htpasswd", USER, password)
    rel = release(1, scale=0.3)
    for name in ("auth-ci", "ci-a", "ci-b"):
        (base / name).mkdir()
    # the auth registry is filled open, then serves the same storage with auth on
    filler = module_registries.start("auth-filler", base / "auth-ci")
    push_release(filler.host, rel)
    module_registries.stop(filler)
    auth_ci = module_registries.start(
        "auth-ci", base / "auth-ci", read_only=True, auth_htpasswd=base / "htpasswd"
    )
    ci_a = module_registries.start("ci-a", base / "ci-a")
    ci_b = module_registries.start("ci-b", base / "ci-b")
    push_release(ci_a.host, rel)
    push_release(ci_b.host, rel)
    try:
        yield Site(prefect_api.env(), base, rel, auth_ci, password, ci_a, ci_b, module_registries)
    finally:
        client = module_registries.client
        for wd in base.glob("work*"):
            scope = WorkDir.at(wd).scope
            for c in client.containers.list(all=True, filters={"label": [f"layover.scope={scope}"]}):
                c.remove(force=True, v=True)
            for m in mounted_under(wd):
                subprocess.run(["umount", "-l", m], check=False)


def _auths(site: Site) -> str:
    token = base64.b64encode(f"{USER}:{site.password}".encode()).decode()
    return json.dumps({"auths": {site.auth_ci.host: {"auth": token}}})  # type: ignore[attr-defined]


def test_every_credential_source_skopeo_reads_makes_an_incremental_release_copy_nothing(site):
    images = site.base / "auth.list"
    images.write_text("".join(f"{i.repository}:{i.tag}\n" for i in site.rel.images[:5]))
    work, out = site.base / "work-auth", site.base / "out" / "auth.tar"
    args = [
        "--images",
        str(images),
        "--source",
        site.auth_ci.host,
        "--no-src-tls-verify",  # type: ignore[attr-defined]
        "--work-dir",
        str(work),
        "--output",
        str(out),
    ]
    flag_file = site.base / "flag-auth.json"
    flag_file.write_text(_auths(site))
    site.run(*args, "--src-authfile", str(flag_file))  # the first release: copies everything
    assert verify_tarball(out, imagelist.load(images)).ok

    homes = site.base / "homes"
    sources: dict[str, dict[str, str]] = {}
    # each source alone: a home of its own, so no other file of the search has the host
    for name in ("flag", "REGISTRY_AUTH_FILE", "containers", "docker"):
        home = homes / name
        (home / "runtime").mkdir(parents=True)
        env = {**site.env, "HOME": str(home), "XDG_RUNTIME_DIR": str(home / "runtime")}
        if name == "REGISTRY_AUTH_FILE":
            (home / "auth.json").write_text(_auths(site))
            env["REGISTRY_AUTH_FILE"] = str(home / "auth.json")
        elif name == "containers":
            (home / "runtime" / "containers").mkdir()
            (home / "runtime" / "containers" / "auth.json").write_text(_auths(site))
        elif name == "docker":
            (home / ".docker").mkdir()
            (home / ".docker" / "config.json").write_text(_auths(site))
        sources[name] = env
    for name, env in sources.items():
        since = site.log_length(site.auth_ci)
        extra = ["--src-authfile", str(flag_file)] if name == "flag" else []
        cli = site.run(*args, *extra, env=env)
        reads = site.reads(site.auth_ci, since)
        assert not reads, f"{name}: the incremental release read images again:\n" + "\n".join(reads[:5])
        report = json.loads(out.with_name(out.name + ".json").read_text())
        archive = next(s for s in report["stages"] if s["name"] == "archive sync")
        assert archive["bytes_moved"] == 0 and archive["blobs_copied"] == 0, (name, archive)
        assert site.password not in cli.text()


def test_a_list_may_mix_registries_and_redirect_one(site):
    a, b = site.ci_a.host, site.ci_b.host  # type: ignore[attr-defined]
    imgs = site.rel.images
    lines = [
        f"{imgs[0].repository}:{imgs[0].tag}",  # no host: --source (a)
        f"{imgs[1].repository}:{imgs[1].tag}",
        f"{b}/{imgs[2].repository}:{imgs[2].tag}",  # its own host: b
        f"mirror.example.com/{imgs[3].repository}:{imgs[3].tag}",
    ]  # mapped to b
    images = site.base / "mixed.list"
    images.write_text("\n".join(lines) + "\n")
    work, out = site.base / "work-mixed", site.base / "out" / "mixed.tar"
    since = {a: site.log_length(site.ci_a), b: site.log_length(site.ci_b)}
    site.run(
        "--images",
        str(images),
        "--source",
        a,
        "--registry-map",
        f"mirror.example.com={b}",
        "--no-src-tls-verify",
        "--work-dir",
        str(work),
        "--output",
        str(out),
    )
    assert verify_tarball(out, imagelist.load(images)).ok  # served under the paths without host
    read_a = " ".join(site.reads(site.ci_a, since[a]))
    read_b = " ".join(site.reads(site.ci_b, since[b]))
    for img in imgs[:2]:
        assert f"/v2/{img.repository}/manifests/" in read_a and f"/v2/{img.repository}/" not in read_b
    for img in imgs[2:4]:
        assert f"/v2/{img.repository}/manifests/" in read_b and f"/v2/{img.repository}/" not in read_a
    report = json.loads(out.with_name(out.name + ".json").read_text())
    assert report["source"] == f"{a}, mirror.example.com={b}"


def test_two_sources_for_one_repository_path_fail_before_anything_starts(site):
    a, b = site.ci_a.host, site.ci_b.host  # type: ignore[attr-defined]
    img = site.rel.images[0]
    images = site.base / "clash.list"
    images.write_text(f"{img.repository}:{img.tag}\n{b}/{img.repository}:other\n")
    work = site.base / "work-clash"
    cli = site.run(
        "--images",
        str(images),
        "--source",
        a,
        "--no-src-tls-verify",
        "--work-dir",
        str(work),
        "--output",
        str(site.base / "out" / "clash.tar"),
        code=3,
    )
    assert (
        f"{images}:2:" in cli.text()
        and f"{img.repository} comes from {b} here but from {a} on line 1" in cli.text()
    ), cli.text()
    assert not work.exists()
