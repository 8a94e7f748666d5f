"""GC and verify at release scale: ~100,000 blobs, 5,000 repositories, 20,000 tags.

    python bench/gc_bench.py [--scale 1.0] [--layer-size 1024] [--big-mib 512] [--keep DIR]

Builds a storage tree in a temp dir (4/5 of repositories tagged, each tag moved once so half of
its history is garbage, 1 tag in 20 an OCI index of two images, a pool of shared base layers,
nested repositories, a tagless fifth), then, in a fresh child process so peak RSS is GC's own:
plan, apply, a second plan (must delete nothing) and verify against the matching images.list.
`cat` of the same blob files to /dev/null is the I/O baseline for verify's MB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

V2 = "docker/registry/v2"


class Gen:
    """Writes storage files directly: generation must not take longer than the thing measured."""

    def __init__(self, root: str, layer_size: int) -> None:
        self.v2 = os.path.join(root, V2)
        self.layer_size = layer_size
        self.blobs = 0
        self.links = 0
        self.n = 0

    def _write(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def blob(self, data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        path = f"{self.v2}/blobs/sha256/{h[:2]}/{h}/data"
        if not os.path.exists(path):
            self._write(path, data)
            self.blobs += 1
        return h

    def link(self, path: str, h: str) -> None:
        self._write(path, f"sha256:{h}".encode())
        self.links += 1

    def layer(self, repo: str, data: bytes) -> str:
        h = self.blob(data)
        self.link(f"{self.v2}/repositories/{repo}/_layers/sha256/{h}/link", h)
        return h

    def manifest(self, repo: str, doc: dict) -> str:
        h = self.blob(json.dumps(doc).encode())
        self.link(f"{self.v2}/repositories/{repo}/_manifests/revisions/sha256/{h}/link", h)
        return h

    def image(self, repo: str, base: bytes) -> str:
        self.n += 1
        seed = f"{repo}#{self.n}".encode()
        cfg = self.layer(repo, b'{"architecture":"amd64","id":"' + seed + b'"}')
        own = self.layer(repo, (seed * (self.layer_size // len(seed) + 1))[: self.layer_size])
        shared = self.layer(repo, base)
        return self.manifest(
            repo,
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": 1,
                    "digest": f"sha256:{cfg}",
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": 1,
                        "digest": f"sha256:{d}",
                    }
                    for d in (shared, own)
                ],
            },
        )

    def index(self, repo: str, base: bytes) -> str:
        kids = [self.image(repo, base), self.image(repo, base)]
        return self.manifest(
            repo,
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "size": 1,
                        "digest": f"sha256:{k}",
                    }
                    for k in kids
                ],
            },
        )

    def tag(self, repo: str, tag: str, h: str, history: list[str]) -> None:
        t = f"{self.v2}/repositories/{repo}/_manifests/tags/{tag}"
        for old in [*history, h]:
            self.link(f"{t}/index/sha256/{old}/link", old)
        self.link(f"{t}/current/link", h)


def generate(root: str, scale: float, layer_size: int) -> tuple[Gen, list[str]]:
    g = Gen(root, layer_size)
    n_repos = max(5, int(5000 * scale))
    base_pool = [f"base layer {i}".encode() * 16 for i in range(max(1, int(2000 * scale)))]
    listed: list[str] = []
    t = 0
    for r in range(n_repos):
        # team<k>/svc<r>; every 10th team dir is itself a repository (nesting)
        repo = f"team{r // 10}" if r % 10 == 0 else f"team{r // 10}/svc{r}"
        base = base_pool[r % len(base_pool)]
        if r % 5 == 4:  # tagless: pruned by the pipeline, GC removes its internals
            g.image(repo, base)
            g.image(repo, base)
            g.link(f"{g.v2}/repositories/{repo}/_uploads/u{r}/startedat", "x" * 64)
            continue
        for k in range(5):
            t += 1
            head = g.index(repo, base) if t % 20 == 0 else g.image(repo, base)
            old = [g.image(repo, base)] if k % 2 == 0 else []
            g.tag(repo, f"v{k}", head, old)
            listed.append(f"{repo}:v{k}")
    return g, listed


def big_blobs(tmp: str, total_mib: int, workers: int) -> tuple[float, float, float, int]:
    """Verify, `cat` and `sha256sum` seconds for one image of 64 MiB layers: hashing throughput proper."""
    from layover.imagelist import parse_text
    from layover.storage.layout import StorageLayout
    from layover.storage.verify import verify_storage

    root = os.path.join(tmp, "big")
    g = Gen(root, 0)
    chunk = os.urandom(1 << 20)
    layers = []
    for i in range(max(1, total_mib // 64)):
        data = i.to_bytes(4, "big") + chunk * 64
        layers.append(g.layer("big", data))
    cfg = g.layer("big", b"{}")
    m = g.manifest(
        "big",
        {
            "schemaVersion": 2,
            "config": {"digest": f"sha256:{cfg}", "size": 2},
            "layers": [{"digest": f"sha256:{h}", "size": 1} for h in layers],
        },
    )
    g.tag("big", "1", m, [])
    report = verify_storage(StorageLayout(Path(root)), parse_text("big:1\n"), workers=workers)
    assert report.ok, report.summary()
    files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, V2, "blobs")) for f in fs]
    t0 = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    cat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", *files], stdout=subprocess.DEVNULL, check=True)
    return report.seconds, cat_s, time.perf_counter() - t0, report.bytes_hashed


def measure(root: str, list_path: str, workers: int) -> dict:
    """Runs in a fresh process so ru_maxrss is GC's own."""
    from layover.imagelist import load
    from layover.storage.gc import plan_gc
    from layover.storage.layout import StorageLayout
    from layover.storage.vacuum import apply_gc
    from layover.storage.verify import verify_storage

    layout = StorageLayout(Path(root))
    out: dict = {}
    t0 = time.perf_counter()
    plan = plan_gc(layout)
    out["plan_s"] = time.perf_counter() - t0
    out["plan_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["summary"] = plan.summary()
    out["deletions"] = len(plan.deletions)
    t0 = time.perf_counter()
    res = apply_gc(plan)
    out["apply_s"] = time.perf_counter() - t0
    out["dirs_removed"] = res.dirs_removed
    t0 = time.perf_counter()
    again = plan_gc(layout)
    out["replan_s"] = time.perf_counter() - t0
    out["replan_deletions"] = len(again.deletions)
    images = load(list_path)
    t0 = time.perf_counter()
    report = verify_storage(layout, images, workers=workers)
    out["verify_s"] = time.perf_counter() - t0
    out["verify_ok"] = report.ok
    out["verify_problems"] = [str(p) for p in report.problems[:3]]
    out["bytes_hashed"] = report.bytes_hashed
    out["blobs_after"] = report.blobs
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--layer-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument(
        "--big-mib", type=int, default=512, help="also hash this many MiB of 64 MiB blobs (0: skip)"
    )
    ap.add_argument("--keep", help="build the tree in this (new) directory and keep it")
    ap.add_argument("--measure", nargs=2, metavar=("ROOT", "LIST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.workers)))
        return 0

    tmp = args.keep or tempfile.mkdtemp(prefix="gc-bench-")
    try:
        root = os.path.join(tmp, "storage")
        t0 = time.perf_counter()
        g, listed = generate(root, args.scale, args.layer_size)
        gen_s = time.perf_counter() - t0
        list_path = os.path.join(tmp, "images.list")
        Path(list_path).write_text("\n".join(listed) + "\n")
        n_repos = sum(1 for _ in os.scandir(os.path.join(root, V2, "repositories")))
        print(
            f"generated {g.blobs} blobs, {g.links} links, {len(listed)} tags, "
            f"{max(5, int(5000 * args.scale))} repositories ({n_repos} top dirs) in {gen_s:.1f}s"
        )
        proc = subprocess.run(
            [sys.executable, __file__, "--workers", str(args.workers), "--measure", root, list_path],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        m = json.loads(proc.stdout)
        # Baseline: cat every remaining blob to /dev/null (same files, same page cache state).
        files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, V2, "blobs")) for f in fs]
        t0 = time.perf_counter()
        for i in range(0, len(files), 2000):
            subprocess.run(["cat", *files[i : i + 2000]], stdout=subprocess.DEVNULL, check=True)
        cat_s = time.perf_counter() - t0
        mb = m["bytes_hashed"] / 2**20
        rows = [
            ("plan (dry run)", f"{m['plan_s']:.2f} s", m["summary"]),
            ("plan peak RSS", f"{m['plan_rss_mb']:.0f} MB", "ru_maxrss of the child process after plan"),
            ("apply", f"{m['apply_s']:.2f} s", f"{m['deletions']} paths, {m['dirs_removed']} empty dirs"),
            ("second plan", f"{m['replan_s']:.2f} s", f"{m['replan_deletions']} deletions (must be 0)"),
            (
                "verify",
                f"{m['verify_s']:.2f} s",
                f"ok={m['verify_ok']}, {m['blobs_after']} blobs, {mb:.1f} MiB, {mb / m['verify_s']:.0f} MiB/s "
                f"{m['verify_problems'] or ''}",
            ),
            ("cat baseline", f"{cat_s:.2f} s", f"{len(files)} files, {mb / cat_s:.0f} MiB/s"),
            ("peak RSS", f"{m['peak_rss_mb']:.0f} MB", "whole child: plan + apply + verify"),
        ]
        if args.big_mib:
            v_s, c_s, s_s, n = big_blobs(tmp, args.big_mib, args.workers)
            mib = n / 2**20
            rows.append(
                (
                    "verify big",
                    f"{v_s:.2f} s",
                    f"{mib:.0f} MiB in 64 MiB blobs, {mib / v_s:.0f} MiB/s "
                    f"({args.workers} workers); cat {mib / c_s:.0f}, sha256sum {mib / s_s:.0f} MiB/s",
                )
            )
        for name, value, note in rows:
            print(f"{name:<15} {value:>10}   {note}")
        return 0 if m["replan_deletions"] == 0 and m["verify_ok"] else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
