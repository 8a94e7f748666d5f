"""The scale curve: the wide fixture at several sizes, layover against blog-overlay.

    python -m bench.scale [--images 60,600,2000] [--runs 3] [--results bench/results]

Runs bench/run.sh's harness once per size (`--fixture wide --images N --runners
blog-overlay,layover`, cold and incremental; each size writes its own results file) and prints
one table: wall time and peak RSS per size, scenario and runner, and blog-overlay's wall time
over layover's, all from the same harness runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import main as harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="60,600,2000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", default=str(REPO / "bench/results"))
    a, rest = ap.parse_known_args()
    results = Path(a.results)
    table = []
    failed = False
    for n in (int(x) for x in a.images.split(",")):
        before = set(results.glob("*.json"))
        failed |= (
            harness(
                [
                    "--fixture",
                    "wide",
                    "--images",
                    str(n),
                    "--runs",
                    str(a.runs),
                    "--runners",
                    "blog-overlay,layover",
                    "--scenarios",
                    "cold,incremental",
                    "--results",
                    str(results),
                    *rest,
                ]
            )
            != 0
        )
        [new] = set(results.glob("*.json")) - before
        rows = json.loads(new.read_text())["rows"]
        for scenario in ("cold", "incremental"):
            cell = {}
            for runner in ("blog-overlay", "layover"):
                ok = [
                    r
                    for r in rows
                    if r["scenario"] == scenario and r["runner"] == runner and not r["exit_code"]
                ]
                cell[runner] = (
                    statistics.median(r["wall_s"] for r in ok) if ok else None,
                    max((r["peak_rss_mb"] for r in ok), default=None),
                )
            table.append((n, scenario, cell, new.name))
    print(
        "\n| images | release | blog-overlay wall s | layover wall s | × | blog-overlay peak RSS MB | "
        "layover peak RSS MB | results |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for n, scenario, cell, name in table:
        (bw, br), (lw, lr) = cell["blog-overlay"], cell["layover"]
        ratio = f"{bw / lw:.2f}" if bw and lw else "n/a"
        print(
            f"| {n} | {scenario} | {bw or 0:.1f} | {lw or 0:.1f} | {ratio} | {br or 0:.0f} | {lr or 0:.0f} | {name} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
