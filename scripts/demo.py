"""The README's first command, after setup: two releases end to end on local registries.

Starts a Layover-labelled "CI" registry on 127.0.0.1, pushes sample release 1 and 2 into it,
then runs `layover run` (the real CLI, embedded Prefect server) for release 1 and release 2
against one work dir, so the second report shows the reuse. Removes the CI registry at the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from layover.adapters.registry import RegistryManager, docker_client
from layover.adapters.registry_image import ensure_registry_image
from layover.testing.push import push_release
from layover.testing.releases import release

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    demo = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "demo"
    (demo / "ci").mkdir(parents=True, exist_ok=True)
    client = docker_client()
    ci = RegistryManager(client, ensure_registry_image(client), "demo-ci")
    try:
        registry = ci.start("ci", demo / "ci")
        print(f"demo: CI registry on {registry.host}, storage {demo / 'ci'}")
        for n in (1, 2):
            rel = release(n)
            push_release(registry.host, rel)
            (demo / f"release-{n}.list").write_text(rel.list_text())
            print(f"demo: pushed sample release {n} ({len(rel.images)} images)")
        for n in (1, 2):
            print(f"\n=== release {n} ===", flush=True)
            argv = [
                str(REPO / ".venv/bin/layover"),
                "run",
                "--images",
                str(demo / f"release-{n}.list"),
                "--source",
                registry.host,
                "--no-src-tls-verify",
                "--work-dir",
                str(demo / "work"),
                "--output",
                str(demo / f"release-{n}.tar"),
            ]
            print("$ " + " ".join(argv), flush=True)
            if subprocess.call(argv) != 0:
                print(f"demo: release {n} failed", file=sys.stderr)
                return 1
        print(f"\ndemo: tarballs in {demo}: release-1.tar, release-2.tar (+ .sha256, .json)")
        return 0
    finally:
        ci.remove_scope()
        ci.close()


if __name__ == "__main__":
    sys.exit(main())
