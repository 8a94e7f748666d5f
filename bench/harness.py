"""The benchmark: fixture -> CI registry -> every runner, cold and incremental -> report.

    bench/run.sh [--scale 1.0] [--runs 3] [--only cold|incremental]

Per run and scenario every runner starts from a fresh work dir (and, for docker, a daemon
without fixture images). `incremental` first builds release 1 with the same runner (not
timed), then times release 2. Medians over runs are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench import fixture as fixture_mod
from bench import wide
from bench.measure import Measurement, measure
from bench.push import Pusher
from bench.report import render
from layover.adapters.registry import RegistryManager, docker_client
from layover.adapters.registry_image import ensure_registry_image

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv/bin/python")
LAYOVER = str(REPO / ".venv/bin/layover")
RUNNERS = ("docker", "skopeo", "blog-overlay", "layover", "layover-embedded")
SCENARIOS = ("cold", "incremental", "noop")
DEFAULT_SCENARIOS = ("cold", "incremental")


@dataclass(frozen=True)
class Row:
    scenario: str
    runner: str
    run: int
    m: Measurement
    log: str
    stages: dict[str, float] | None = None  # layover's own stage seconds, from its .json


def _stage_seconds(tarball: Path) -> dict[str, float] | None:
    """The stage table of the report layover writes beside its tarball."""
    try:
        report = json.loads(tarball.with_name(tarball.name + ".json").read_text())
        return {s["name"]: float(s["seconds"]) for s in report["stages"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.scope = f"bench-{uuid.uuid4().hex[:8]}"
        self.root = Path(args.work_root).resolve() / self.scope
        self.cache = Path(args.cache_dir).resolve()
        self.rows: list[Row] = []
        self.tar_mb: dict[str, float] = {}
        self.prefect: subprocess.Popen | None = None
        self.prefect_env: dict[str, str] = {}
        self.client = docker_client()
        self.mgr = RegistryManager(self.client, ensure_registry_image(self.client), self.scope)

    # --- setup ---------------------------------------------------------------------------
    def ci_registry(self) -> str:
        """Start the CI registry on a cached storage dir, pushing the fixture if not done yet."""
        t = time.monotonic()
        if self.a.fixture == "wide":
            self.fx = wide.build(self.a.images, self.cache)
        else:
            self.fx = fixture_mod.build(self.a.scale, self.cache, Path(self.a.deb_dir))
        print(f"fixture: {self.fx.key}, built in {time.monotonic() - t:.0f}s", flush=True)
        storage = self.cache / f"ci-storage-{self.fx.key}"
        stamp = storage / ".pushed"
        want = str(sorted(str(i.manifest.digest) for i in self.fx.all_images()))
        if not (stamp.exists() and stamp.read_text() == want):
            shutil.rmtree(storage, ignore_errors=True)
            storage.mkdir(parents=True)
            reg = self.mgr.start("ci", storage)
            p = Pusher(reg.host)
            try:
                t = time.monotonic()
                n = p.push_fixture(self.fx)
                print(f"pushed {n} images to the CI registry in {time.monotonic() - t:.0f}s", flush=True)
            finally:
                p.close()
                self.mgr.stop(reg)
            stamp.write_text(want)
        self.ci = self.mgr.start("ci", storage, read_only=True)
        self.lists = {}
        for n in (1, 2):
            path = self.root / f"release{n}.list"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.fx.list_text(n))
            self.lists[n] = path
        return self.ci.host

    def start_prefect(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=self.root))
        env = dict(
            os.environ, PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false"
        )
        env.pop("PREFECT_API_URL", None)
        from layover.adapters.registry import free_port

        port = free_port()
        self.prefect = subprocess.Popen(
            [str(REPO / ".venv/bin/prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=open(self.root / "prefect-server.log", "wb"),  # noqa: SIM115 - the server child keeps it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.prefect.poll() is not None:
                raise SystemExit(f"prefect server exited; see {self.root}/prefect-server.log")
            time.sleep(1)
        else:
            raise SystemExit("prefect server did not answer /api/health within 180 s")
        self.prefect_env = dict(env, PREFECT_API_URL=url)
        print(f"prefect server at {url}", flush=True)

    # --- running -------------------------------------------------------------------------
    def argv(self, runner: str, release: int, work: Path, out: Path) -> tuple[list[str], dict]:
        if runner.startswith("layover"):
            argv = [
                LAYOVER,
                "run",
                "--images",
                str(self.lists[release]),
                "--source",
                self.ci.host,
                "--work-dir",
                str(work / "layover"),
                "--output",
                str(out),
                "--no-src-tls-verify",
            ]
            if runner == "layover":
                if self.a.profile:  # sampled stacks of layover's process tree, one file per run
                    out = Path(self.a.profile) / f"{work.name}-release{release}.txt"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    argv = [
                        str(REPO / ".venv/bin/py-spy"),
                        "record",
                        "--format",
                        "raw",
                        "--rate",
                        "250",
                        "--subprocesses",
                        "--nonblocking",
                        "-o",
                        str(out),
                        "--",
                        *argv,
                    ]
                return argv, self.prefect_env
            home = work / "prefect-home"  # embedded server: its own home, no API URL
            home.mkdir(parents=True, exist_ok=True)
            env = dict(
                os.environ,
                PREFECT_HOME=str(home),
                DO_NOT_TRACK="1",
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
            )
            env.pop("PREFECT_API_URL", None)
            return argv, env
        return (
            [
                PY,
                "-m",
                "bench.baselines",
                runner,
                "--images",
                str(self.lists[release]),
                "--source",
                self.ci.host,
                "--work-dir",
                str(work),
                "--output",
                str(out),
                "--scope",
                f"{self.scope}-{runner}",
            ],
            dict(os.environ, PYTHONPATH=str(REPO)),
        )

    def one(self, scenario: str, runner: str, run: int) -> None:
        work = self.root / f"{scenario}-{runner}-{run}"
        outdir = work / "out"
        outdir.mkdir(parents=True, exist_ok=True)
        if runner == "docker":
            self.clean_docker_images()
        log = work / "runner.log"
        preps = {"cold": (), "incremental": (1,), "noop": (1, 2)}[scenario]
        if runner == "skopeo":  # keeps no state
            preps = ()
        for n in preps:
            argv, env = self.argv(runner, n, work, outdir / f"release{n}.tar")
            prep = measure(argv, env=env, log=log)
            if prep.exit_code != 0:
                kept = self.root / "logs" / f"{scenario}-{runner}-{run}-prep.log"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, kept)
                log = kept
                self.drop_work(work)
                print(f"  {runner}: release {n} (prep) FAILED, see {log}", flush=True)
                self.rows.append(Row(scenario, runner, run, prep, str(log)))
                return
        release = 1 if scenario == "cold" else 2
        tarball = outdir / f"release{release}-measured.tar"
        argv, env = self.argv(runner, release, work, tarball)
        dirs = [work]
        if runner == "docker":
            dirs.append(Path("/var/lib/docker"))
        m = measure(argv, env=env, write_dirs=dirs, tarball=tarball, log=log)
        if m.exit_code != 0 or self.a.keep:  # keep the log beyond the work dir's removal
            kept = self.root / "logs" / f"{scenario}-{runner}-{run}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, kept)
            log = kept
        stages = _stage_seconds(tarball) if runner.startswith("layover") and m.exit_code == 0 else None
        self.rows.append(Row(scenario, runner, run, m, str(log), stages))
        state = "ok" if m.exit_code == 0 else f"FAILED (exit {m.exit_code}, see {log})"
        print(f"  {scenario} {runner} run {run}: {m.wall_s:.1f}s {state}", flush=True)
        # the floor writes a file the size of this release's tarball: layover's if it ran
        if m.exit_code == 0 and m.tarball_mb and (runner == "layover" or scenario not in self.tar_mb):
            self.tar_mb[scenario] = m.tarball_mb
        if not self.a.keep:
            self.drop_work(work)

    def floor(self, scenario: str, run: int) -> None:
        """New blobs streamed once from the CI registry to disk, plus dd of a tarball-sized file."""
        work = self.root / f"{scenario}-floor-{run}"
        work.mkdir(parents=True, exist_ok=True)
        want = self.fx.blob_digests(1)
        if scenario == "incremental":
            want = self.fx.blob_digests(2) - self.fx.blob_digests(1)
        elif scenario == "noop":
            want = frozenset()
        where: dict[str, tuple[str, str]] = {}
        for img in self.fx.all_images():
            for d in map(str, [img.manifest.digest, *(c.digest for c in img.children)]):
                where.setdefault(d, (img.repository, "manifest"))
            for d in (b.digest for b in img.blobs):
                where.setdefault(d, (img.repository, "blob"))
        spec = work / "blobs.txt"
        spec.write_text("".join(f"{where[d][0]} {d} {where[d][1]}\n" for d in sorted(want)))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        copy = measure(
            [PY, "-m", "bench.floor", self.ci.host, str(spec), str(work / "blobs")],
            env=env,
            write_dirs=[work],
            log=work / "floor.log",
        )
        size_mb = max(1, round(self.tar_mb.get(scenario, 0)))
        dd = measure(
            [
                "dd",
                "if=/dev/zero",
                f"of={work / 'tarball'}",
                "bs=1MB",
                f"count={size_mb}",
                "conv=fsync",
                "status=none",
            ],
            write_dirs=[work],
            tarball=work / "tarball",
        )
        m = Measurement(
            copy.wall_s + dd.wall_s,
            copy.cpu_s + dd.cpu_s,
            copy.service_cpu_s + dd.service_cpu_s,
            max(copy.peak_rss_mb, dd.peak_rss_mb),
            copy.written_mb + dd.written_mb,
            copy.disk_written_mb + dd.disk_written_mb,
            dd.tarball_mb,
            copy.exit_code or dd.exit_code,
        )
        log = work / "floor.log"
        if m.exit_code != 0:
            kept = self.root / "logs" / f"{scenario}-floor-{run}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, kept)
            log = kept
        self.rows.append(Row(scenario, "floor", run, m, str(log)))
        print(f"  {scenario} floor run {run}: {m.wall_s:.1f}s", flush=True)
        self.drop_work(work)

    def prefect_alone(self, scenario: str, run: int) -> None:
        """Import Prefect, one flow run with one task against the standing server, exit."""
        work = self.root / f"{scenario}-prefect-{run}"
        work.mkdir(parents=True, exist_ok=True)
        m = measure(
            [PY, "-m", "bench.empty_flow"],
            env=dict(self.prefect_env, PYTHONPATH=str(REPO)),
            log=work / "empty.log",
        )
        self.rows.append(Row(scenario, "prefect-alone", run, m, str(work / "empty.log")))
        print(f"  {scenario} prefect-alone run {run}: {m.wall_s:.1f}s", flush=True)
        self.drop_work(work)

    # --- cleanup -------------------------------------------------------------------------
    def clean_docker_images(self) -> None:
        """Remove every image the docker baseline pulled from our 127.0.0.1 registries."""
        ci = getattr(self, "ci", None)
        if ci is None:
            return
        # only ours: other users of this engine keep their images
        for img in self.client.images.list():
            if any(t.startswith(f"{ci.host}/") for t in img.tags):
                self.client.images.remove(img.id, force=True)

    def drop_work(self, work: Path) -> None:
        merged = work / "layover"  # layover/blog leave no mount on success; be sure anyway
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mnt = line.split()[4]
            if mnt.startswith(str(work) + "/") or mnt.startswith(str(merged)):
                subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(work, ignore_errors=True)

    def close(self) -> None:
        if self.prefect and self.prefect.poll() is None:
            os.killpg(self.prefect.pid, signal.SIGTERM)
            try:
                self.prefect.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.prefect.pid, signal.SIGKILL)
        for suffix in ("", *(f"-{r}" for r in RUNNERS)):
            RegistryManager(self.client, self.mgr.image, self.scope + suffix).remove_scope()
        self.mgr.close()  # its registries' config files
        # layover's own registry containers are labelled by layover; remove any it leaked
        try:
            self.clean_docker_images()
        except Exception as e:  # noqa: BLE001 - cleanup must not hide the report
            print(f"warning: could not remove pulled images: {e}", file=sys.stderr)
        if not self.a.keep:
            for p in self.root.glob("*"):
                if p.is_dir() and p.name != "logs":
                    self.drop_work(p)
            if not (self.root / "logs").exists():  # nothing failed: nothing worth keeping
                shutil.rmtree(self.root, ignore_errors=True)


def warm_bytecode(prefix: Path) -> None:
    """Every child imports from a bytecode cache, as an installed layover does (pip compiles at
    install). With PYTHONDONTWRITEBYTECODE set (some shells set it) and a checkout without
    __pycache__, each run compiled layover's ~100 modules again: ~0.15 s of "outside stages"
    that no installed layover pays. The cache is under the cache dir, not in the checkout, and
    is filled here once, so no timed run compiles."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    code = "import layover.cli, flows.release, bench.baselines, bench.empty_flow, bench.floor"
    subprocess.run([PY, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.sh")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=SCENARIOS, help="one scenario (noop: release 2 built again)")
    ap.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated subset of " + ",".join(SCENARIOS),
    )
    ap.add_argument(
        "--fixture",
        choices=("debs", "wide"),
        default="debs",
        help="debs: 64 images of real package files (--scale); wide: --images small images",
    )
    ap.add_argument("--images", type=int, default=600, help="images in release 1 of the wide fixture")
    ap.add_argument(
        "--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ",".join(RUNNERS)
    )
    ap.add_argument(
        "--cache-dir",
        default="/var/tmp/layover-bench-cache",
        help="fixture blobs and CI registry storage, reused across runs",
    )
    ap.add_argument("--work-root", default="/var/tmp/layover-bench-work")
    ap.add_argument("--deb-dir", default=str(fixture_mod.DEFAULT_DEB_DIR))
    ap.add_argument("--results", default=str(REPO / "bench/results"))
    ap.add_argument("--keep", action="store_true", help="keep work dirs for inspection")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="run layover under py-spy (pip install py-spy) and keep its stacks in DIR",
    )
    a = ap.parse_args(argv)
    runners = [r for r in a.runners.split(",") if r]
    bad = set(runners) - set(RUNNERS)
    if bad:
        ap.error(f"unknown runner(s) {sorted(bad)}; choose from {RUNNERS}")
    scenarios = [a.only] if a.only else [s for s in a.scenarios.split(",") if s]
    if set(scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenario(s) {sorted(set(scenarios) - set(SCENARIOS))}; choose from {SCENARIOS}")
    warm_bytecode(Path(a.cache_dir).resolve() / "pycache")
    b = Bench(a)
    started = time.monotonic()
    try:
        b.ci_registry()
        if "layover" in runners:
            b.start_prefect()
        for scenario in scenarios:
            for run in range(1, a.runs + 1):
                for runner in runners:  # interleaved, so drift hits every runner alike
                    b.one(scenario, runner, run)
                b.floor(scenario, run)
                if "layover" in runners:
                    b.prefect_alone(scenario, run)
    finally:
        b.close()
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": a.scale,
        "fixture_name": b.fx.key,
        "runs": a.runs,
        "scenarios": scenarios,
        "runners": runners,
        "fixture": {
            n: {"images": len(b.fx.release(n)), "blob_mb": b.fx.blob_bytes(b.fx.blob_digests(n)) / 1e6}
            for n in (1, 2)
        },
        "new_blob_mb": b.fx.blob_bytes(b.fx.blob_digests(2) - b.fx.blob_digests(1)) / 1e6,
        "total_s": time.monotonic() - started,
        "cpus": os.cpu_count(),
        "scope": b.scope,
        "work_root": str(b.root),
    }
    text = render(
        meta,
        [(r.scenario, r.runner, r.m) for r in b.rows],
        stages=[(r.scenario, r.runner, r.stages) for r in b.rows if r.stages],
    )
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "rows": [
                    dict(
                        asdict(r.m),
                        scenario=r.scenario,
                        runner=r.runner,
                        run=r.run,
                        log=r.log,
                        stages=r.stages,
                    )
                    for r in b.rows
                ],
            },
            indent=1,
        )
    )
    print(text)
    print(f"written {out / (stem + '.md')}")
    return 0 if all(r.m.exit_code == 0 for r in b.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
