"""Summarise py-spy's raw (collapsed) stacks: where a layover run's samples went.

    python -m bench.profile_top FILE [--top 25] [--match TEXT]

Prints the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), as shares of all samples; `--match` counts only stacks that contain TEXT.
"""

from __future__ import annotations

import argparse
import collections
import re

_LINE = re.compile(r"^(.*) (\d+)$")
_LOC = re.compile(r":\d+\)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="")
    a = ap.parse_args()
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(a.file) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m or (a.match and a.match not in m.group(1)):
                continue
            frames = [_LOC.sub(")", fr) for fr in m.group(1).split(";")]
            n = int(m.group(2))
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", incl)):
        print(f"\n{title}:")
        for name, n in counter.most_common(a.top):
            print(f"  {100 * n / max(total, 1):5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
