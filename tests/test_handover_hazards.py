"""Issue 4, items 3 and 4: the handover hazards, forced with injection points.

Item 3 (concurrent): the walreceiver and the startup write the same segment.
The standby streams segment N; the primary stops; while the walreceiver keeps
reconnecting the startup retries the archive, which holds a bad copy of N (a
corrupt archive, one of DESIGN.md's faults).  The startup's restore of N is
held at ``before_install`` until the primary is back and the walreceiver has
streamed N again; then it goes on.  With ``concurrent_guard = off`` the archive
copy replaces the walreceiver's good file under it: the streamed bytes are gone
(the walreceiver will not send them again), replay is stuck at the bad spot
and the segment in pg_wal differs from the primary's (invariants 1, 2 and 4
break).  With the guard on the walreceiver's copy wins and nothing breaks.

Item 4 (stop_walreceiver): the cost of its rule.  The same scenario: the
walreceiver is stopped while the segment it streamed is still in flight for
the startup, and when streaming comes back it starts again at the segment's
beginning: the standby fetches those bytes again (measured from the events).
"""
from __future__ import annotations

import os

import pytest

from tests.cluster import WaitTimeout, wait_for
from tests.invariants import check_data_equal, wait_streaming
from tests.standby_helpers import current_lsn, make_primary, write_rows
from utils.inject import arm, release
from xlog.lsn import parse_lsn, segment_name, segno_of

SEG = 1024 * 1024


def bad_archive_copy(primary, archive: str, segno: int, from_lsn: int) -> str:
    """Put a corrupt copy of a segment into the archive: the primary's bytes, garbage after from_lsn."""
    name = segment_name(1, segno, SEG)
    with open(os.path.join(primary.datadir, "pg_wal", name), "rb") as f:
        data = bytearray(f.read())
    off = from_lsn - segno * SEG
    for i in range(off, min(len(data), off + 4096)):
        data[i] = (data[i] ^ 0xA5) or 0x5A
    with open(os.path.join(archive, name), "wb") as f:
        f.write(data)
    return name


def receive_lsn(node) -> int:
    st = node.status()
    return parse_lsn(st["receive_lsn"]) if st.get("receive_lsn") else 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("guard", [True, False], ids=["guard_on", "guard_off"])
def test_concurrent_two_writers_of_one_segment(nodes, tmp_path, guard):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, archive=archive, standby_wal_coordination="concurrent",
                            concurrent_guard=guard, wal_retrieve_retry_interval="300ms")
    write_rows(primary, 0, 200)
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    stop_at = current_lsn(primary)
    n = segno_of(stop_at, SEG)

    # The primary goes; a bad copy of the segment being streamed shows up in the archive.
    arm(standby.datadir, "before_install", "pause")
    primary.stop("immediate")
    name = bad_archive_copy(primary, archive, n, stop_at)
    wait_for(lambda: [e for e in standby.events("inject_paused") if e["role"] == "startup"], 30,
             "the startup to hold its restore of the bad copy")
    # The primary returns and the walreceiver streams the segment again, past where it stopped.
    primary.start()
    write_rows(primary, 1000, 300)
    target = current_lsn(primary)
    wait_for(lambda: receive_lsn(standby) >= target, 30, "the walreceiver to stream past the stop point")
    release(standby.datadir, "before_install")

    if guard:
        check_data_equal(primary, standby, timeout=30)
        kept = standby.events("restore_kept_private")
        assert kept and kept[0]["file"] == name, "the guard did not keep the walreceiver's copy"
        with open(os.path.join(standby.datadir, "pg_wal", name), "rb") as f, \
                open(os.path.join(primary.datadir, "pg_wal", name), "rb") as g:
            ours, theirs = f.read(), g.read()
        upto = min(target, (n + 1) * SEG) - n * SEG
        assert ours[:upto] == theirs[:upto], "segment in pg_wal differs from the primary's"
    else:
        # The harm: replay never gets past the bad spot; the segment in pg_wal is the bad copy.
        with pytest.raises(WaitTimeout):
            check_data_equal(primary, standby, timeout=8)
        with open(os.path.join(standby.datadir, "pg_wal", name), "rb") as f:
            ours = f.read()
        with open(os.path.join(archive, name), "rb") as f:
            assert ours == f.read(), "expected the archive's bad copy to have replaced the streamed one"
        assert standby.events("wal_invalid"), "the bad bytes were never read"


@pytest.mark.timeout(180)
def test_stop_walreceiver_fetches_again(nodes, tmp_path):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, archive=archive, standby_wal_coordination="stop_walreceiver",
                            wal_retrieve_retry_interval="300ms")
    write_rows(primary, 0, 200)
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    had = receive_lsn(standby)
    primary.stop("immediate")
    wait_for(lambda: standby.events("walreceiver_stop_request") or
             [e for e in standby.events("child_exit") if e["child"] == "walreceiver"], 30,
             "the walreceiver to be stopped")
    primary.start()
    write_rows(primary, 1000, 50)
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    connects = standby.events("walreceiver_connect")
    assert len(connects) >= 2
    restart_at = parse_lsn(connects[-1]["start_lsn"])
    refetched = had - restart_at
    # The rule's cost: everything it had of the segment is streamed again.
    assert restart_at % SEG == 0 and refetched > 0, (hex(had), hex(restart_at))
