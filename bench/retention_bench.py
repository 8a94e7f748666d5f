"""Archive prune at scale: ~100,000 blobs, 5,000 repositories, 20,000 tags (bench/gc_bench.py's tree).

    python bench/retention_bench.py [--scale 1.0] [--runs 3] [--keep-tags 2]

The tree stands for an archive of five releases: every tagged repository has tags v0..v4, and
release k is the list of every repository's `vk`. The prune keeps the last `--keep-tags` releases
(two lists of 4,000 images each at scale 1) and drops the rest. In a fresh child process, so peak
RSS is the prune's own: read the lists and plan (the dry run: `plan_retention`, which refuses names
the archive lacks) `--runs` times, wall and CPU seconds (CPU is the number to trust on a busy
machine); the release GC's plan of the whole tree once, the baseline measured in the same process;
then one apply with the progress counter (files/s overall and per 2 s interval), the empty-dir
sweep, and a second plan (must delete nothing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gc_bench import generate  # the one generator of the GC-scale tree


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(root: str, lists: list[str], runs: int) -> dict[str, object]:
    """Runs in a fresh process so ru_maxrss is the prune's own."""
    from layover.imagelist import load
    from layover.retention import ApplyProgress, KeptList, plan_retention
    from layover.storage.gc import plan_gc
    from layover.storage.layout import StorageLayout
    from layover.storage.vacuum import apply_gc, remove_empty_dirs

    layout = StorageLayout(Path(root))
    out: dict[str, object] = {}
    plans: list[tuple[float, float]] = []  # (wall, CPU) seconds
    for _ in range(runs):  # planning only reads: the same tree serves every repetition
        t0, c0 = time.perf_counter(), _cpu()
        kept = [KeptList(p, None, load(p)) for p in lists]
        plan = plan_retention(layout, kept)
        plans.append((time.perf_counter() - t0, _cpu() - c0))
    out["plan"] = plans
    out["plan_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Baseline in the same process and minute: the release's GC plan over the whole tree.
    t0, c0 = time.perf_counter(), _cpu()
    plan_gc(layout)
    out["gc_plan"] = (time.perf_counter() - t0, _cpu() - c0)
    out["summary"] = plan.summary()
    out["paths"] = len(plan.gc.deletions)
    stamps: list[tuple[float, int]] = []
    progress = ApplyProgress(
        len(plan.gc.deletions), lambda _line: stamps.append((time.perf_counter(), progress.done)), every=2.0
    )
    t0, c0 = time.perf_counter(), _cpu()
    result = apply_gc(plan.gc, progress=progress.advance)
    out["empty_dirs"] = remove_empty_dirs(layout)
    out["apply"] = (time.perf_counter() - t0, _cpu() - c0)
    out["deleted"] = result.deleted
    points = [(t0, 0), *stamps]
    out["interval_rates"] = [(n1 - n0) / (t1 - s0) for (s0, n0), (t1, n1) in itertools.pairwise(points)]
    t0 = time.perf_counter()
    again = plan_retention(layout, kept)
    out["replan_s"] = time.perf_counter() - t0
    out["replan_paths"] = len(again.gc.deletions)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3, help="plans measured (the apply runs once)")
    ap.add_argument("--keep-tags", type=int, default=2, choices=range(1, 5))
    ap.add_argument("--measure", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1:], args.runs)))
        return 0
    tmp = tempfile.mkdtemp(prefix="retention-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        root = os.path.join(tmp, "lower")
        t0 = time.perf_counter()
        g, listed = generate(root, args.scale, 1024)
        gen_s = time.perf_counter() - t0
        lists = []
        for k in range(5 - args.keep_tags, 5):  # the last `keep_tags` releases
            path = os.path.join(tmp, f"release-v{k}.list")
            Path(path).write_text("".join(f"{ref}\n" for ref in listed if ref.endswith(f":v{k}")))
            lists.append(path)
        subprocess.run(["sync"], check=True)
        load_before = os.getloadavg()[0]
        proc = subprocess.run(
            [sys.executable, __file__, "--runs", str(args.runs), "--measure", root, *lists],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        m = json.loads(proc.stdout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"tree: {g.blobs} blobs, {g.links} links, {len(listed)} tags, generated in {gen_s:.0f} s; keep the "
        f"last {args.keep_tags} of 5 releases; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (2 CPUs)"
    )
    print(f"plan: {m['summary']}")
    walls = [w for w, _ in m["plan"]]
    cpus = [c for _, c in m["plan"]]
    gc_wall, gc_cpu = m["gc_plan"]
    print(
        f"prune plan (dry run)   wall median {statistics.median(walls):.2f} s (range {min(walls):.2f}-"
        f"{max(walls):.2f}, {len(walls)} runs), CPU median {statistics.median(cpus):.2f} s"
    )
    print(
        f"release GC plan        wall {gc_wall:.2f} s, CPU {gc_cpu:.2f} s (whole tree, same process): "
        f"prune plan / GC plan = {statistics.median(cpus) / gc_cpu:.2f} in CPU"
    )
    print(f"plan peak RSS          {m['plan_rss_mb']:.0f} MB")
    a_wall, a_cpu = m["apply"]
    rates = m["interval_rates"]
    print(
        f"apply + empty dirs     {m['deleted']} paths in {a_wall:.1f} s wall, {a_cpu:.1f} s CPU: "
        f"{m['deleted'] / a_wall:,.0f} files/s; per 2 s interval median {statistics.median(rates):,.0f} "
        f"(range {min(rates):,.0f}-{max(rates):,.0f})"
        if rates
        else ""
    )
    print(f"second plan            {m['replan_s']:.2f} s, {m['replan_paths']} paths (must be 0)")
    print(f"peak RSS               {m['peak_rss_mb']:.0f} MB")
    return 0 if m["replan_paths"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
