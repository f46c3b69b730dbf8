"""Issue 3, item 4: kills and the crash-restart cycle on a standby.

* kill -9 of the walreceiver while streaming, then of the startup process in
  the middle of a restore: the postmaster runs the crash-restart cycle and the
  standby catches up with nothing lost or applied twice;
* kill -9 of the postmaster: every child is gone within 2 s and the next start
  cleans up;
* a refused connection ends the walreceiver with status 1 and no crash-restart.
"""
from __future__ import annotations

import os
import time

import psutil
import pytest

from tests.cluster import shm_objects, wait_for
from tests.invariants import ReplayWatch, check_data_equal, check_segments_identical, wait_streaming
from tests.standby_helpers import COORDINATIONS, make_primary, wait_archived, write_rows
from utils.inject import release


@pytest.mark.timeout(240)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_kill_walreceiver_then_startup_mid_restore(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive)
    standby.start(wait_ready=False, inject="before_restore:pause")
    # The first restore is held at the injection point: kill the startup there.
    wait_for(lambda: standby.events("inject_paused"), 30, "the startup to pause before a restore")
    watch = ReplayWatch(standby)
    # The process that paused there: the startup, or the walreceiver under walreceiver_restores.
    victim = psutil.Process(standby.events("inject_paused")[0]["pid"])
    victim.kill()
    wait_for(lambda: standby.events("crash_restart"), 30, "crash-restart after the startup was killed")
    release(standby.datadir, "before_restore")
    wait_streaming(standby, 60)
    write_rows(primary, 100, 200)
    check_data_equal(primary, standby)
    watch.sample()

    # Now the walreceiver, while streaming.
    restarts = len(standby.events("crash_restart"))
    pid = standby.kill9("walreceiver")
    wait_for(lambda: len(standby.events("crash_restart")) > restarts, 30, "crash-restart after the walreceiver was killed")
    exits = [e for e in standby.events("child_exit") if e["child_pid"] == pid]
    assert exits and exits[0]["signal"] == 9
    write_rows(primary, 300, 200, switch_every=100)
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    watch.sample()
    wait_archived(primary)
    check_segments_identical(standby, archive, os.path.join(primary.datadir, "pg_wal"))
    log = standby.log_text()
    assert "terminated by signal 9" in log and "all server processes terminated; reinitializing" in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_kill_postmaster_children_follow(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, archive=archive)
    wait_streaming(standby, 60)
    children = [p for p in standby.processes() if not " ".join(p.cmdline()).startswith("walswitch: postmaster")]
    assert {c.cmdline()[0].split()[1] for c in children} >= {"startup", "walreceiver"}
    standby.kill9("postmaster")
    t0 = time.monotonic()
    # The bound is wait_procs' timeout: nothing may be alive after it.  (A second check of the elapsed
    # time only measured wait_procs' own overhead when the last child left right at the bound.)
    gone, alive = psutil.wait_procs(children, timeout=2.0)
    assert not alive, f"children outlived the postmaster by {time.monotonic() - t0:.2f} s: " \
                      f"{[p.cmdline() for p in alive]}"
    assert shm_objects(standby.datadir), "expected the killed server's shared memory to be left for cleanup"
    standby.start(wait_ready=False)
    wait_streaming(standby, 60)
    # The new server made its own objects; none of the old ones remains (same names, recreated).
    write_rows(primary, 0, 50)
    check_data_equal(primary, standby)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_refused_connection_is_a_normal_exit(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive)
    primary.stop("fast")
    standby.start(wait_ready=False)
    standby.wait_log("could not connect to the primary server", 30)
    if coordination == "stop_walreceiver":
        wait_for(lambda: [e for e in standby.events("child_exit") if e["child"] == "walreceiver"], 30,
                 "a walreceiver to exit")
        ex = [e for e in standby.events("child_exit") if e["child"] == "walreceiver"][0]
        assert ex["code"] == 1 and ex["signal"] is None
    else:
        # These approaches keep their walreceiver: it retries (or restores) instead of exiting.
        assert not [e for e in standby.events("child_exit") if e["child"] == "walreceiver"]
    assert not standby.events("crash") and not standby.events("crash_restart")
    assert standby.is_running()
