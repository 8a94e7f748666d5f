"""Measure one runner: a child process tree, timed until its output is synced to disk.

What each number means (also printed under every report):
- wall_s: from fork until the runner exited AND `sync` returned (the tarball is on disk).
- cpu_s: user+sys of the runner and every descendant it waited for (os.wait4 rusage).
- service_cpu_s: CPU the runner caused outside its own tree: dockerd plus every container
  (the docker cgroup's cpu.stat, which keeps the usage of removed containers). Device-wide,
  so other work on the machine leaks in; run the bench on a quiet machine.
- peak_rss_mb: ru_maxrss from wait4: the largest single process of the runner's tree.
- written_mb: growth (du) of the dirs the runner writes: its work dir, its output dir, its
  registry storage, plus /var/lib/docker for the docker baseline.
- disk_written_mb: sectors written on the block devices (/proc/diskstats) across the run,
  after sync: device-wide, includes deletes' metadata and journal.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    cpu_s: float
    service_cpu_s: float
    peak_rss_mb: float
    written_mb: float
    disk_written_mb: float
    tarball_mb: float
    exit_code: int


def du_bytes(paths: Sequence[Path]) -> int:
    """Allocated bytes under paths (like `du -s`), hard links counted once, mounts not crossed."""
    total, seen = 0, set()
    for top in paths:
        if not top.exists():
            continue
        dev = top.stat().st_dev
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames + dirnames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
            dirnames[:] = [d for d in dirnames if _dev(os.path.join(dirpath, d)) == dev]
    return total


def _dev(path: str) -> int | None:
    try:
        return os.lstat(path).st_dev
    except FileNotFoundError:  # removed while we walk (dockerd works concurrently)
        return None


def disk_sectors_written() -> int:
    """Sectors written on whole disks (not partitions) per /proc/diskstats."""
    total = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        name = f[2]
        if name.startswith(("loop", "ram", "dm-", "sr")) or not Path(f"/sys/block/{name}").exists():
            continue
        total += int(f[9])
    return total


def service_cpu_seconds() -> float:
    """dockerd's CPU plus all containers' (docker cgroup; removed containers stay counted)."""
    total = 0.0
    for cg in ("/sys/fs/cgroup/docker/cpu.stat", "/sys/fs/cgroup/system.slice/cpu.stat"):
        p = Path(cg)
        if p.exists():
            for line in p.read_text().splitlines():
                if line.startswith("usage_usec"):
                    total += int(line.split()[1]) / 1e6
            break
    else:  # cgroup v1: cpuacct charges every ancestor, so this keeps removed containers too
        p = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")
        if p.exists():
            total += int(p.read_text()) / 1e9
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() not in ("dockerd", "containerd"):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    write_dirs: Sequence[Path] = (),
    tarball: Path | None = None,
    log: Path | None = None,
) -> Measurement:
    """Run argv (no shell), wait4 it, sync, and measure. Output goes to `log`."""
    du_before = du_bytes(write_dirs)
    svc_before = service_cpu_seconds()
    sectors_before = disk_sectors_written()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in the finally below
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        os.sync()  # the tarball and every written byte on disk before the clock stops
        wall = time.monotonic() - t0
    finally:
        if log:
            out.close()
    os.sync()
    svc = service_cpu_seconds() - svc_before
    sectors = disk_sectors_written() - sectors_before
    return Measurement(
        wall_s=wall,
        cpu_s=ru.ru_utime + ru.ru_stime,
        service_cpu_s=svc,
        peak_rss_mb=ru.ru_maxrss / 1024,
        written_mb=(du_bytes(write_dirs) - du_before) / 1e6,
        disk_written_mb=sectors * 512 / 1e6,
        tarball_mb=(tarball.stat().st_size / 1e6) if tarball and tarball.exists() else 0.0,
        exit_code=proc.returncode,
    )
