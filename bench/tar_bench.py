"""Benchmark the release tarball writer's data paths on a loop-mounted XFS with reflink.

    sudo .venv/bin/python bench/tar_bench.py [--gib 1.5] [--runs 2] [--dir /var/tmp]

Builds a registry-like tree (blobs of 1-120 MiB plus thousands of small link files) on a fresh
sparse XFS (`mkfs.xfs -m reflink=1`), then times, each including fsync:
  clone      write_tarball, default paths (FICLONERANGE + threaded sha256 of the sources)
  kernel     write_tarball, copy_file_range
  buffered   write_tarball, pread/pwrite
  gnu-tar    tar --format=pax --sort=name ... -cf, then sync (no checksum)
and the alternative hashing strategy: sha256 by re-reading the finished cloned tarball.
Page cache is left warm (this machine is shared: no drop_caches). Everything is unmounted and
detached at the end, even on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layover.adapters.tar_writer import DataPath, PlainTree, write_tarball

V2 = "docker/registry/v2"


def run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


def build_tree(root: Path, total: int, seed: int = 1) -> tuple[int, int]:
    rng = random.Random(seed)
    chunk = rng.randbytes(1 << 20)
    written = files = 0
    n = 0
    while written < total:
        size = min(rng.randint(1 << 20, 120 << 20) + rng.randint(0, 4095), total - written)
        hex_ = hashlib.sha256(f"{seed}-{n}".encode()).hexdigest()
        d = root / V2 / "blobs/sha256" / hex_[:2] / hex_
        d.mkdir(parents=True)
        with open(d / "data", "wb") as f:
            left = size
            prefix = n.to_bytes(8, "big")  # blobs differ from one another
            f.write(prefix)
            left -= 8
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        for repo in (f"team{n % 7}/app{n % 31}", "base/os"):
            link = root / V2 / "repositories" / repo / "_layers/sha256" / hex_ / "link"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.write_bytes(f"sha256:{hex_}".encode())
            files += 1
        written += size
        files += 1
        n += 1
    for i in range(3000):  # revision links: many tiny files, as a real package has
        hex_ = hashlib.sha256(f"rev-{i}".encode()).hexdigest()
        link = root / V2 / f"repositories/team{i % 7}/app{i % 31}/_manifests/revisions/sha256/{hex_}/link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_bytes(f"sha256:{hex_}".encode())
        files += 1
    return written, files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.5)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="layover-tar-bench-", dir=args.dir))
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    loop, mounted = "", False
    try:
        with open(image, "wb") as f:
            f.truncate(int(args.gib * 3 + 2) << 30)
        run("mkfs.xfs", "-q", "-m", "reflink=1", image)
        loop = run("losetup", "--find", "--show", image).strip()
        run("mount", loop, mnt)
        mounted = True
        t = time.perf_counter()
        data, files = build_tree(mnt / "src", int(args.gib * (1 << 30)))
        os.sync()
        print(f"tree: {data / 2**30:.2f} GiB in {files} files, built in {time.perf_counter() - t:.1f} s")

        results: dict[str, list[float]] = {}
        digests: set[str] = set()
        variants = {
            "clone": (DataPath.CLONE, DataPath.KERNEL_COPY, DataPath.BUFFERED),
            "kernel": (DataPath.KERNEL_COPY, DataPath.BUFFERED),
            "buffered": (DataPath.BUFFERED,),
        }
        for _ in range(args.runs):
            for name, paths in variants.items():
                out = mnt / f"{name}.tar"
                res = write_tarball(PlainTree(mnt / "src"), out, data_paths=paths)
                results.setdefault(name, []).append(res.seconds)
                digests.add(res.sha256)
                print(
                    f"  {name:9s} {res.seconds:6.2f} s  cloned={res.bytes_cloned >> 20} MiB "
                    f"kernel={res.bytes_kernel_copied >> 20} MiB user={res.bytes_user_copied >> 20} MiB"
                )
                if name == "clone":
                    t = time.perf_counter()
                    assert sha256_file(out) == res.sha256
                    results.setdefault("re-read sha256 of cloned tar", []).append(time.perf_counter() - t)
                out.unlink()
                out.with_name(out.name + ".sha256").unlink()
                os.sync()
            t = time.perf_counter()
            gnu = mnt / "gnu.tar"
            run(
                "tar",
                "--format=pax",
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-cf",
                gnu,
                "-C",
                mnt / "src",
                "docker",
            )
            fd = os.open(gnu, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            results.setdefault("gnu-tar", []).append(time.perf_counter() - t)
            gnu.unlink()
            os.sync()
        assert len(digests) == 1, f"data paths disagree: {digests}"
        print(
            f"\nbest of {args.runs} ({data / 2**30:.2f} GiB, {files} files, sha256 {digests.pop()[:16]}...):"
        )
        for name, secs in results.items():
            print(f"  {name:32s} {min(secs):6.2f} s")
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
