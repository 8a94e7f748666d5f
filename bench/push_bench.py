"""`layover push` of the bench's packages: bytes sent against the new blobs, and the two ways to
read a package (in place vs. a temporary read-only registry over an extraction), time and disk.

    .venv/bin/python -m bench.push_bench [--scale 1.0] [--runs 3] [--work-root /var/tmp]

Packages: release 1 and release 2 of the bench fixture (bench/README.md), each pushed into its
own registry container and written with the project's tar writer, the contents file first (what
the pipeline's tarball stage does to its package tree). Targets: fresh registry containers on
127.0.0.1 (plain HTTP, `--no-dest-tls-verify`), storage under the work root.

Per run, interleaved:
    direct   `layover push release-2.tar --no-checksum` (the tarball read in place)
    extract  `tar -xf release-2.tar` into a directory, a read-only registry over it, then
             `skopeo copy --all --preserve-digests` of every image, 4 at a time (push's
             default concurrency), with a fresh skopeo cache
each into an empty target ("full") and into a target that holds release 1, put there by an
untimed `layover push release-1.tar` ("incremental"). Bytes sent are what the target registry
committed as blob uploads (its access log, sizes from the fixture); disk is what the route
wrote outside the target. The package's sha256 check (what `layover push` does by default,
and what `sha256sum -c` does before a `tar -xf`) is timed on its own.

Prints its numbers; keeps no results file (say which commit it ran at when quoting them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import fixture as fixture_mod
from bench.measure import du_bytes
from bench.push import Pusher
from layover.adapters.registry import RegistryManager, docker_client
from layover.adapters.registry_image import ensure_registry_image
from layover.adapters.tar_writer import MemoryFile, PlainTree, write_tarball
from layover.contents import CONTENTS_MEMBER
from layover.contents import build as build_contents
from layover.imagelist import parse_text
from layover.storage.hashing import sha256_file
from layover.storage.layout import StorageLayout

REPO = Path(__file__).resolve().parent.parent
_COMMIT = re.compile(r'"PUT /v2/\S+/blobs/uploads/\S*digest=(sha256(?::|%3A)[0-9a-f]{64})\S* HTTP/1\.1" 201')


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class PushBench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.scope = f"pushbench-{uuid.uuid4().hex[:8]}"
        self.root = Path(tempfile.mkdtemp(prefix="layover-push-bench-", dir=a.work_root))
        client = docker_client()
        self.mgr = RegistryManager(client, ensure_registry_image(client), self.scope)
        self.rows: list[dict] = []

    def close(self) -> None:
        self.mgr.remove_scope()
        self.mgr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- packages --------------------------------------------------------------------------
    def packages(self) -> None:
        t = time.monotonic()
        self.fx = fixture_mod.build(self.a.scale, Path(self.a.cache_dir), Path(self.a.deb_dir))
        print(f"fixture: scale {self.a.scale}, {time.monotonic() - t:.0f} s", flush=True)
        self.sizes: dict[str, int] = {}
        for img in self.fx.all_images():
            self.sizes.update((b.digest, b.size) for b in img.blobs)
        self.tar: dict[int, Path] = {}
        for n in (1, 2):
            t = time.monotonic()
            storage = self.root / f"package-{n}"
            storage.mkdir()
            reg = self.mgr.start(f"package-{n}", storage)
            pusher = Pusher(reg.host)
            try:
                for img in self.fx.release(n):
                    pusher.push_image(img)
            finally:
                pusher.close()
                self.mgr.stop(reg)
            listed = parse_text(self.fx.list_text(n), f"release-{n}.list")
            contents = build_contents(
                StorageLayout(storage), listed, list_source=f"release-{n}.list", list_commit=None
            )
            out = self.root / f"release-{n}.tar"
            write_tarball(PlainTree(storage), out, first=[MemoryFile(CONTENTS_MEMBER, contents.to_bytes())])
            shutil.rmtree(storage)
            self.tar[n] = out
            print(f"package {n}: {out.stat().st_size / 1e6:.0f} MB, {time.monotonic() - t:.0f} s", flush=True)
        old = {b.digest for img in self.fx.release(1) for b in img.blobs}
        self.new_blobs = {b.digest for img in self.fx.release(2) for b in img.blobs} - old
        self.new_bytes = sum(self.sizes[d] for d in self.new_blobs)
        self.all_bytes = sum(
            self.sizes[d] for d in {b.digest for img in self.fx.release(2) for b in img.blobs}
        )

    # --- routes ----------------------------------------------------------------------------
    def target(self, name: str, holding_release_1: bool):
        storage = self.root / f"target-{name}"
        storage.mkdir()
        reg = self.mgr.start(f"target-{name}", storage)
        if holding_release_1:
            self.layover_push(reg.host, self.tar[1])
        return reg, storage

    def layover_push(self, host: str, tar: Path, report: Path | None = None) -> float:
        argv = [sys.executable, "-m", "layover.cli", "push", str(tar), "--to", host,
                "--no-dest-tls-verify", "--no-checksum"]  # fmt: skip
        if report is not None:
            argv += ["--report", str(report)]
        t = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        return time.monotonic() - t

    def sent(self, reg) -> tuple[int, int]:
        """(blobs, bytes) the target committed as uploads."""
        digests = [m.group(1).replace("%3A", ":") for m in _COMMIT.finditer(self.mgr.access_log(reg))]
        return len(digests), sum(self.sizes.get(d, 0) for d in digests)

    def direct(self, scenario: str, run: int) -> None:
        reg, storage = self.target(f"direct-{scenario}-{run}", scenario == "incremental")
        before = self.sent(reg)
        report = self.root / "report.json"
        wall = self.layover_push(reg.host, self.tar[2], report)
        blobs, sent = (a - b for a, b in zip(self.sent(reg), before, strict=True))
        own = json.loads(report.read_text())
        assert own["bytes_uploaded"] == sent, (own["bytes_uploaded"], sent)
        self.row("direct", scenario, run, wall, blobs, sent, 0, own["seconds"])
        self.mgr.stop(reg)
        shutil.rmtree(storage)

    def extract(self, scenario: str, run: int) -> None:
        reg, storage = self.target(f"extract-{scenario}-{run}", scenario == "incremental")
        before = self.sent(reg)
        work = self.root / f"extract-{scenario}-{run}"
        (work / "home").mkdir(parents=True)
        (work / "tree").mkdir()
        t = time.monotonic()
        subprocess.run(["tar", "-xf", str(self.tar[2]), "-C", str(work / "tree")], check=True)
        extracted = time.monotonic() - t
        disk = du_bytes([work / "tree"])
        source = self.mgr.start(f"source-{scenario}-{run}", work / "tree", read_only=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(work / "home"), "XDG_RUNTIME_DIR": str(work / "home")}

        def copy(ref: str) -> None:
            subprocess.run(
                ["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                 "--dest-tls-verify=false", f"docker://{source.host}/{ref}", f"docker://{reg.host}/{ref}"],
                check=True, capture_output=True, env=env,
            )  # fmt: skip

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(copy, [img.ref for img in self.fx.release(2)]))
        wall = time.monotonic() - t
        blobs, sent = (a - b for a, b in zip(self.sent(reg), before, strict=True))
        self.row("extract", scenario, run, wall, blobs, sent, disk, {"tar -xf": round(extracted, 2)})
        self.mgr.stop(source)
        self.mgr.stop(reg)
        shutil.rmtree(work)
        shutil.rmtree(storage)

    def checksum(self, run: int) -> None:
        t = time.monotonic()
        sha256_file(self.tar[2])
        self.rows.append({"route": "sha256", "scenario": "-", "run": run, "wall": time.monotonic() - t})

    def row(self, route: str, scenario: str, run: int, wall: float, blobs: int, sent: int, disk: int,
            phases: dict) -> None:  # fmt: skip
        r = {"route": route, "scenario": scenario, "run": run, "wall": wall, "blobs": blobs, "sent": sent,
             "disk": disk, "phases": phases}  # fmt: skip
        self.rows.append(r)
        print(json.dumps(r), flush=True)

    # --- summary ---------------------------------------------------------------------------
    def summary(self, loads: tuple[str, str]) -> str:
        def med(route: str, scenario: str, key: str) -> tuple[float, float, float]:
            xs = [r[key] for r in self.rows if r["route"] == route and r["scenario"] == scenario]
            return statistics.median(xs), min(xs), max(xs)

        mb = 1e6
        out = [
            f"scale {self.a.scale}, {self.a.runs} run(s); release 2: {len(self.fx.release(2))} images, "
            f"{self.all_bytes / mb:.1f} MB of config/layer blobs, {len(self.new_blobs)} new blobs of "
            f"{self.new_bytes / mb:.1f} MB; package {self.tar[2].stat().st_size / mb:.0f} MB",
            f"load average at start {loads[0]}, at end {loads[1]} ({os.cpu_count()} CPUs)",
            "",
            "| route | target | wall s (median, range) | blobs sent | MB sent | sent / needed | extra disk MB |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for scenario, needed in (("full", self.all_bytes), ("incremental", self.new_bytes)):
            for route in ("direct", "extract"):
                w, lo, hi = med(route, scenario, "wall")
                blobs = med(route, scenario, "blobs")[0]
                sent = med(route, scenario, "sent")[0]
                disk = med(route, scenario, "disk")[0]
                out.append(
                    f"| {route} | {scenario} | {w:.1f} ({lo:.1f}-{hi:.1f}) | {blobs:.0f} | {sent / mb:.1f} | "
                    f"{sent / needed:.3f} | {disk / mb:.0f} |"
                )
        w, lo, hi = med("sha256", "-", "wall")
        out.append(f"\nsha256 of release-2.tar: {w:.1f} s ({lo:.1f}-{hi:.1f})")
        return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.push_bench")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-dir", default="/var/tmp/layover-bench-cache")
    ap.add_argument("--work-root", default="/var/tmp")
    ap.add_argument("--deb-dir", default=str(fixture_mod.DEFAULT_DEB_DIR))
    a = ap.parse_args(argv)
    b = PushBench(a)
    start_load = _load()
    try:
        b.packages()
        for run in range(1, a.runs + 1):
            for scenario in ("full", "incremental"):
                b.direct(scenario, run)
                b.extract(scenario, run)
            b.checksum(run)
        print(b.summary((start_load, _load())))
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
