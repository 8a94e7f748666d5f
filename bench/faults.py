"""Release 1 of a bench fixture through a fault-injecting proxy: does archive sync converge?

    python -m bench.faults [--fixture wide --images 600 | --fixture debs --scale 0.05]
                           [--rates 0.1,0.3] [--runs 1] [--copier native|skopeo]

The CI registry gets the fixture (as bench/run.sh does); tests/faultproxy.py sits in front of it
and, for each rate, faults that share of requests at random (connection reset, 503, 502, a body
cut off halfway, a 5 s stall then a closed connection). `layover run` builds release 1 cold
through the proxy against a standing Prefect server. Printed per run: the outcome (verified, or
the one line it failed with and its exit code), wall time, requests and faults.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import fixture as fixture_mod  # noqa: E402
from bench.harness import LAYOVER, Bench  # noqa: E402
from bench.measure import measure  # noqa: E402
from tests.faultproxy import Fault, FaultProxy  # noqa: E402

KINDS = (Fault.RESET, Fault.HTTP_503, Fault.HTTP_502, Fault.TRUNCATE, Fault.STALL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", choices=("debs", "wide"), default="wide")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--rates", default="0.1,0.3")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--copier", choices=("native", "skopeo"), default="native")
    ap.add_argument("--cache-dir", default="/var/tmp/layover-bench-cache")
    ap.add_argument("--work-root", default="/var/tmp/layover-bench-faults")
    a = ap.parse_args()
    b = Bench(
        argparse.Namespace(
            scale=a.scale,
            fixture=a.fixture,
            images=a.images,
            cache_dir=a.cache_dir,
            work_root=a.work_root,
            deb_dir=str(fixture_mod.DEFAULT_DEB_DIR),
            keep=False,
            profile=None,
        )
    )
    rows = []
    try:
        b.ci_registry()
        b.start_prefect()
        for rate in (float(r) for r in a.rates.split(",")):
            for run in range(1, a.runs + 1):
                work = b.root / f"faults-{rate}-{run}-{uuid.uuid4().hex[:6]}"
                out = work / "out" / "release1.tar"
                out.parent.mkdir(parents=True)
                with FaultProxy(b.ci.host, rate=rate, kinds=KINDS, seed=run, stall_seconds=5) as proxy:
                    argv = [
                        LAYOVER,
                        "run",
                        "--images",
                        str(b.lists[1]),
                        "--source",
                        proxy.host,
                        "--work-dir",
                        str(work / "layover"),
                        "--output",
                        str(out),
                        "--no-src-tls-verify",
                        "--copier",
                        a.copier,
                    ]
                    m = measure(argv, env=b.prefect_env, tarball=out, log=work / "run.log")
                    requests, faults = len(proxy.events), len(proxy.faults())
                text = (work / "run.log").read_text(errors="replace")
                if m.exit_code == 0:
                    check = subprocess.run(
                        [LAYOVER, "verify", str(out), "--images", str(b.lists[1])],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    outcome = "verified" if check.returncode == 0 else f"verify FAILED: {check.stdout[-200:]}"
                else:
                    errors = [ln for ln in text.splitlines() if ln.startswith("layover: error:")]
                    outcome = f"exit {m.exit_code}: " + (errors[-1][:300] if errors else "(no error line)")
                retried = text.count("attempt(s)") and sum(
                    int(ln.split(" attempt(s)")[0].rsplit(", ", 1)[-1]) - 1
                    for ln in text.splitlines()
                    if " attempt(s)," in ln
                )
                rows.append((rate, run, m.wall_s, requests, faults, retried, outcome))
                print(
                    f"rate {rate}: {m.wall_s:.1f} s, {faults}/{requests} requests faulted, "
                    f"{retried} extra attempts: {outcome}",
                    flush=True,
                )
                b.drop_work(work)
    finally:
        b.close()
    print(
        f"\n{b.fx.key}, release 1 ({len(b.fx.release1)} images), copier {a.copier}, cold, standing server\n"
    )
    print("| fault rate | run | wall s | requests | faulted | extra attempts | outcome |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for rate, run, wall, req, flt, retried, outcome in rows:
        print(f"| {rate:.0%} | {run} | {wall:.1f} | {req} | {flt} | {retried} | {outcome} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
