"""Layover's own cost per image, and its memory, on a list of many small images.

    python -m bench.overhead [--images 1000] [--concurrency 8]

A CI registry gets N tiny images (one unique layer of a few hundred bytes and a config each,
from layover.testing's seeded_image), then, in the same run and against one standing Prefect
server:
  - baseline: the skopeo work Layover orchestrates for a cold release, without Layover:
    `skopeo copy --all --preserve-digests` of every image, `--concurrency` at a time, into a
    fresh registry (what archive sync does), and `tar` of that registry's storage;
  - layover: `layover run` of the same list into an empty work dir (cold).
Overhead per image = (layover wall - baseline wall) / N: everything Layover adds around the
copies (Prefect tasks, probes, overlay, prune, the package sync, GC, verify, report). Peak RSS is
the largest process of Layover's tree (ru_maxrss via wait4).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import Bench  # noqa: E402  (after sys.path)
from bench.measure import measure  # noqa: E402
from layover.adapters.registry import RegistryManager, docker_client  # noqa: E402
from layover.adapters.registry_api import RegistryAPI  # noqa: E402
from layover.adapters.registry_image import ensure_registry_image  # noqa: E402
from layover.testing.images import DOCKER, seeded_image  # noqa: E402
from layover.testing.push import push_image  # noqa: E402


def _push(host: str, n: int) -> list[str]:
    api = RegistryAPI(host)
    names = [f"small/app-{i:04d}:1" for i in range(n)]

    def one(i: int) -> None:
        image = seeded_image(f"small/app-{i:04d}", "1", seed=f"overhead {i}", layers=1, fmt=DOCKER)
        push_image(api, image)

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(n)))
    return names


def _group_cpu_s(pgid: int) -> float:
    """user+sys seconds of every live process in a process group (the Prefect server's)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "comm)": state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _drained(pgid: int, timeout: float = 120) -> float:
    """Wait until the server has worked off its backlog (under 0.1 CPU-s in a second): events
    of a finished run are still being written after the client exits. Returns when idle."""
    deadline = time.monotonic() + timeout
    last = _group_cpu_s(pgid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = _group_cpu_s(pgid)
        if now - last < 0.1:
            return now
        last = now
    return last


BASELINE = r"""
import subprocess, sys
from concurrent.futures import ThreadPoolExecutor
src, dst, conc, listfile, storage, out = sys.argv[1:7]
refs = [l.strip() for l in open(listfile) if l.strip() and not l.startswith("#")]
def copy(ref):
    subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--retry-times", "0",
                    "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{src}/{ref}", f"docker://{dst}/{ref}"], check=True, capture_output=True)
with ThreadPoolExecutor(int(conc)) as ex:
    list(ex.map(copy, refs))
subprocess.run(["tar", "-cf", out, "-C", storage, "docker"], check=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--work-root", default="/var/tmp/layover-bench-overhead")
    a = ap.parse_args()
    root = Path(a.work_root) / f"run-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    client = docker_client()
    mgr = RegistryManager(client, ensure_registry_image(client), f"bench-ovh-{root.name}")
    bench = Bench(
        argparse.Namespace(
            scale=0.0, work_root=str(root), cache_dir=str(root), deb_dir="/nonexistent", keep=False
        )
    )
    bench.root = root
    try:
        (root / "ci").mkdir()
        ci = mgr.start("ci", root / "ci")
        bench.ci = ci
        t = time.monotonic()
        names = _push(ci.host, a.images)
        print(f"pushed {len(names)} small images in {time.monotonic() - t:.1f}s", flush=True)
        lst = root / "images.list"
        lst.write_text("\n".join(names) + "\n")
        bench.start_prefect()

        (root / "base").mkdir()
        dst = mgr.start("baseline", root / "base")
        base = measure(
            [
                sys.executable,
                "-c",
                BASELINE,
                ci.host,
                dst.host,
                str(a.concurrency),
                str(lst),
                str(root / "base"),
                str(root / "base.tar"),
            ],
            tarball=root / "base.tar",
            log=root / "baseline.log",
        )
        mgr.stop(dst)
        srv = bench.prefect.pid
        s0 = _drained(srv)
        lay = measure(
            [
                str(REPO / ".venv/bin/layover"),
                "run",
                "--images",
                str(lst),
                "--source",
                ci.host,
                "--no-src-tls-verify",
                "--work-dir",
                str(root / "work"),
                "--output",
                str(root / "layover.tar"),
                "--concurrency",
                str(a.concurrency),
            ],
            env=bench.prefect_env,
            tarball=root / "layover.tar",
            log=root / "layover.log",
        )
        lay_srv = _drained(srv) - s0  # the server's work for the run, its backlog included
        # Prefect's share: the same fan-out of no-op tasks, against the same idle server
        s0 = _group_cpu_s(srv)
        empty = measure(
            [
                sys.executable,
                "-m",
                "bench.empty_flow",
                "--tasks",
                str(a.images),
                "--concurrency",
                str(a.concurrency),
            ],
            env=dict(bench.prefect_env, PYTHONPATH=str(REPO)),
            log=root / "empty.log",
        )
        empty_srv = _drained(srv) - s0
        one = measure(
            [sys.executable, "-m", "bench.empty_flow", "--tasks", "1"],
            env=dict(bench.prefect_env, PYTHONPATH=str(REPO)),
            log=root / "empty1.log",
        )
        if base.exit_code or lay.exit_code or empty.exit_code or one.exit_code:
            print(
                f"a run failed: baseline {base.exit_code}, layover {lay.exit_code}, "
                f"empty flows {empty.exit_code}/{one.exit_code}; see {root}"
            )
            return 1
        per_image_ms = (lay.wall_s - base.wall_s) / a.images * 1000
        prefect_ms = (empty.wall_s - one.wall_s) / (a.images - 1) * 1000
        print(f"\n{a.images} small images, concurrency {a.concurrency}, standing Prefect server\n")
        print("| run | wall s | CPU s | Prefect server CPU s | peak RSS MB |\n|---|---:|---:|---:|---:|")
        print(
            f"| parallel skopeo + tar (baseline) | {base.wall_s:.1f} | {base.cpu_s:.1f} | - "
            f"| {base.peak_rss_mb:.0f} |"
        )
        print(f"| layover run | {lay.wall_s:.1f} | {lay.cpu_s:.1f} | {lay_srv:.1f} | {lay.peak_rss_mb:.0f} |")
        print(
            f"| Prefect alone: {a.images} no-op tasks | {empty.wall_s:.1f} | {empty.cpu_s:.1f} "
            f"| {empty_srv:.1f} | {empty.peak_rss_mb:.0f} |"
        )
        print(
            f"| Prefect alone: 1 no-op task | {one.wall_s:.1f} | {one.cpu_s:.1f} | - | {one.peak_rss_mb:.0f} |"
        )
        print(
            f"\nLayover's own cost: {per_image_ms:.1f} ms per image "
            f"(target <= 30 ms); peak RSS {lay.peak_rss_mb:.0f} MB (target < 500 MB)"
        )
        print(
            f"of which a Prefect task run costs {prefect_ms:.1f} ms per image on this server "
            "(no-op fan-out minus a one-task flow, idle server);\nthe server's CPU (backlog "
            "included) is not in the CPU s column"
        )
        print("\nlayover's report:\n" + (root / "layover.log").read_text()[-2500:])
        return 0
    finally:
        mgr.remove_scope()
        mgr.close()
        bench.close()
        merged = root / "work" / "merged"
        if os.path.ismount(merged):
            subprocess.run(["umount", str(merged)], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
