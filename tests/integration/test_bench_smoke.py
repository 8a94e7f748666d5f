"""The benchmark harness end to end at a tiny scale, so it cannot rot.

Runs `bench/run.sh --scale 0.005 --runs 1` (every runner, both scenarios) and checks that the
report has every row with numbers, that every runner succeeded, and that nothing is left behind.
The fixture cache (/var/tmp/layover-bench-cache, or LAYOVER_BENCH_CACHE) is kept on purpose:
it is content-addressed and makes the next run ~40 s faster.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROW_LABELS = (
    "| docker |",
    "| skopeo |",
    "| blog-overlay |",
    "| layover (standing Prefect server) |",
    "| layover (embedded server) |",
    "| floor (new blobs once + dd tarball) |",
    "| Prefect alone (import, 1 flow + 1 task, exit) |",
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_runs_every_runner_and_reports_every_row(
    docker_client, registry_image, skopeo_bin, require_root_overlay, tmp_path
):
    results, work_root = tmp_path / "results", tmp_path / "work"
    cache = os.environ.get("LAYOVER_BENCH_CACHE", "/var/tmp/layover-bench-cache")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run(
        [
            str(REPO / "bench/run.sh"),
            "--scale",
            "0.005",
            "--runs",
            "1",
            "--results",
            str(results),
            "--work-root",
            str(work_root),
            "--cache-dir",
            cache,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    try:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        [md] = results.glob("*.md")
        [js] = results.glob("*.json")
        text = md.read_text()
        data = json.loads(js.read_text())
        for heading in ("## Cold release", "## Incremental release"):
            assert text.count(heading) == 1, heading
        lines = text.splitlines()
        for label in ROW_LABELS:
            rows = sum(line.startswith(label) for line in lines)
            assert rows == 2, f"{label} must start one row per scenario, found {rows}"
        assert "FAILED" not in text
        # layover's own stage table and the limit line, once per scenario
        assert text.count("Layover's stages") == 2 and text.count("layover / limit:") == 2
        assert sum(line.startswith("| archive sync |") for line in lines) == 2
        runners = {
            "docker",
            "skopeo",
            "blog-overlay",
            "layover",
            "layover-embedded",
            "floor",
            "prefect-alone",
        }
        cells = {(r["scenario"], r["runner"]) for r in data["rows"]}
        assert cells == {(s, r) for s in ("cold", "incremental") for r in runners}
        for r in data["rows"]:
            assert r["exit_code"] == 0 and r["wall_s"] > 0, r
            if r["runner"] != "prefect-alone":  # writes no tarball
                assert r["tarball_mb"] > 0, r
            if r["runner"].startswith("layover"):
                assert r["stages"] and set(r["stages"]) >= {"archive sync", "tarball"}, r
        assert data["meta"]["fixture"]["1"]["images"] == 64
        assert 0 < data["meta"]["new_blob_mb"] < data["meta"]["fixture"]["2"]["blob_mb"]
        # nothing left behind: containers of this bench's scopes, mounts, work dirs
        scope = data["meta"]["scope"]
        left = [
            c.name
            for c in docker_client.containers.list(all=True)
            if c.labels.get("layover.scope", "").startswith(scope)
        ]
        assert left == []
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(work_root) not in mounts
        assert not Path(data["meta"]["work_root"]).exists()
    finally:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if str(tmp_path) in line.split()[4]:
                subprocess.run(["umount", "-l", line.split()[4]], check=False)
