"""Control file, timeline history files, archive_status."""
from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings, strategies as st

from xlog import archive_status as A
from xlog.control import (CONTROL_FILE_SIZE, ControlFile, ControlFileError, DBState, control_path,
                          new_system_identifier, read_control, write_control)
from xlog.history import (HistoryError, TimelineHistoryEntry, format_history, new_history, read_history,
                          read_history_file, timeline_switch_point, tli_of_lsn, write_history_file)
from xlog.lsn import parse_lsn


def _cf(**kw: object) -> ControlFile:
    base = dict(system_identifier=7312345678901234567, state=DBState.IN_PRODUCTION, checkpoint_lsn=0x3000060,
                redo_lsn=0x3000028, timeline=2, prev_timeline=1, min_recovery_point=0x2000000,
                min_recovery_point_tli=1, backup_end_required=True, wal_segsize=1024 * 1024, next_xid=745,
                time=1764000000.5)
    base.update(kw)
    return ControlFile(**base)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_dbstate_matches_pg() -> None:
    assert [s.name for s in DBState] == ["STARTUP", "SHUTDOWNED", "SHUTDOWNED_IN_RECOVERY", "SHUTDOWNING",
                                         "IN_CRASH_RECOVERY", "IN_ARCHIVE_RECOVERY", "IN_PRODUCTION"]
    assert [int(s) for s in DBState] == list(range(7))
    assert DBState.SHUTDOWNED_IN_RECOVERY.describe() == "shut down in recovery"


@pytest.mark.timeout(30)
@settings(max_examples=50, deadline=None)
@given(state=st.sampled_from(list(DBState)), lsn=st.integers(0, 2**64 - 1), tli=st.integers(1, 2**32 - 1),
       flag=st.booleans())
def test_control_pack_round_trip(state: DBState, lsn: int, tli: int, flag: bool) -> None:
    cf = _cf(state=state, checkpoint_lsn=lsn, timeline=tli, backup_end_required=flag)
    data = cf.pack()
    assert len(data) == CONTROL_FILE_SIZE
    assert ControlFile.unpack(data) == cf


@pytest.mark.timeout(10)
def test_control_write_read_and_errors(tmp_path) -> None:
    d = str(tmp_path)
    path = control_path(d)
    with pytest.raises(ControlFileError, match=f'could not open control file "{path}": No such file'):
        read_control(d)
    cf = _cf()
    write_control(d, cf)
    assert read_control(d) == cf
    cf2 = cf.with_changes(state=DBState.SHUTDOWNED)
    assert cf2.time > 0 and cf2.state == DBState.SHUTDOWNED
    write_control(d, cf2)
    assert read_control(d) == cf2
    assert os.listdir(os.path.dirname(path)) == ["walswitch_control"]  # no temp file left
    data = bytearray(open(path, "rb").read())
    data[30] ^= 0xFF
    open(path, "wb").write(data)
    with pytest.raises(ControlFileError, match=f'^incorrect checksum in control file "{path}"$'):
        read_control(d)
    open(path, "wb").write(b"short")
    with pytest.raises(ControlFileError, match=f'^could not read file "{path}": read 5 of {CONTROL_FILE_SIZE}$'):
        read_control(d)
    open(path, "wb").write(bytes(CONTROL_FILE_SIZE + 1))
    with pytest.raises(ControlFileError, match="^incorrect size of control file"):
        read_control(d)
    open(path, "wb").write(bytes(CONTROL_FILE_SIZE))
    with pytest.raises(ControlFileError, match="wrong magic number"):
        read_control(d)


@pytest.mark.timeout(10)
def test_new_system_identifier() -> None:
    before = int(time.time())
    sysid = new_system_identifier()
    assert before <= sysid >> 32 <= int(time.time()) + 1
    assert (sysid >> 12) & 0xFFFFF < 1_000_000
    assert sysid & 0xFFF == os.getpid() & 0xFFF


