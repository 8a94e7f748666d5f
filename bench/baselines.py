"""The baseline runners, each one process so the harness can wait4 it.

    python -m bench.baselines docker|skopeo|blog-overlay --images F --source HOST:PORT \
        --work-dir D --output TAR --scope S

- docker: the original way. Per image, serially: `docker pull` from the CI registry, `docker
  tag`, `docker push` into a clean package registry; then tar its storage. The daemon keeps
  what it pulled (a build host's cache); multi-arch images come out single-platform and docker
  recompresses layers on push, so digests differ from the source: that is the baseline.
- skopeo: serial `skopeo copy --all --preserve-digests` per image into a clean registry; tar.
- blog-overlay: the blog post's process as a plain serial script: skopeo into an archive
  registry on `lower`, reset the overlay, prune every `_manifests` in `merged`, serial skopeo
  archive -> package registry on `merged`, stop it, GC (Layover's plan_gc/apply_gc: the blog's
  own GC script is wrong, docs/design.md §3), tar `merged`. `lower` is kept between releases.

Every tarball is `tar -cf OUT -C STORAGE docker`, written to OUT.tmp and renamed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from layover.adapters.registry import RegistryManager, docker_client
from layover.adapters.registry_image import ensure_registry_image
from layover.imagelist import load


def sh(*argv: str) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, stdout=sys.stdout, stderr=sys.stderr)


def tar(storage: Path, output: Path) -> None:
    tmp = output.with_name(output.name + ".tmp")
    sh("tar", "-cf", str(tmp), "-C", str(storage), "docker")
    os.replace(tmp, output)


def skopeo_copy(src: str, dst: str) -> None:
    sh(
        "skopeo",
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{src}",
        f"docker://{dst}",
    )


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    return any(line.split()[4] == target for line in Path("/proc/self/mountinfo").read_text().splitlines())


def run_docker(refs, source, work, output, mgr) -> None:
    reg = mgr.start("package", fresh(work / "package"))
    try:
        for r in refs:
            sh("docker", "pull", r.at(source))
            sh("docker", "tag", r.at(source), r.at(reg.host))
            sh("docker", "push", r.at(reg.host))
            # untag the package name so the next run starts with the same daemon state
            sh("docker", "rmi", r.at(reg.host))
    finally:
        mgr.stop(reg)
    tar(work / "package", output)


def run_skopeo(refs, source, work, output, mgr) -> None:
    reg = mgr.start("package", fresh(work / "package"))
    try:
        for r in refs:
            skopeo_copy(r.at(source), f"{reg.host}/{r.destination_suffix}")
    finally:
        mgr.stop(reg)
    tar(work / "package", output)


def run_blog_overlay(refs, source, work, output, mgr) -> None:
    lower, upper, wdir, merged = (work / d for d in ("lower", "upper", "work", "merged"))
    lower.mkdir(parents=True, exist_ok=True)
    # 1. save sync: CI -> archive registry whose storage is lower
    archive = mgr.start("archive", lower)
    try:
        for r in refs:
            skopeo_copy(r.at(source), f"{archive.host}/{r.destination_suffix}")
    finally:
        mgr.stop(archive)
    # 2. overlay reset
    if is_mounted(merged):
        sh("umount", str(merged))
    for d in (upper, wdir, merged):
        fresh(d)
    sh(
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={upper},workdir={wdir}",
        str(merged),
    )
    try:
        # 3. prune every _manifests so only blobs and _layers links remain
        repos = merged / "docker/registry/v2/repositories"
        sh("find", str(repos), "-type", "d", "-name", "_manifests", "-prune", "-exec", "rm", "-rf", "{}", "+")
        # 4. package sync from the archive (read-only on lower) into merged
        archive = mgr.start("archive", lower, read_only=True)
        package = mgr.start("package", merged)
        try:
            for r in refs:
                skopeo_copy(
                    f"{archive.host}/{r.destination_suffix}", f"{package.host}/{r.destination_suffix}"
                )
        finally:
            mgr.stop(package)
            mgr.stop(archive)
        # 5. GC with the registry stopped (a correct one; see the module docstring)
        from layover.storage.gc import plan_gc
        from layover.storage.layout import StorageLayout
        from layover.storage.vacuum import apply_gc

        t = time.monotonic()
        result = apply_gc(plan_gc(StorageLayout(merged)))
        print(f"gc: {result} in {time.monotonic() - t:.1f}s", flush=True)
        # 6. tarball of merged
        tar(merged, output)
    finally:
        sh("umount", str(merged))


RUNNERS = {"docker": run_docker, "skopeo": run_skopeo, "blog-overlay": run_blog_overlay}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baselines")
    ap.add_argument("runner", choices=sorted(RUNNERS))
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--scope", required=True, help="container label scope (cleanup)")
    a = ap.parse_args(argv)
    refs = load(a.images).refs
    a.work_dir.mkdir(parents=True, exist_ok=True)
    client = docker_client()
    mgr = RegistryManager(client, ensure_registry_image(client), a.scope)
    try:
        RUNNERS[a.runner](refs, a.source, a.work_dir.resolve(), a.output.resolve(), mgr)
    finally:
        mgr.remove_scope()
        mgr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
