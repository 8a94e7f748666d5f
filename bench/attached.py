"""What attached sync costs on an incremental release (issue 14, Numbers).

    python -m bench.attached --ci-storage DIR --list1 FILE --list2 FILE [--signed all|none]
                             [--concurrency 4] [--work-root /var/tmp] [--paired]

A copy of a benchmark CI registry's storage (e.g. the wide fixture's, which holds releases 1 and 2)
is served writable; with `--signed all` every image of both lists gets what
layover.testing.attached.attach_all pushes (a signature on the image and on each platform, an
attestation, an SPDX SBOM with its referrers tag-schema index, a signature on the SBOM). Then one
work dir runs release 1 and release 2 (incremental) through the real flow against a temporary
Prefect server, and the numbers come from release 2's report: the attached sync stage against the
archive sync stage (the ratio asked to stay under 10%), and discovery's requests to the source per
listed image (tag listings, manifest GETs, referrers probes).

Discovery for the images archive sync skips runs while archive sync copies the others
(tasks/attached_sync.py), so the attached stage's seconds no longer hold all of discovery's cost:
on a machine whose cores are busy some of it lands in archive sync's seconds instead. `--paired`
measures that within one run: the work dir after release 1 is copied, and release 2 runs on each
copy, once as the flow does and once with discovery all in the attached stage (the flow's
`discovering` replaced by one that starts nothing, as before the overlap).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from layover import imagelist  # noqa: E402  (after sys.path)
from layover.adapters.registry import RegistryManager, docker_client  # noqa: E402
from layover.adapters.registry_api import RegistryAPI  # noqa: E402
from layover.adapters.registry_image import ensure_registry_image  # noqa: E402
from layover.manifest import parse_manifest  # noqa: E402
from layover.settings import ListFromFile, ReleaseRequest  # noqa: E402
from layover.testing.attached import Signer, attach_all  # noqa: E402


def _sign_all(host: str, lists: list[Path], concurrency: int) -> tuple[int, float]:
    from concurrent.futures import ThreadPoolExecutor

    refs = {r for path in lists for r in imagelist.load(path).refs}
    by_repo: dict[str, list] = {}
    for ref in sorted(refs):
        by_repo.setdefault(ref.repository, []).append(ref)
    signer = Signer("bench")
    started = time.monotonic()
    with RegistryAPI(host) as api:

        def sign(repo_refs) -> None:  # type: ignore[no-untyped-def]
            # one repository at a time: concurrent uploads of one blob into one repository race
            # in Distribution (every SBOM has the same empty config)
            for ref in repo_refs:
                got = api.manifest(ref.repository, ref.digest or ref.tag)
                children = parse_manifest(got.data, str(ref)).children
                attach_all(api, ref.repository, got.digest, signer, children=children)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(sign, by_repo.values()))
    return len(refs), time.monotonic() - started


def _copy_dir(src: Path, dst: Path) -> None:
    # cp -a: the overlay's upper dir holds whiteouts (character devices) that copytree refuses
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@contextlib.contextmanager
def _sequential():  # type: ignore[no-untyped-def]
    """The flow without the overlap: no discovery starts before the attached stage."""
    import flows.release

    @contextlib.contextmanager
    def nothing(*_a, **_k):  # type: ignore[no-untyped-def]
        yield None

    real = flows.release.discovering
    flows.release.discovering = nothing  # type: ignore[assignment]
    try:
        yield
    finally:
        flows.release.discovering = real


def _stage(report, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in report.stages if s.name == name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ci-storage", type=Path, required=True)
    p.add_argument("--list1", type=Path, required=True)
    p.add_argument("--list2", type=Path, required=True)
    p.add_argument("--signed", choices=("all", "none"), default="all")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--work-root", type=Path, default=Path("/var/tmp"))
    p.add_argument("--paired", action="store_true", help="release 2 also without the overlap")
    args = p.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.release import release

    root = Path(tempfile.mkdtemp(prefix="attached-bench-", dir=args.work_root))
    client = docker_client()
    manager = RegistryManager(client, ensure_registry_image(client), f"bench-attached-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(args.ci_storage, root / "ci", symlinks=True)
        ci = manager.start("ci", root / "ci")
        signed, sign_seconds = (0, 0.0)
        if args.signed == "all":
            signed, sign_seconds = _sign_all(ci.host, [args.list1, args.list2], args.concurrency)
        out = {
            "signed_images": signed,
            "signing_seconds": round(sign_seconds, 1),
            "load_before": os.getloadavg()[0],
            "runs": {},
        }
        runs = [("release 1 (cold)", args.list1, "work"), ("release 2 (incremental)", args.list2, "work")]
        if args.paired:
            runs.append(("release 2, discovery after archive sync", args.list2, "work-sequential"))
        with prefect_test_harness(server_startup_timeout=120):
            for name, lst, work in runs:
                if work == "work-sequential":
                    _copy_dir(root / "work-r1", root / work)
                with _sequential() if work == "work-sequential" else contextlib.nullcontext():
                    report = release(
                        ReleaseRequest(
                            images=ListFromFile(path=str(lst)),
                            source=ci.host,
                            src_tls_verify=False,
                            work_dir=root / work,
                            output=root / "out" / f"{len(out['runs'])}.tar",
                            concurrency=args.concurrency,
                        )
                    )
                if args.paired and name.startswith("release 1"):
                    _copy_dir(root / "work", root / "work-r1")
                archive, attached = _stage(report, "archive sync"), _stage(report, "attached sync")
                out["runs"][name] = {
                    "images": report.images,
                    "archive_sync_s": round(archive.seconds, 2),
                    "attached_sync_s": round(attached.seconds, 2),
                    "ratio": round(attached.seconds / archive.seconds, 3),
                    "both_s": round(archive.seconds + attached.seconds, 2),
                    "attached_detail": attached.detail,
                    "attached": sum(r.counts.total for r in report.attached),
                    "total_s": round(report.seconds, 2),
                    "load_after": os.getloadavg()[0],  # 1-minute load average, machine-wide
                }
        print(json.dumps(out, indent=2))
    finally:
        manager.remove_scope()
        manager.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
