"""BASE_BACKUP through a walsender (stand-in postmaster), read by walswitch/basebackup.py's client."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from libpq import protocol as P
from storage.kvstore import KVStore
from tests.cluster import wait_for
from tests.test_walsender_harness import SEGSIZE, SYSID, RawClient, error_fields, harness_factory, rows  # noqa: F401
from xlog.control import ControlFile, DBState, read_control, write_control
from xlog.lsn import format_lsn, segment_name, segno_of


def fake_checkpointer(h, stop: threading.Event) -> None:
    """What the backend does on checkpoint_requested: a new checkpoint in the control file and shmem."""
    seen = h.shared.pm.get("checkpoint_requested")
    while not stop.is_set():
        req = h.shared.pm.get("checkpoint_requested")
        if req != seen:
            seen = req
            redo = h.write_records(1)
            cf = read_control(h.datadir).with_changes(checkpoint_lsn=redo, redo_lsn=redo)
            write_control(h.datadir, cf)
            with h.shared.xlog.locked():
                h.shared.xlog.set(checkpoint_lsn=redo, redo_lsn=redo)
        stop.wait(0.01)


@pytest.mark.timeout(60)
def test_base_backup_with_lead_client(harness_factory, tmp_path):
    h = harness_factory()
    h.start_wal()
    first = h.write_records(3)
    write_control(h.datadir, ControlFile(system_identifier=SYSID, state=DBState.IN_PRODUCTION,
                                         checkpoint_lsn=first, redo_lsn=first, timeline=1, prev_timeline=1,
                                         wal_segsize=SEGSIZE))
    store = KVStore(h.datadir)
    store.apply([("put", f"k{i}", f"v{i}") for i in range(100)], first, 1)
    h.write_bytes(SEGSIZE + 200_000)          # WAL into segment 2 and 3
    Path(h.pg_wal, "00000001.history").write_text("")   # odd but harmless: history files travel along
    Path(h.datadir, "postmaster.pid").write_text("1\n")
    Path(h.datadir, "log", "walswitch.log").touch()
    stop = threading.Event()
    t = threading.Thread(target=fake_checkpointer, args=(h, stop), daemon=True)
    t.start()
    port = h.listen_for_walsenders()
    out = tmp_path / "standby"
    try:
        from walswitch.basebackup import basebackup
        res = basebackup(f"host=127.0.0.1 port={port} user=postgres", str(out), write_recovery_conf=True)
    finally:
        stop.set()
        t.join(5)
        store.close()
    start, end = res["start_lsn"], res["end_lsn"]
    ckpt = read_control(h.datadir)
    assert start == ckpt.redo_lsn > first        # a fresh checkpoint was requested and used
    assert end == h.shared.xlog.get("flush_lsn") >= start
    # The key/value snapshot.
    with KVStore(str(out)) as copy:
        rows_, applied, _ = copy.snapshot()
    assert rows_ == [(f"k{i}", f"v{i}") for i in sorted(range(100), key=lambda i: f"k{i}")]
    assert applied == first
    # WAL from the start point's segment through the end point's, byte for byte.
    for segno in range(segno_of(start, SEGSIZE), segno_of(end, SEGSIZE) + 1):
        name = segment_name(1, segno, SEGSIZE)
        assert (out / "pg_wal" / name).read_bytes()[:end - segno * SEGSIZE] == \
            Path(h.segment_path(segno)).read_bytes()[:end - segno * SEGSIZE]
    assert not (out / "pg_wal" / segment_name(1, 1, SEGSIZE)).exists() or segno_of(start, SEGSIZE) == 1
    assert (out / "pg_wal" / "00000001.history").exists()
    assert (out / "pg_wal" / "archive_status").is_dir()
    # Not copied: lock file, logs.
    assert not (out / "postmaster.pid").exists()
    assert not (out / "log" / "walswitch.log").exists()
    # The client turned backup_label into the control file and wrote the standby settings.
    cf = read_control(str(out))
    assert cf.state == DBState.IN_ARCHIVE_RECOVERY and cf.min_recovery_point == end
    assert cf.redo_lsn == start and cf.checkpoint_lsn == ckpt.checkpoint_lsn
    assert (out / "standby.signal").exists()
    assert f"port={port}" in (out / "walswitch.conf").read_text()
    ev = h.events_of("base_backup")[-1]
    assert ev["start_lsn"] == format_lsn(start) and ev["end_lsn"] == format_lsn(end)
    wait_for(lambda: h.shared.walsnd[0].get("pid") == 0, 10, "walsender gone")


@pytest.mark.timeout(60)
def test_base_backup_wire_format_and_standby_refusal(harness_factory):
    h = harness_factory()
    h.start_wal()
    lsn = h.write_records(2)
    write_control(h.datadir, ControlFile(system_identifier=SYSID, state=DBState.IN_PRODUCTION,
                                         checkpoint_lsn=lsn, redo_lsn=lsn, timeline=1, prev_timeline=1,
                                         wal_segsize=SEGSIZE))
    KVStore(h.datadir).close()
    import walsender.basebackup as bbs
    bbs.CHECKPOINT_WAIT = 0.2        # no backend here: fall back to the last checkpoint (inherited by fork)
    port = h.listen_for_walsenders()
    c = RawClient(port)
    try:
        r = c.query("BASE_BACKUP (LABEL 'x')")
        kinds = [t for t, _ in r]
        assert kinds[:4] == [b"T", b"D", b"C", b"H"]
        assert kinds[-6:] == [b"c", b"T", b"D", b"C", b"C", b"Z"]
        assert set(kinds[4:-6]) == {b"d"}
        assert rows(r)[0] == [format_lsn(lsn).encode(), b"1"]
        assert rows(r)[1] == [format_lsn(lsn).encode(), b"1"]
        assert r[-2] == (b"C", P.cstr("BASE_BACKUP"))
        # options PostgreSQL knows but walswitch does not do are refused, never ignored
        for cmd, code, msg in [
                ("BASE_BACKUP (PROGRESS)", "0A000", "BASE_BACKUP option PROGRESS is not supported by walswitch"),
                ("BASE_BACKUP (CHECKPOINT 'spread')", "0A000",
                 "BASE_BACKUP option CHECKPOINT spread is not supported by walswitch"),
                ("BASE_BACKUP (MAX_RATE 1000)", "0A000", "BASE_BACKUP option MAX_RATE 1000 is not supported by walswitch"),
                ("BASE_BACKUP LABEL 'x' PROGRESS", "0A000", "BASE_BACKUP option PROGRESS is not supported by walswitch"),
                ("BASE_BACKUP (CHECKPOINT 'slow')", "22023", 'unrecognized checkpoint type: "slow"'),
                ("BASE_BACKUP (FOO)", "42601", 'option "foo" not recognized'),
                ("BASE_BACKUP (LABEL 'a', LABEL 'b')", "42601", 'duplicate option "label"')]:
            r = c.query(cmd)
            f = error_fields(r[0][1])
            assert (f["C"], f["M"]) == (code, msg), cmd
        r = c.query("BASE_BACKUP (LABEL 'y', CHECKPOINT 'fast', WAIT false)")
        assert r[-2] == (b"C", P.cstr("BASE_BACKUP"))
        with h.shared.xlog.locked():
            h.shared.xlog.set(in_recovery=1)
        r = c.query("BASE_BACKUP")
        assert error_fields(r[0][1])["M"] == "base backups from a standby are not supported by walswitch"
    finally:
        c.close()
        bbs.CHECKPOINT_WAIT = 30.0
    wait_for(lambda: "checkpoint for base backup was not completed" in h.log_text(), 5, "fallback log")
    _ = os