# --- history ----------------------------------------------------------------------------

PG_HISTORY_3 = ("1\t0/3000000\tno recovery target specified\n"
                "\n"
                "2\t0/5000158\tno recovery target specified\n")


@pytest.mark.timeout(10)
def test_history_format_like_pg() -> None:
    h2 = new_history([], 1, 0x3000000)
    assert format_history(h2) == "1\t0/3000000\tno recovery target specified\n"
    h3 = new_history(h2, 2, 0x5000158)
    assert format_history(h3) == PG_HISTORY_3
    assert read_history(PG_HISTORY_3) == h3
    parsed = read_history("# comment\n\n1\t0/3000000\tbefore 2000-01-01\n  \n")
    assert parsed == [TimelineHistoryEntry(1, 0x3000000, "before 2000-01-01")]


@pytest.mark.timeout(10)
def test_history_errors() -> None:
    with pytest.raises(HistoryError, match="Expected a numeric timeline ID"):
        read_history("x\t0/1\treason\n")
    with pytest.raises(HistoryError, match="Expected a write-ahead log switchpoint location"):
        read_history("1\tnot-an-lsn\treason\n")
    with pytest.raises(HistoryError, match="Timeline IDs must be in increasing sequence"):
        read_history("2\t0/1\ta\n1\t0/2\tb\n")


@pytest.mark.timeout(10)
def test_tli_of_lsn_and_switch_points() -> None:
    h = read_history(PG_HISTORY_3)
    assert tli_of_lsn(h, 0) == 1
    assert tli_of_lsn(h, 0x2FFFFFF) == 1
    assert tli_of_lsn(h, 0x3000000) == 2  # the switchpoint belongs to the new timeline
    assert tli_of_lsn(h, 0x5000157) == 2
    assert tli_of_lsn(h, 0x5000158, target_tli=3) == 3
    assert tli_of_lsn(h, 0x9000000) == 3
    assert tli_of_lsn([], 0x9000000) == 1
    assert timeline_switch_point(h, 1) == 0x3000000 and timeline_switch_point(h, 3) is None


@pytest.mark.timeout(10)
def test_write_history_file(tmp_path) -> None:
    d = str(tmp_path)
    h = read_history(PG_HISTORY_3)
    path = write_history_file(d, 3, h)
    assert os.path.basename(path) == "00000003.history"
    assert open(path).read() == PG_HISTORY_3
    assert read_history_file(d, 3) == h and read_history_file(d, 7) == []
    assert os.listdir(d) == ["00000003.history"]
    with pytest.raises(ValueError):
        write_history_file(d, 2, h)
    assert parse_lsn("0/5000158") == h[1].switchpoint


# --- archive_status ------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_archive_status_ready_done(tmp_path) -> None:
    d = str(tmp_path)
    assert A.list_ready(d) == []
    for name in ["000000010000000000000003", "000000010000000000000001", "00000002.history",
                 "000000020000000000000002"]:
        A.mark_ready(d, name)
    assert A.list_ready(d) == ["00000002.history", "000000010000000000000001", "000000010000000000000003",
                               "000000020000000000000002"]
    A.mark_done(d, "000000010000000000000001")
    assert A.is_done(d, "000000010000000000000001") and not A.is_ready(d, "000000010000000000000001")
    A.mark_ready(d, "000000010000000000000001")  # already archived: stays done
    assert "000000010000000000000001" not in A.list_ready(d)
    A.mark_done(d, "000000010000000000000009")  # no .ready: creates .done
    assert A.list_done(d) == ["000000010000000000000001", "000000010000000000000009"]
    A.remove_status(d, "000000010000000000000009")
    assert A.list_done(d) == ["000000010000000000000001"]
    assert sorted(os.listdir(os.path.join(d, "archive_status"))) == sorted([
        "00000002.history.ready", "000000010000000000000001.done", "000000010000000000000003.ready",
        "000000020000000000000002.ready"])
