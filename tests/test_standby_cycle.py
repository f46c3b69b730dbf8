"""Issue 3, item 1: the seed's cycle, end to end, under stop_walreceiver.

archive recovery -> archive dry, walreceiver started -> streaming -> primary
stops -> walreceiver stopped, archive retried no faster than
wal_retrieve_retry_interval, no walreceiver while restoring -> primary back ->
streaming again; the data equals the primary's.
"""
from __future__ import annotations

import os

import pytest

from tests.cluster import wait_for
from tests.invariants import ReplayWatch, check_data_equal, check_segments_identical, wait_streaming
from tests.standby_helpers import COORDINATIONS, archived, make_primary, wait_archived, write_rows
from xlog.lsn import parse_lsn

RETRY_S = 1.0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_seed_cycle(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path, checkpoint_timeout="30s")
    write_rows(primary, 0, 200)
    standby = nodes.standby(primary, "standby", start=False, archive=archive,
                            standby_wal_coordination=coordination)
    # The primary keeps writing and archiving, then removes the old WAL.
    write_rows(primary, 200, 600, switch_every=150)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    primary.sql("CHECKPOINT")
    n_archived = len(archived(archive))
    assert n_archived >= 3

    standby.start(wait_ready=False)
    watch = ReplayWatch(standby)
    # Archive recovery, then the archive runs dry and streaming takes over.
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    watch.sample()

    # The primary goes away: the standby leaves streaming and retries the archive.
    received = parse_lsn(standby.status()["receive_lsn"])
    requests = len(standby.events("walreceiver_request"))
    primary.stop("immediate")
    wait_for(lambda: standby.status()["recovery_state"] in ("retry_archive", "wait_retry"), 60,
             "standby to leave streaming")
    wait_for(lambda: len([e for e in standby.events("restore") if not e["ok"]]) >= 3, 30,
             "three failed archive attempts")
    if coordination == "stop_walreceiver":
        # Walreceivers started again while the primary is away keep the received position
        # (RequestXLogStreaming resets it only at the first start or on another timeline).
        wait_for(lambda: len(standby.events("walreceiver_request")) > requests, 30, "a walreceiver restart")
        assert parse_lsn(standby.status()["receive_lsn"]) >= received
    if coordination == "concurrent":
        # The walreceiver stays and keeps reconnecting: none exited.
        assert not [e for e in standby.events("child_exit") if e["child"] == "walreceiver"]

    # The primary returns: streaming resumes.
    primary.start()
    write_rows(primary, 800, 100)
    wait_streaming(standby, 30)
    check_data_equal(primary, standby)
    watch.sample()

    evs = standby.events()
    states = [(e["from"], e["to"]) for e in evs if e["kind"] == "recovery_state"]
    # The seed's sequence, in order.
    seq = [t for _f, t in states]
    first = seq.index("archive_recovery")
    rest = seq[first:]
    assert rest[0] == "archive_recovery"
    assert "streaming" in rest
    i_stream = rest.index("streaming")
    if coordination != "walreceiver_restores":
        # The walreceiver restores there: it streams straight after the archive runs dry.
        assert "retry_archive" in rest and rest.index("retry_archive") < i_stream
    after = rest[i_stream + 1:]
    assert after and after[0] in ("retry_archive", "wait_retry"), states
    assert after[-1] == "streaming", states
    assert any(e["kind"] == "restore" and e["ok"] for e in evs), "nothing restored from the archive"

    # Failed archive retries for the same file come no faster than the interval.
    fails: dict[str, list[float]] = {}
    for e in evs:
        if e["kind"] == "restore" and not e["ok"]:
            fails.setdefault(e["file"], []).append(e["mono"])
    for f, times in fails.items():
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g >= RETRY_S * 0.95 for g in gaps), f"{f} retried too fast: {gaps}"

    by = {e.get("by") for e in evs if e["kind"] == "restore"}
    assert by == ({"walreceiver"} if coordination == "walreceiver_restores" else {"startup"}), by
    # No walreceiver ran while the startup restored (stop_walreceiver's rule).
    running = False
    for e in evs:
        if e["kind"] == "walreceiver_state":
            running = e["to"] not in ("stopped",)
        if e["kind"] == "restore" and e.get("by") == "startup" and coordination == "stop_walreceiver":
            assert not running, f"restore of {e['file']} while a walreceiver ran"
    check_segments_identical(standby, archive, os.path.join(primary.datadir, "pg_wal"))
