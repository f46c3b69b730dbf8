"""BASE_BACKUP through a walsender (stand-in postmaster), read by walswitch/basebackup.py's client."""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
        # PostgreSQL 15's layout: start point, tablespaces, one COPY stream (n, d..., p, m, d...), end point
        r = c.query("BASE_BACKUP ( LABEL 'x', PROGRESS, WAIT 0, MANIFEST 'yes', TARGET 'client' )")
        kinds = [t for t, _ in r]
        assert kinds[:7] == [b"T", b"D", b"C", b"T", b"D", b"C", b"H"], kinds[:8]
        assert kinds[-6:] == [b"c", b"T", b"D", b"C", b"C", b"Z"]
        assert rows(r)[0] == [format_lsn(lsn).encode(), b"1"]
        size_kb = int(rows(r)[1][2])
        assert rows(r)[1][:2] == [None, None] and size_kb > 0            # the data directory, its size in kB
        assert rows(r)[2] == [format_lsn(lsn).encode(), b"1"]
        assert r[-2] == (b"C", P.cstr("BASE_BACKUP"))
        copy = [body for t, body in r if t == b"d"]
        assert copy[0] == b"n" + P.cstr("base.tar") + P.cstr("")
        sub = [m[:1] for m in copy]
        m_at = sub.index(b"m")
        assert set(sub[1:m_at - 1]) == {b"d"} and sub[m_at - 1] == b"p" and set(sub[m_at + 1:]) == {b"d"}
        archive = b"".join(m[1:] for m in copy[1:m_at - 1])
        (done,) = struct.unpack("!q", copy[m_at - 1][1:])
        assert done == len(archive) and abs(size_kb - done // 1024) <= 2   # the estimate is right here
        assert archive.endswith(bytes(1024)) and len(archive) % 512 == 0   # a two-block trailer, no more
        with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
            names = tf.getnames()
        assert names[0] == "backup_label" and names[-1] == "global/walswitch_control"
        assert "base/kv.sqlite" in names and "pg_wal" in names and "pg_wal/archive_status" in names
        assert not [n for n in names if n.startswith("pg_wal/") and n != "pg_wal/archive_status"]  # no WAL
        manifest = json.loads(b"".join(m[1:] for m in copy[m_at + 1:]))
        assert {f["Path"] for f in manifest["Files"]} == {n for n in names if not n.startswith("pg_wal")
                                                          and n not in ("base", "global", "log", "pg_tblspc")}
        assert manifest["WAL-Ranges"] == [{"Timeline": 1, "Start-LSN": format_lsn(lsn), "End-LSN": format_lsn(lsn)}]
        # WAL: the segments and their .done; legacy keywords mean the same options
        r = c.query("BASE_BACKUP LABEL 'y' FAST WAL NOWAIT")
        assert r[0][0] != b"E", error_fields(r[0][1])
        archive = b"".join(body[1:] for t, body in r if t == b"d" and body[:1] == b"d")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
            names = tf.getnames()
        seg = segment_name(1, segno_of(lsn, SEGSIZE), SEGSIZE)
        assert f"pg_wal/{seg}" in names and f"pg_wal/archive_status/{seg}.done" not in names  # not complete
        # PostgreSQL's checks, messages and SQLSTATEs; what walswitch does not do is refused, never ignored
        for cmd, code, msg in [
                ("BASE_BACKUP (FOO)", "42601", 'unrecognized base backup option: "foo"'),
                ("BASE_BACKUP (LABEL 'a', LABEL 'b')", "42601", 'duplicate option "label"'),
                ("BASE_BACKUP (PROGRESS 'x')", "42601", "progress requires a Boolean value"),
                ("BASE_BACKUP (WAIT 'maybe')", "42601", "wait requires a Boolean value"),
                ("BASE_BACKUP (MAX_RATE 1)", "22003", '1 is outside the valid range for parameter "MAX_RATE" '
                                                      "(32 .. 1048576)"),
                ("BASE_BACKUP (MAX_RATE 'abc')", "42601", "max_rate requires a numeric value"),
                ("BASE_BACKUP (CHECKPOINT 'slow')", "42601", 'unrecognized checkpoint type: "slow"'),
                ("BASE_BACKUP (MANIFEST 'maybe')", "42601", 'unrecognized manifest option: "maybe"'),
                ("BASE_BACKUP (MANIFEST_CHECKSUMS 'md5')", "42601", 'unrecognized checksum algorithm: "md5"'),
                ("BASE_BACKUP (MANIFEST_CHECKSUMS 'sha256')", "42601", "manifest checksums require a backup manifest"),
                ("BASE_BACKUP (TARGET 'x')", "0A000", 'unrecognized target: "x"'),
                ("BASE_BACKUP (TARGET 'server')", "42601", 'target "server" requires a target detail'),
                ("BASE_BACKUP (TARGET 'client', TARGET_DETAIL 'x')", "42601",
                 'target "client" does not accept a target detail'),
                ("BASE_BACKUP (COMPRESSION 'foo')", "42601", 'unrecognized compression algorithm: "foo"'),
                ("BASE_BACKUP (COMPRESSION_DETAIL 'x')", "42601",
                 "compression detail cannot be specified unless compression is enabled"),
                ("BASE_BACKUP LABEL 'x' FOO", "42601", "syntax error"),
                ("BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/tmp/x')", "0A000",
                 'BASE_BACKUP target "server" is not supported by walswitch'),
                ("BASE_BACKUP (TARGET 'blackhole')", "0A000",
                 'BASE_BACKUP target "blackhole" is not supported by walswitch'),
                ("BASE_BACKUP (COMPRESSION 'gzip')", "0A000",
                 'BASE_BACKUP compression "gzip" is not supported by walswitch')]:
            r = c.query(cmd)
            f = error_fields(r[0][1])
            assert (f["C"], f["M"]) == (code, msg), cmd
            assert [t for t, _ in r] == [b"E", b"Z"], cmd
        # accepted: both checkpoint types, checksums of every kind, throttling, no verification to do
        r = c.query("BASE_BACKUP (LABEL 'y', CHECKPOINT 'spread', WAIT false, MAX_RATE 1048576, "
                    "VERIFY_CHECKSUMS false, MANIFEST 'force-encode', MANIFEST_CHECKSUMS 'SHA512', TABLESPACE_MAP)")
        assert r[-2] == (b"C", P.cstr("BASE_BACKUP"))
        copy = [body for t, body in r if t == b"d"]
        m_at = [m[:1] for m in copy].index(b"m")
        manifest = json.loads(b"".join(m[1:] for m in copy[m_at + 1:]))
        assert all("Encoded-Path" in f and f["Checksum-Algorithm"] == "SHA512" for f in manifest["Files"])
        assert bytes.fromhex(manifest["Files"][1]["Encoded-Path"]).decode() == "tablespace_map"
        # WAIT true (the default) with archive_mode off: PostgreSQL's notice, and the backup
        r = c.query("BASE_BACKUP")
        assert any(t == b"N" and b"WAL archiving is not enabled" in body for t, body in r)
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


@pytest.mark.timeout(60)
def test_temporary_physical_slots(harness_factory):
    """What pg_basebackup -X stream does on its second connection: a temporary physical slot, then
    START_REPLICATION SLOT on it; the slot is this connection's only."""
    h = harness_factory()
    h.start_wal()
    lsn = h.write_records(3)
    port = h.listen_for_walsenders()
    c = RawClient(port)
    other = RawClient(port, application_name="other")
    try:
        for cmd, code, msg in [
                ('CREATE_REPLICATION_SLOT "A-b" TEMPORARY PHYSICAL', "42602",
                 'replication slot name "A-b" contains invalid character'),
                ("CREATE_REPLICATION_SLOT " + "x" * 64 + " TEMPORARY PHYSICAL", "42622",
                 f'replication slot name "{"x" * 64}" is too long'),
                ("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 'x')", "42601", "reserve_wal requires a Boolean value"),
                ("CREATE_REPLICATION_SLOT s TEMPORARY PHYSICAL (FOO)", "XX000", "unrecognized option: foo"),
                ("CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL", "0A000",
                 "only temporary physical replication slots are supported by walswitch"),
                ("CREATE_REPLICATION_SLOT s TEMPORARY LOGICAL pgoutput", "0A000",
                 "logical replication is not supported by walswitch"),
                ("DROP_REPLICATION_SLOT nosuch", "42704", 'replication slot "nosuch" does not exist'),
                ("START_REPLICATION SLOT nosuch 0/0", "42704", 'replication slot "nosuch" does not exist')]:
            r = c.query(cmd)
            f = error_fields(r[0][1])
            assert (f["C"], f["M"]) == (code, msg), cmd
        r = c.query('CREATE_REPLICATION_SLOT "pg_basebackup_42" TEMPORARY PHYSICAL ( RESERVE_WAL)')
        assert [t for t, _ in r] == [b"T", b"D", b"C", b"Z"]
        assert rows(r) == [[b"pg_basebackup_42", b"0/0", None, None]]
        assert r[2] == (b"C", P.cstr("CREATE_REPLICATION_SLOT"))
        f = error_fields(c.query("CREATE_REPLICATION_SLOT pg_basebackup_42 TEMPORARY PHYSICAL")[0][1])
        assert (f["C"], f["M"]) == ("42710", 'replication slot "pg_basebackup_42" already exists')
        f = error_fields(other.query("START_REPLICATION SLOT pg_basebackup_42 0/0")[0][1])
        assert f["C"] == "42704"                                   # another connection's slot is not there
        seg_start = lsn - lsn % SEGSIZE
        c.send(P.msg(b"Q", P.cstr(f'START_REPLICATION SLOT "pg_basebackup_42" {format_lsn(seg_start)} TIMELINE 1')))
        assert c.recv()[0] == b"W"
        got = c.recv()
        assert got[0] == b"d" and got[1][:1] in (b"w", b"k")
        c.send(P.copy_done())
        msgs = c.until(b"Z")
        assert (b"C", P.cstr("START_STREAMING")) in msgs
        assert c.query("DROP_REPLICATION_SLOT pg_basebackup_42")[0] == (b"C", P.cstr("DROP_REPLICATION_SLOT"))
        f = error_fields(c.query("START_REPLICATION SLOT pg_basebackup_42 0/0")[0][1])
        assert f["C"] == "42704"
    finally:
        c.close()
        other.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["label", "progress", "checkpoint", "wait", "wal", "max_rate", "manifest",
                                           "manifest_checksums", "target", "target_detail", "compression",
                                           "compression_detail", "tablespace_map", "verify_checksums", "nosuch"]),
                          st.one_of(st.none(), st.integers(-5, 2 ** 40), st.text(max_size=12),
                                    st.sampled_from(["true", "off", "fast", "client", "yes", "CRC32C", "none"]))),
                max_size=6))
def test_base_backup_options_answer_with_sqlstates(opts):
    """Any option list parses to options or to PostgreSQL's error, never anything else."""
    import walsender.basebackup as bbs
    from walsender import replication_commands as RC
    text = "BASE_BACKUP (" + ", ".join(
        n + ("" if a is None else " " + (str(a) if isinstance(a, int) else "'" + a.replace("'", "''") + "'"))
        for n, a in opts) + ")" if opts else "BASE_BACKUP"
    try:
        cmd = RC.parse(text)
        bbs.parse_options(cmd.options)
    except P.SQLError as e:
        assert e.sqlstate in ("42601", "0A000", "22003"), (text, e.sqlstate, e.message)
