"""Customer-side numbers: `layover install` against a plain `tar -xf` of the bench's full
package, and deltas (size, creation time, install time).

    .venv/bin/python -m bench.install_bench [--scale 1.0] [--runs 3] [--fs ext4|xfs|none]

1. The bench fixture in its CI registry, exactly as bench/run.sh makes it (bench/harness.py),
   and `layover run` (embedded Prefect server) builds the release 1 and release 2 packages on
   the work root. Not timed.
2. Per run, interleaved so drift hits all alike, each into a fresh storage dir on the same
   filesystem as the packages:
     tar -xf       `tar -xf release2.tar -C DIR`, timed, then `sync -f DIR`, timed on its own:
                   install ends with its data on disk (two syncfs) and `tar -xf` does no fsync,
                   so the ratio is printed against both `tar -xf` alone (the bar issue 12 sets)
                   and `tar -xf` + `sync -f` (the same durability); no checksum, no checks
     install       `layover install release2.tar --storage DIR`: checksum, every check, blobs
                   hashed, syncfs, verify
     delta         `layover delta release2.tar --base release1.tar`
     install delta / install full over 1: into a DIR holding release 1 (prepared, not timed)
   The ratios install / tar -xf and install / (tar -xf + sync) are taken within each run;
   medians and ranges are printed.
   Page cache is left warm (the machine is shared: no drop_caches); the tarballs are read once
   before the runs.
3. `--fs`: the work root is a fresh loop-mounted ext4 (default) or XFS with reflink=1 (a sparse
   40 GiB file under /var/tmp, unmounted and deleted on every exit path; on XFS install and delta
   clone blocks), so that syncing it does not wait for other users' writes; `none`: --work-root.

Prints a markdown report; keeps no results file (quote the commit with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import fixture as fixture_mod
from bench.harness import LAYOVER, Bench
from layover.package import read_contents

Timed = dict[str, list[float]]


CPU: Timed = {}  # user + system seconds of the child processes, per label


def _t(fn: Callable[[], object], label: str = "") -> float:
    """Wall seconds of fn(); the CPU seconds its child processes used go to CPU[label]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        CPU.setdefault(label, []).append(used)
    return wall


def _run(*argv: str | Path) -> str:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{argv[:3]} exited {p.returncode}: {p.stderr[-3000:]}")
    return p.stdout


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    _run("sync", "-f", path)
    return path


