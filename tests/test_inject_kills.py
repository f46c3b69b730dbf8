"""Issue 4, item 5: a process killed at each injection point, for each approach.

One standby per approach lives through the whole sequence: each point is armed
with ``kill`` in turn (``utils.inject.arm``), the activity that reaches it
is driven (archive recovery for the restore points, writes on the primary for
the walreceiver's), the killed process starts the crash-restart cycle, and
after each the standby must catch up with the invariants holding.
"""
from __future__ import annotations

import os

import pytest

from tests.cluster import wait_for
from tests.invariants import ReplayWatch, check_data_equal, check_segments_identical, wait_streaming
from tests.standby_helpers import COORDINATIONS, make_primary, wait_archived, write_rows
from utils.inject import arm

RESTORE_POINTS = ["before_restore", "before_install", "after_restore", "walreceiver_start"]
STREAM_POINTS = ["before_write", "after_write", "before_flush", "after_flush"]


def fired(standby, point: str) -> list[dict]:
    return [e for e in standby.events("inject") if e["point"] == point]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_kill_at_each_injection_point(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, start=False, archive=archive, standby_wal_coordination=coordination,
                            wal_retrieve_retry_interval="500ms")
    # Plenty of archived WAL, so archive recovery lasts through the restore points.
    write_rows(primary, 0, 1200, switch_every=100)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    watch = ReplayWatch(standby)
    restore_points = [p for p in RESTORE_POINTS if not (p == "before_install" and coordination == "walreceiver_restores")]
    # The restore points are armed together: each fires once, at its first occurrence,
    # and the next one is reached after the crash-restart the previous caused.
    standby.start(wait_ready=False, inject=",".join(f"{p}:kill" for p in restore_points))
    n = 1000_000
    for point in restore_points + STREAM_POINTS:
        if point in STREAM_POINTS:
            arm(standby.datadir, point, "kill")
        restarts = len([e for e in standby.events("crash_restart") if not fired(standby, point)
                        or e["mono"] < fired(standby, point)[0]["mono"]])
        if point in STREAM_POINTS:
            write_rows(primary, n, 30, prefix=f"{point}-")
            n += 30
        wait_for(lambda: fired(standby, point), 60, f"injection point {point} to be reached")
        wait_for(lambda: len(standby.events("crash_restart")) > restarts, 30, f"crash-restart after {point}")
        ev = fired(standby, point)[-1]
        exits = wait_for(lambda: [e for e in standby.events("child_exit") if e["child_pid"] == ev["pid"]], 10,
                         f"the exit of the process killed at {point}")
        assert exits[-1]["signal"] == 9, (point, exits)
        watch.sample()
    wait_streaming(standby, 60)
    write_rows(primary, n, 50)
    check_data_equal(primary, standby)
    watch.sample()
    wait_archived(primary)
    check_segments_identical(standby, archive, os.path.join(primary.datadir, "pg_wal"))
    assert "Traceback" not in standby.log_text()
