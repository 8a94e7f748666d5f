import multiprocessing as mp
import os
import signal
import time

import pytest

from layover.adapters.lock import work_dir_lock
from layover.errors import LockedError


def _hold(path, ready, release):
    with work_dir_lock(path, "nightly-2026-11-28 (abc)"):
        ready.set()
        release.wait(30)


@pytest.fixture
def holder(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path / "lock", ready, release))
    proc.start()
    assert ready.wait(10)
    yield proc, release
    release.set()
    proc.join(10)
    if proc.is_alive():
        proc.kill()


def test_second_run_fails_at_once_naming_the_holder(tmp_path, holder):
    proc, _ = holder
    t0 = time.monotonic()
    with pytest.raises(LockedError) as info, work_dir_lock(tmp_path / "lock", "manual"):
        pass
    assert time.monotonic() - t0 < 2
    assert "nightly-2026-11-28 (abc)" in str(info.value) and f"pid {proc.pid}" in str(info.value)


def test_second_run_waits_for_the_holder(tmp_path, holder):
    _, release = holder
    mp.get_context("fork").Process(target=lambda: (time.sleep(0.5), release.set())).start()
    with work_dir_lock(tmp_path / "lock", "manual", wait_seconds=20):
        pass


def test_killed_holder_never_blocks(tmp_path, holder):
    proc, _ = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with work_dir_lock(tmp_path / "lock", "next", wait_seconds=0):
        assert '"run": "next"' in (tmp_path / "lock").read_text()
