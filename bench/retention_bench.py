"""Archive prune at scale: ~100,000 blobs, 5,000 repositories, 20,000 tags (bench/gc_bench.py's tree).

    python bench/retention_bench.py [--scale 1.0] [--runs 3] [--keep-tags 2]

The tree stands for an archive of five releases: every tagged repository has tags v0..v4, and
release k is the list of every repository's `vk`. The prune keeps the last `--keep-tags` releases
(two lists of 4,000 images each at scale 1) and drops the rest. Per run, in a fresh child process so
peak RSS is the prune's own: read the lists, plan (the dry run: `plan_retention`, which refuses
names the archive lacks), apply with the progress counter (files/s), sweep empty dirs, and plan
again (must delete nothing). Each run regenerates the tree: an apply cannot be measured twice on
one tree. Prints the median and range of each number.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gc_bench import generate  # noqa: E402  the one generator of the GC-scale tree


def measure(root: str, lists: list[str]) -> dict[str, float | int | str]:
    """Runs in a fresh process so ru_maxrss is the prune's own."""
    from layover.imagelist import load
    from layover.retention import ApplyProgress, KeptList, plan_retention
    from layover.storage.layout import StorageLayout
    from layover.storage.vacuum import apply_gc, remove_empty_dirs

    layout = StorageLayout(Path(root))
    out: dict[str, float | int | str] = {}
    t0 = time.perf_counter()
    kept = [KeptList(p, None, load(p)) for p in lists]
    plan = plan_retention(layout, kept)
    out["plan_s"] = time.perf_counter() - t0
    out["plan_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["summary"] = plan.summary()
    out["paths"] = len(plan.gc.deletions)
    out["images_dropped"] = len(plan.dropped)
    lines: list[str] = []
    progress = ApplyProgress(len(plan.gc.deletions), lines.append, every=2.0)
    t0 = time.perf_counter()
    result = apply_gc(plan.gc, progress=progress.advance)
    out["empty_dirs"] = remove_empty_dirs(layout)
    out["apply_s"] = time.perf_counter() - t0
    out["files_per_s"] = result.deleted / out["apply_s"]
    out["progress_lines"] = len(lines)
    out["last_progress"] = lines[-1] if lines else ""
    t0 = time.perf_counter()
    again = plan_retention(layout, kept)
    out["replan_s"] = time.perf_counter() - t0
    out["replan_paths"] = len(again.gc.deletions)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def one_run(scale: float, keep_tags: int) -> dict[str, float | int | str]:
    tmp = tempfile.mkdtemp(prefix="retention-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        root = os.path.join(tmp, "lower")
        t0 = time.perf_counter()
        g, listed = generate(root, scale, 1024)
        gen_s = time.perf_counter() - t0
        lists = []
        for k in range(5 - keep_tags, 5):  # the last `keep_tags` releases
            path = os.path.join(tmp, f"release-v{k}.list")
            Path(path).write_text("".join(f"{ref}\n" for ref in listed if ref.endswith(f":v{k}")))
            lists.append(path)
        subprocess.run(["sync"], check=True)
        proc = subprocess.run([sys.executable, __file__, "--measure", root, *lists], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        m = json.loads(proc.stdout)
        m.update(blobs=g.blobs, links=g.links, tags=len(listed), generate_s=gen_s)
        return m
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep-tags", type=int, default=2, choices=range(1, 5))
    ap.add_argument("--measure", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1:])))
        return 0
    runs = [one_run(args.scale, args.keep_tags) for _ in range(args.runs)]
    first = runs[0]
    print(f"tree: {first['blobs']} blobs, {first['links']} links, {first['tags']} tags; keep the last "
          f"{args.keep_tags} of 5 releases; {args.runs} run(s), each on a fresh tree")
    print(f"plan: {first['summary']}")

    def row(name: str, key: str, unit: str, fmt: str = "{:.2f}") -> None:
        vals = [float(r[key]) for r in runs]
        print(f"{name:<22} median {fmt.format(statistics.median(vals))} {unit}  "
              f"(range {fmt.format(min(vals))}-{fmt.format(max(vals))})")

    row("plan (the dry run)", "plan_s", "s")
    row("plan peak RSS", "plan_rss_mb", "MB", "{:.0f}")
    row("apply + empty dirs", "apply_s", "s")
    row("apply rate", "files_per_s", "files/s", "{:,.0f}")
    row("second plan", "replan_s", "s")
    row("peak RSS", "peak_rss_mb", "MB", "{:.0f}")
    print(f"apply: {first['paths']} paths, {first['empty_dirs']} empty dirs swept, "
          f"{first['progress_lines']} progress lines, last: {first['last_progress']}")
    ok = all(r["replan_paths"] == 0 for r in runs)
    print("second plan deletes nothing: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