class LoopFs:
    """A fresh filesystem on a sparse 40 GiB file under /var/tmp, loop-mounted, gone on exit.

    Why a filesystem of its own even for ext4: `sync -f` and install's syncfs flush the whole
    filesystem, and on a shared machine the root filesystem holds everyone's dirty pages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.img = Path(tempfile.mkstemp(prefix=f"layover-install-{kind}.", suffix=".img", dir="/var/tmp")[1])
        self.mnt = Path(tempfile.mkdtemp(prefix=f"layover-install-{kind}.", dir="/var/tmp"))

    def __enter__(self) -> Path:
        os.truncate(self.img, 40 << 30)
        if self.kind == "xfs":
            _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.img)
        else:
            _run("mkfs.ext4", "-q", "-F", self.img)
        _run("mount", "-o", "loop", self.img, self.mnt)
        if self.kind == "xfs" and "reflink=1" not in _run("xfs_info", self.mnt):
            raise SystemExit(f"no reflink on {self.mnt}")
        return self.mnt

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False)
        shutil.rmtree(self.mnt, ignore_errors=True)
        self.img.unlink(missing_ok=True)


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f})"


def measure(a: argparse.Namespace, root: Path) -> str:
    b = Bench(
        argparse.Namespace(
            scale=a.scale,
            cache_dir=a.cache_dir,
            deb_dir=a.deb_dir,
            work_root=str(root),
            keep=a.keep,
            fixture="debs",
            images=0,
            profile=None,
        )
    )
    try:
        pkgs = b.root / "packages"
        pkgs.mkdir(parents=True, exist_ok=True)
        tars = {n: pkgs / f"release{n}.tar" for n in (1, 2)}
        if a.packages:  # packages from an earlier --keep run: copied, so this filesystem holds them
            for n, t in tars.items():
                for suffix in ("", ".sha256", ".json"):
                    shutil.copyfile(Path(a.packages) / f"release{n}.tar{suffix}", f"{t}{suffix}")
        else:
            b.ci_registry()
        for n in () if a.packages else (1, 2):
            argv, env = b.argv("layover-embedded", n, pkgs, tars[n])
            print(f"building the release {n} package ...", flush=True)
            p = subprocess.run(argv, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"layover run failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
        for t in tars.values():  # warm: every runner reads a tarball the page cache holds
            with open(t, "rb") as f:
                while f.read(1 << 24):
                    pass
        c1, c2 = read_contents(tars[1]), read_contents(tars[2])
        new_bytes = sum(x.size for x in c2.blobs if x.digest not in {y.digest for y in c1.blobs})
        base1 = b.root / "base1"
        _run(LAYOVER, "install", tars[1], "--storage", _fresh(base1))
        timed: Timed = {
            k: []
            for k in (
                "floor",
                "tar",
                "tar-sync",
                "install",
                "install-nosum",
                "ratio",
                "ratio-sync",
                "ratio-floor",
                "delta",
                "install-delta",
                "install-over-1",
            )
        }
        clone: dict[str, int] = {}
        phases: Timed = {}  # install's own phases (its report), empty dir
        delta = pkgs / "release2.from-release1.tar"
        for run in range(1, a.runs + 1):
            # the floor of a durable install on this disk: the package's bytes written once and
            # fsynced, no tar parsing, no hashing (an install writes its blobs, ~ all of them)
            d = _fresh(b.root / "floor")
            timed["floor"].append(
                _t(lambda d=d: _run("dd", f"if={tars[2]}", f"of={d / 'x'}", "bs=4M", "conv=fsync"), "floor")
            )
            timed["ratio-floor"].append(0.0)  # filled below, once install has run
            d = _fresh(b.root / "tar")
            timed["tar"].append(_t(lambda d=d: _run("tar", "-xf", tars[2], "-C", d), "tar"))
            timed["tar-sync"].append(timed["tar"][-1] + _t(lambda d=d: _run("sync", "-f", d), "sync"))
            d = _fresh(b.root / "install")
            report = b.root / "install.json"
            timed["install"].append(
                _t(
                    lambda d=d, r=report: _run(LAYOVER, "install", tars[2], "--storage", d, "--report", r),
                    "install",
                )
            )
            done = json.loads(report.read_text())
            clone["install"] = done["blobs"]["bytes_cloned"]
            for k, v in done["phases"].items():
                phases.setdefault(k, []).append(v)
            timed["ratio"].append(timed["install"][-1] / timed["tar"][-1])
            timed["ratio-sync"].append(timed["install"][-1] / timed["tar-sync"][-1])
            timed["ratio-floor"][-1] = timed["install"][-1] / timed["floor"][-1]
            d = _fresh(b.root / "install-nosum")
            timed["install-nosum"].append(
                _t(
                    lambda d=d: _run(LAYOVER, "install", tars[2], "--storage", d, "--no-checksum"),
                    "install-nosum",
                )
            )
            for f in pkgs.glob("release2.from-*"):
                f.unlink()
            timed["delta"].append(
                _t(lambda: _run(LAYOVER, "delta", tars[2], "--base", tars[1], "--output", delta))
            )
            for name, pkg in (("install-delta", delta), ("install-over-1", tars[2])):
                d = b.root / name
                shutil.rmtree(d, ignore_errors=True)
                _run("cp", "-a", "--reflink=auto", base1, d)
                _run("sync", "-f", d)
                timed[name].append(_t(lambda d=d, pkg=pkg: _run(LAYOVER, "install", pkg, "--storage", d)))
            print(
                f"run {run}: tar -xf {timed['tar'][-1]:.2f} s (+ sync {timed['tar-sync'][-1]:.2f} s), "
                f"install {timed['install'][-1]:.2f} s (x{timed['ratio'][-1]:.2f}, "
                f"x{timed['ratio-sync'][-1]:.2f} with sync), delta {timed['delta'][-1]:.2f} s, install delta "
                f"{timed['install-delta'][-1]:.2f} s, install full over 1 {timed['install-over-1'][-1]:.2f} s",
                flush=True,
            )
        fs = _run("stat", "-f", "-c", "%T", b.root).strip()
        size2, sized = tars[2].stat().st_size, delta.stat().st_size
        ratios, ratios_sync = timed["ratio"], timed["ratio-sync"]
        fl = [f / t for f, t in zip(timed["floor"], timed["tar"], strict=True)]
        lines = [
            f"scale {a.scale}, {a.runs} runs, filesystem {fs}, {os.cpu_count()} CPUs; release 2 package "
            f"{size2 / 1e6:.1f} MB ({len(c2.images)} images, {len(c2.blobs)} blobs), page cache warm",
            "",
            "| | median (range) |",
            "|---|---:|",
            f"| floor: `dd conv=fsync` of the package into the dir | {_stats(timed['floor'])} |",
            f"| `tar -xf`, empty dir (no fsync) | {_stats(timed['tar'])} |",
            f"| `tar -xf` + `sync -f`, empty dir | {_stats(timed['tar-sync'])} |",
            f"| `layover install`, empty dir | {_stats(timed['install'])} |",
            f"| `layover install --no-checksum` (blobs still hashed), empty dir | {_stats(timed['install-nosum'])} |",
            f"| install / tar -xf, same run | x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
            f"| install / (tar -xf + sync -f), same run | x{statistics.median(ratios_sync):.2f} "
            f"({min(ratios_sync):.2f}-{max(ratios_sync):.2f}) |",
            f"| install / floor, same run | x{statistics.median(timed['ratio-floor']):.2f} "
            f"({min(timed['ratio-floor']):.2f}-{max(timed['ratio-floor']):.2f}) |",
            f"| floor / tar -xf, same run | x{statistics.median(fl):.2f} ({min(fl):.2f}-{max(fl):.2f}) |",
            f"| `layover delta` 2 from 1 | {_stats(timed['delta'])} |",
            f"| install delta into release 1 | {_stats(timed['install-delta'])} |",
            f"| install full release 2 into release 1 | {_stats(timed['install-over-1'])} |",
            "",
            f"delta size {sized / 1e6:.2f} MB, new blobs {new_bytes / 1e6:.2f} MB: "
            f"x{sized / max(1, new_bytes):.3f} (metadata {(sized - new_bytes) / 1e6:.2f} MB); "
            f"full package {size2 / 1e6:.1f} MB; bytes cloned by install {clone['install'] / 1e6:.1f} MB",
            "",
            "CPU seconds (user + system, median): "
            + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in CPU.items()),
            "",
            "install into an empty dir, its phases (median s): "
            + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in phases.items()),
        ]
        return "\n".join(lines)
    finally:
        b.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.install_bench")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-dir", default="/var/tmp/layover-bench-cache")
    ap.add_argument("--work-root", default="/var/tmp/layover-install-bench")
    ap.add_argument("--deb-dir", default=str(fixture_mod.DEFAULT_DEB_DIR))
    ap.add_argument("--keep", action="store_true", help="keep packages and dirs (with --fs none)")
    ap.add_argument("--packages", help="reuse release1.tar and release2.tar (+ .sha256, .json) from this dir")
    ap.add_argument(
        "--fs",
        choices=("ext4", "xfs", "none"),
        default="ext4",
        help="a fresh loop-mounted ext4 or reflink XFS for the work root, or none: --work-root as is",
    )
    a = ap.parse_args(argv)
    if a.fs == "none":
        print(measure(a, Path(a.work_root)))
        return 0
    with LoopFs(a.fs) as mnt:
        print(measure(a, mnt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
