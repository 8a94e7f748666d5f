"""The floor's copy half: stream each listed blob once from the CI registry into a file.

    python -m bench.floor HOST:PORT BLOBS_TXT OUT_DIR     (BLOBS_TXT: "repository digest blob|manifest" lines)

Serial and unparallelised on purpose: the floor is the bytes that must move, moved once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.push import Pusher


def main(argv: list[str]) -> int:
    host, spec, out = argv[0], Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    p = Pusher(host)
    lines = [line.split() for line in spec.read_text().splitlines()]
    p.manifest_digests = {d for _, d, kind in lines if kind == "manifest"}
    total = 0
    try:
        for repo, digest, _ in lines:
            with open(out / digest[7:], "wb") as f:
                total += p.get_blob_to(repo, digest, f)
    finally:
        p.close()
    os.sync()
    print(f"floor: {total} bytes in {len(spec.read_text().splitlines())} blobs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
