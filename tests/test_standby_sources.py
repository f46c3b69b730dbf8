"""Issue 3, items 2 and 3: handing WAL over between the archive and the stream.

2. A record that begins in the last archived segment and ends in a streamed
   one is replayed once and correctly.
3. A standby that needs WAL the primary has removed gets PostgreSQL's error,
   takes the WAL from the archive, then streams.
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.cluster import wait_for
from tests.invariants import ReplayWatch, check_data_equal, check_segments_identical, wait_streaming
from tests.standby_helpers import (COORDINATIONS, archived, current_lsn, fill_to_segment_offset, make_primary,
                                   seg_of,
                                   wait_archived, write_rows)
from xlog.lsn import segment_name

SEG = 1024 * 1024


@pytest.mark.timeout(180)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_record_spanning_archive_and_stream(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive)
    write_rows(primary, 0, 100)
    # A 200 kB value written 60 kB before a segment boundary: its record starts
    # in segment N, which gets archived, and ends in N+1, which only streams.
    fill_to_segment_offset(primary, SEG, 60_000)
    before = current_lsn(primary)
    big = "B" * 200_000
    primary.sql("INSERT INTO kv VALUES ('big', %s)", (big,))
    after = current_lsn(primary)
    n = seg_of(before)
    assert seg_of(after) == n + 1, "the big record does not cross a segment boundary"
    first_seg = segment_name(1, n, SEG)
    wait_for(lambda: first_seg in archived(archive), 30, f"{first_seg} in the archive")
    assert segment_name(1, n + 1, SEG) not in archived(archive)

    standby.start(wait_ready=False)
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    assert standby.sql("SELECT value FROM kv WHERE key = 'big'") == [(big,)]
    evs = standby.events()
    restored = {e["file"] for e in evs if e["kind"] == "restore" and e["ok"]}
    assert first_seg in restored, "segment N was not taken from the archive"
    if coordination != "walreceiver_restores":
        # Streaming was asked for exactly where the archive ran dry: segment N+1.
        starts = [e for e in evs if e["kind"] == "walreceiver_request"]
        assert starts and starts[0]["start"] == f"0/{(n + 1) * SEG:X}", starts
    # Replayed once: one commit applied for the big row (the store's LSN passed it once).
    w = ReplayWatch(standby)
    assert w.sample() >= after
    check_segments_identical(standby, archive, os.path.join(primary.datadir, "pg_wal"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_removed_wal_taken_from_archive(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    # The standby's archive is "late": empty until the test fills it.
    late = tmp_path / "late-archive"
    late.mkdir()
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=str(late))
    write_rows(primary, 0, 400, switch_every=100)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    primary.sql("CHECKPOINT")
    oldest = min(f for f in os.listdir(os.path.join(primary.datadir, "pg_wal")) if len(f) == 24)
    assert oldest > archived(archive)[0], "the primary removed no WAL"

    standby.start(wait_ready=False)
    standby.wait_log("has already been removed", 60)
    assert "could not receive data from WAL stream" in standby.log_text()
    # The walreceiver exited normally (status 1): no crash-restart.
    assert not standby.events("crash")
    for f in archived(archive):
        shutil.copy(os.path.join(archive, f), late / f)
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    assert any(e["ok"] for e in standby.events("restore"))
