"""Render the benchmark's markdown report: medians per scenario and runner."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.measure import Measurement

ROW_ORDER = ("docker", "skopeo", "blog-overlay", "layover", "layover-embedded", "floor", "prefect-alone")
LABELS = {
    "layover": "layover (standing Prefect server)",
    "layover-embedded": "layover (embedded server)",
    "floor": "floor (new blobs once + dd tarball)",
    "prefect-alone": "Prefect alone (import, 1 flow + 1 task, exit)",
}
COLUMNS = ("wall s", "CPU s", "svc CPU s", "written MB", "peak RSS MB", "tarball MB", "× layover", "runs")
FIELDS = ("wall_s", "cpu_s", "service_cpu_s", "written_mb", "peak_rss_mb", "tarball_mb")


def _median(ms: Sequence[Measurement], field: str) -> float:
    return statistics.median(getattr(m, field) for m in ms)


def _stage_table(
    scenario: str, ok: dict[str, list[Measurement]], stages: Sequence[tuple[str, str, dict[str, float]]]
) -> list[str]:
    """Median seconds per layover stage, and what no stage accounts for (start, finish)."""
    runners = [
        r
        for r in ("layover", "layover-embedded")
        if ok.get(r) and any(s == scenario and rr == r for s, rr, _ in stages)
    ]
    if not runners:
        return []
    names: list[str] = []
    for s, _rr, st in stages:
        names += [n for n in st if s == scenario and n not in names]
    out = [
        "Layover's stages (median s; outside stages: Python and Prefect start, registry",
        "starts/stops, finishing the flow run):",
        "",
        "| stage | " + " | ".join(LABELS.get(r, r) for r in runners) + " |",
        "|---|" + "---:|" * len(runners),
    ]
    per = {r: [st for s, rr, st in stages if s == scenario and rr == r] for r in runners}
    for n in names:
        out.append(
            f"| {n} | "
            + " | ".join(f"{statistics.median(st.get(n, 0.0) for st in per[r]):.2f}" for r in runners)
            + " |"
        )
    outside = [
        f"{_median(ok[r], 'wall_s') - statistics.median(sum(st.values()) for st in per[r]):.2f}"
        for r in runners
    ]
    out += ["| outside stages | " + " | ".join(outside) + " |", ""]
    return out


def _per_image(
    meta: dict,
    rows: Sequence[tuple[str, str, Measurement]],
    stages: Sequence[tuple[str, str, dict[str, float]]],
) -> list[str]:
    """Cost per image: what each image that needs no copy costs layover (a rebuild of release 2,
    minus the tarball stage and Prefect alone), and CPU per copied image against serial skopeo."""

    def med(scenario: str, runner: str, field: str) -> float | None:
        ms = [m for s, r, m in rows if s == scenario and r == runner and m.exit_code == 0]
        return _median(ms, field) if ms else None

    out: list[str] = []
    n1, n2 = meta["fixture"][1]["images"], meta["fixture"][2]["images"]
    wall, alone = med("noop", "layover", "wall_s"), med("noop", "prefect-alone", "wall_s")
    tar = [st.get("tarball", 0.0) for s, r, st in stages if s == "noop" and r == "layover"]
    if wall is not None and alone is not None and tar:
        own = (wall - statistics.median(tar) - alone) / n2 * 1000
        out.append(
            f"- layover's own cost per image that needs no copy (release 2 built again: wall "
            f"{wall:.2f} s − tarball stage {statistics.median(tar):.2f} s − Prefect alone "
            f"{alone:.2f} s, / {n2} images): **{own:.1f} ms**"
        )
    lay = [med("cold", "layover", f) for f in ("cpu_s", "service_cpu_s")]
    sko = [med("cold", "skopeo", f) for f in ("cpu_s", "service_cpu_s")]
    if None not in lay and None not in sko:
        per = [v / n1 * 1000 for v in (*lay, *sko)]  # type: ignore[operator]
        out.append(
            f"- CPU per image, cold release (every image copied): layover {per[0]:.1f} ms "
            f"(+ {per[1]:.1f} ms in registries/dockerd) against serial skopeo's {per[2]:.1f} ms "
            f"(+ {per[3]:.1f} ms); layover's includes verify, GC and the tarball"
        )
    return ["## Cost per image", "", *out, ""] if out else []


def render(
    meta: dict,
    rows: Sequence[tuple[str, str, Measurement]],
    stages: Sequence[tuple[str, str, dict[str, float]]] = (),
) -> str:
    fixture = meta.get("fixture_name", "")
    what = f"Fixture {fixture}" if fixture.startswith("wide") else f"Scale {meta['scale']}"
    out = [
        f"# Layover benchmark {meta['date']}",
        "",
        f"{what}, {meta['runs']} run(s) per cell, medians, "
        f"{meta['cpus']} CPUs. Release 1: {meta['fixture'][1]['images']} images, "
        f"{meta['fixture'][1]['blob_mb']:.0f} MB of blobs; release 2: "
        f"{meta['fixture'][2]['images']} images, {meta['new_blob_mb']:.1f} MB of new blobs. "
        f"Whole bench: {meta['total_s']:.0f} s.",
        "",
    ]
    for scenario in meta["scenarios"]:
        title = {
            "cold": "Cold release (empty archive)",
            "incremental": "Incremental release (release 2 after release 1)",
            "noop": "Release 2 built again (no image needs a copy)",
        }[scenario]
        out += [
            f"## {title}",
            "",
            "| runner | " + " | ".join(COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        cell = {r: [m for s, rr, m in rows if s == scenario and rr == r] for r in ROW_ORDER}
        ok = {r: [m for m in ms if m.exit_code == 0] for r, ms in cell.items()}
        base = _median(ok["layover"], "wall_s") if ok["layover"] else None
        for runner in ROW_ORDER:
            if (
                runner not in meta["runners"]
                and runner != "floor"
                and not (runner == "prefect-alone" and cell[runner])
            ):
                continue
            ms, good = cell[runner], ok[runner]
            label = LABELS.get(runner, runner)
            if not good:
                out.append(f"| {label} | FAILED ({len(ms)}/{len(ms)} runs) |" + " |" * (len(COLUMNS) - 1))
                continue
            vals = [f"{_median(good, f):.1f}" for f in FIELDS]
            ratio = f"{_median(good, 'wall_s') / base:.2f}" if base else "n/a"
            runs = f"{len(good)}" + (f" ({len(ms) - len(good)} failed)" if len(good) < len(ms) else "")
            out.append(f"| {label} | " + " | ".join([*vals, ratio, runs]) + " |")
        out.append("")
        if base and ok["floor"] and ok["prefect-alone"]:
            floor = _median(ok["floor"], "wall_s")
            limit = floor + _median(ok["prefect-alone"], "wall_s")
            out += [
                f"Layover / floor: {base / floor:.2f}. Limit for a Prefect-orchestrated run "
                f"(floor + Prefect alone): {limit:.1f} s; layover / limit: {base / limit:.2f}.",
                "",
            ]
        out += _stage_table(scenario, ok, stages)
    out += _per_image(meta, rows, stages)
    out += [
        "## What is measured",
        "",
        "- wall s: from start until the runner exited and `sync` returned (tarball on disk).",
        "- CPU s: user+sys of the runner's process tree (wait4 rusage of the child).",
        "- svc CPU s: dockerd + containerd + all containers (docker cgroup), the work done for the",
        "  runner by registries and the daemon; device-wide, so keep the machine quiet.",
        "- written MB: growth (du) of the runner's work dir, output and registry storage",
        "  (+ /var/lib/docker for docker). Deleted data does not count.",
        "- peak RSS MB: ru_maxrss of the runner's tree: the largest single process.",
        "- × layover: the runner's median wall time divided by layover's (standing server).",
        "- floor: every blob the release needs that is not yet archived, streamed once from the",
        "  CI registry to disk, plus `dd conv=fsync` of a file the size of the last tarball.",
        "- Prefect alone: `python -m bench.empty_flow`, the least any Prefect-run release pays.",
        "- docker's tarball differs in kind: `docker pull` keeps one platform of a multi-arch",
        "  image and `docker push` recompresses layers, so digests change.",
        "",
    ]
    return "\n".join(out)
