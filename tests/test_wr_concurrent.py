"""Issue 4, walreceiver side: ``standby_wal_coordination = concurrent``, end to end.

The walreceiver, once started, stays: when the primary goes away it logs
PostgreSQL's FATAL line at LOG level, goes back to STARTING ("reconnecting"),
retries on its own schedule (50 ms doubling to 0.5 s) and streams again when
the primary returns -- the same process throughout.
"""
from __future__ import annotations

import signal

import psutil
import pytest

from tests.cluster import wait_for
from tests.invariants import ReplayWatch, check_data_equal, wait_streaming
from tests.standby_helpers import make_primary, write_rows
from xlog.lsn import parse_lsn

SEG = 1024 * 1024
RETRY_S = 1.0


def walreceiver_exits(node) -> list[dict]:
    return [e for e in node.events("child_exit") if e["child"] == "walreceiver"]


@pytest.mark.timeout(180)
def test_walreceiver_survives_primary_restart(nodes, tmp_path):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100)
    standby = nodes.standby(primary, archive=archive, standby_wal_coordination="concurrent")
    wait_streaming(standby, 60)
    write_rows(primary, 100, 300, switch_every=120)
    check_data_equal(primary, standby)
    watch = ReplayWatch(standby)
    watch.sample()
    pid = standby.status()["walreceiver_pid"]
    assert pid and psutil.pid_exists(pid)

    # The primary goes away: the walreceiver stays, in STARTING, and keeps trying.
    primary.stop("fast")
    wait_for(lambda: standby.status()["walreceiver_state"] == "starting", 30, "the walreceiver to be reconnecting")
    wait_for(lambda: len(standby.events("walreceiver_connect_failed")) >= 3, 30, "three failed reconnects")
    assert standby.status()["walreceiver_pid"] == pid
    assert not walreceiver_exits(standby)
    failed = [e for e in standby.events("walreceiver_connect_failed")]
    assert {e["pid"] for e in failed} == {pid}
    # Its own schedule: 50 ms after the loss, doubling up to 0.5 s (never the retry interval's 1 s).
    gaps = [b["mono"] - a["mono"] for a, b in zip(failed, failed[1:])]
    assert all(0.04 <= g for g in gaps), f"reconnected too fast: {gaps}"
    assert min(gaps[-2:]) < RETRY_S * 0.8, f"reconnect waits not capped at 0.5 s: {gaps}"
    # The line is logged at LOG once per retry interval, not once per attempt.
    wait_for(lambda: len(standby.events("walreceiver_connect_failed")) >= 8, 30, "eight failed reconnects")
    text = standby.log_text()
    assert "LOG:  could not connect to the primary server: " in text
    assert "FATAL:  could not connect to the primary server" not in text
    assert text.count("could not connect to the primary server") < len(standby.events("walreceiver_connect_failed"))

    # The primary returns: the same walreceiver streams again.
    primary.start()
    write_rows(primary, 400, 200, switch_every=100)
    wait_streaming(standby, 30)
    check_data_equal(primary, standby)
    watch.sample()
    assert standby.status()["walreceiver_pid"] == pid
    assert not walreceiver_exits(standby)
    assert not standby.events("crash") and not standby.events("crash_restart")

    disc = standby.events("walreceiver_disconnect")
    assert disc and {e["pid"] for e in disc} == {pid}
    connects = standby.events("walreceiver_connect")
    assert len(connects) >= 2 and {e["pid"] for e in connects} == {pid}
    # It reconnected at a segment start, not before the position it had flushed when the stream was lost.
    again = connects[-1]
    start = parse_lsn(again["start_lsn"])
    assert start % SEG == 0 and start >= parse_lsn(disc[0]["flushed_lsn"]) // SEG * SEG
    trans = [(e["from"], e["to"], e["reason"]) for e in standby.events("walreceiver_state") if e["pid"] == pid]
    assert ("streaming", "starting", "reconnecting") in trans
    assert trans[-1][:2] == ("starting", "streaming")


@pytest.mark.timeout(180)
def test_walreceiver_survives_lost_stream(nodes, tmp_path):
    """The walsender dies (the connection is cut): a LOG line, a disconnect, and streaming again."""
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, archive=archive, standby_wal_coordination="concurrent")
    wait_streaming(standby, 60)
    pid = standby.status()["walreceiver_pid"]
    sender = wait_for(lambda: next((p for p in primary.processes()
                                    if " ".join(p.cmdline()).startswith("walswitch: walsender")), None),
                      20, "the primary's walsender")
    sender.send_signal(signal.SIGKILL)
    wait_for(lambda: standby.events("walreceiver_disconnect"), 30, "the walreceiver to lose its stream")
    # The primary restarts after a walsender crash; the walreceiver reconnects to it.
    write_rows(wait_for(lambda: primary if primary.is_running() and primary.sql("SELECT 1") else None, 60,
                        "the primary to be back"), 0, 200)
    wait_streaming(standby, 30)
    check_data_equal(primary, standby)
    assert standby.status()["walreceiver_pid"] == pid
    assert not walreceiver_exits(standby)
    assert "LOG:  could not receive data from WAL stream: " in standby.log_text()
