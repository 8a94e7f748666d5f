import subprocess
import sys
import time

import pytest

from layover.adapters.lock import work_dir_lock
from layover.errors import LockedError

HOLDER = """
import sys, time
from pathlib import Path
from layover.adapters.lock import work_dir_lock
with work_dir_lock(Path(sys.argv[1]), "nightly-2026-11-28 (abc)", run_id="abc"):
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def hold(tmp_path):
    """Start another process holding the lock for `seconds`; killed at teardown."""
    procs = []

    def start(seconds: float) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "lock"), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait(10)


def test_second_run_fails_at_once_naming_the_holder(tmp_path, hold):
    proc = hold(30)
    t0 = time.monotonic()
    with pytest.raises(LockedError) as info, work_dir_lock(tmp_path / "lock", "manual"):
        pass
    assert time.monotonic() - t0 < 2
    assert "nightly-2026-11-28 (abc)" in str(info.value) and f"pid {proc.pid}" in str(info.value)


def test_second_run_waits_for_the_holder(tmp_path, hold):
    hold(1.0)
    t0 = time.monotonic()
    with work_dir_lock(tmp_path / "lock", "manual", wait_seconds=20):
        waited = time.monotonic() - t0
    assert 0.3 < waited < 20


def test_killed_holder_never_blocks(tmp_path, hold):
    proc = hold(30)
    proc.kill()
    proc.wait(10)
    with work_dir_lock(tmp_path / "lock", "next", wait_seconds=0) as held:
        assert '"run": "next"' in (tmp_path / "lock").read_text()
    # what the dead holder wrote is handed to the next holder (to mark its run crashed)
    assert held.dead is not None
    assert (held.dead.run_id, held.dead.pid) == ("abc", proc.pid)


def test_a_holder_that_lets_go_leaves_no_description(tmp_path, hold):
    hold(0.2).wait(10)
    assert (tmp_path / "lock").read_text() == ""
    with work_dir_lock(tmp_path / "lock", "next") as held:
        assert held.dead is None
    with pytest.raises(RuntimeError), work_dir_lock(tmp_path / "lock", "failing"):
        raise RuntimeError("a failed run lets go too")
    with work_dir_lock(tmp_path / "lock", "after") as held:
        assert held.dead is None
