"""The walsender on its own (stand-in postmaster from test_walsender_harness.py).

Real clients where they exist (pg_receivewal, psycopg2's
PhysicalReplicationConnection), and a raw protocol client where the exact
message sequence matters.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest

from libpq import protocol as P
from tests.cluster import pg_tool, share_with_postgres, wait_for
from tests.test_walsender_harness import (SEGSIZE, SYSID, RawClient, columns, error_fields,  # noqa: F401
                                          harness_factory, rows)
from xlog.lsn import format_lsn, segment_name


def streaming_copy(client: RawClient, cmd: str) -> None:
    client.send(P.msg(b"Q", P.cstr(cmd)))
    t, body = client.recv()
    assert t == b"W", (t, body)


def read_xlogdata(client: RawClient, upto: int, reply: bool = True) -> tuple[bytes, int, list]:
    """Collect w messages until `upto` is reached; answers keepalives. Returns (data, start, messages)."""
    data = bytearray()
    start = None
    msgs = []
    while True:
        t, body = client.recv()
        msgs.append((t, body))
        if t != b"d":
            return bytes(data), start or 0, msgs
        if body[:1] == b"w":
            ds, we, _st = struct.unpack_from("!QQq", body, 1)
            if start is None:
                start = ds
            assert ds == start + len(data)
            data += body[25:]
            if ds + len(body) - 25 >= upto:
                return bytes(data), start, msgs
        elif body[:1] == b"k" and reply:
            we, _st, rr = struct.unpack_from("!QqB", body, 1)
            if rr:
                pos = start + len(data) if start is not None else 0
                client.standby_status(pos, pos, pos)


# ---------------------------------------------------------------- commands
@pytest.mark.timeout(30)
def test_commands_identify_show_history_errors(harness_factory):
    h = harness_factory(tli=2)
    h.start_wal(start_lsn=3 * SEGSIZE)
    flush = h.write_records(3)
    Path(h.pg_wal, "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    port = h.listen_for_walsenders()
    c = RawClient(port)
    try:
        params = dict(body.rstrip(b"\0").split(b"\0") for t, body in c.greeting if t == b"S")
        assert params[b"application_name"] == b"rawclient"
        r = c.query("IDENTIFY_SYSTEM")
        assert columns(r) == [("systemid", P.TEXTOID), ("timeline", P.INT4OID), ("xlogpos", P.TEXTOID),
                              ("dbname", P.TEXTOID)]
        assert rows(r) == [[str(SYSID).encode(), b"2", format_lsn(flush).encode(), None]]
        assert (b"C", P.cstr("IDENTIFY_SYSTEM")) in r
        assert rows(c.query("SHOW wal_segment_size;")) == [[b"1MB"]]
        assert rows(c.query("SHOW data_directory_mode")) == [[b"0700"]]
        assert rows(c.query("SHOW wal_sender_timeout")) == [[b"1min"]]
        err = error_fields(c.query("SHOW no_such_thing")[0][1])
        assert (err["C"], err["M"]) == ("42704", 'unrecognized configuration parameter "no_such_thing"')
        r = c.query("TIMELINE_HISTORY 2")
        assert columns(r) == [("filename", P.TEXTOID), ("content", P.TEXTOID)]   # as PostgreSQL 15
        assert rows(r) == [[b"00000002.history", b"1\t0/3000000\tno recovery target specified\n"]]
        err = error_fields(c.query("TIMELINE_HISTORY 3")[0][1])
        assert err["C"] == "58P01" and 'could not open file "pg_wal/00000003.history"' in err["M"]
        for sql in ("SELECT 1", "identify_system", ""):     # keywords are upper case only, as in PostgreSQL
            err = error_fields(c.query(sql)[0][1])
            assert (err["C"], err["M"]) == ("0A000",
                                            "cannot execute SQL commands in WAL sender for physical replication")
        for bad in ("START_REPLICATION foo", "IDENTIFY_SYSTEM extra", "TIMELINE_HISTORY", "START_REPLICATION 0/0 TIMELINE x"):
            r = c.query(bad)
            assert r[0][0] == b"E" and error_fields(r[0][1])["C"] == "42601", bad
            assert r[-1] == (b"Z", b"I")
        err = error_fields(c.query("START_REPLICATION SLOT s1 PHYSICAL 0/3000000")[0][1])
        assert (err["C"], err["M"]) == ("42704", 'replication slot "s1" does not exist')
        # Still usable after all the errors.
        assert rows(c.query("SHOW wal_segment_size"))[0] == [b"1MB"]
        slot = h.shared.walsnd[0].snapshot()
        assert slot["pid"] == h.walsender_pid() and slot["state"] == 0
        assert slot["application_name"] == "rawclient"
    finally:
        c.close()
    pid = h.walsender_pid()
    assert h.wait_exit(pid) == 0
    assert h.shared.walsnd[0].get("pid") == 0
    kinds = [e["kind"] for e in h.events_of("walsender_start") + h.events_of("walsender_stop")]
    assert kinds == ["walsender_start", "walsender_stop"]


@pytest.mark.timeout(30)
def test_max_wal_senders_exceeded(harness_factory):
    h = harness_factory(max_wal_senders=1)
    h.start_wal()
    port = h.listen_for_walsenders()
    c1 = RawClient(port)
    with pytest.raises(psycopg2.OperationalError) as ei:
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", replication="true", connect_timeout=5)
    assert "number of requested standby connections exceeds max_wal_senders (currently 1)" in str(ei.value)
    c1.close()
    for pid in list(h.accepted):
        assert h.wait_exit(pid) in (0, 1)


# ---------------------------------------------------------------- streaming, raw
@pytest.mark.timeout(60)
def test_stream_bytes_equal_files_and_client_copydone(harness_factory):
    h = harness_factory()
    h.start_wal()
    h.write_bytes(200_000)
    port = h.listen_for_walsenders()
    c = RawClient(port)
    streaming_copy(c, f"START_REPLICATION PHYSICAL {format_lsn(SEGSIZE)} TIMELINE 1")
    # Live: more WAL while streaming, across two segment boundaries.
    target = h.write_bytes(2 * SEGSIZE + 300_000)
    data, start, msgs = read_xlogdata(c, target)
    assert start == SEGSIZE
    for t, body in msgs:
        if body[:1] == b"w":
            ds = struct.unpack_from("!Q", body, 1)[0]
            n = len(body) - 25
            assert n <= 128 * 1024
            assert ds // SEGSIZE == (ds + n - 1) // SEGSIZE, "an XLogData message crossed a segment boundary"
    expected = b"".join(Path(h.segment_path(s)).read_bytes() for s in (1, 2, 3))
    assert data == expected[:target - SEGSIZE]
    slot = h.shared.walsnd[0].snapshot()
    assert slot["sent_lsn"] == target and slot["state"] in (2, 3) and slot["timeline"] == 1
    wait_for(lambda: h.shared.walsnd[0].get("state") == 3, 10, "streaming state")
    # Client ends the copy: CopyDone, CommandComplete START_STREAMING, ReadyForQuery.
    c.send(P.copy_done())
    seq = []
    while True:
        t, body = c.recv()
        if t == b"d":
            continue
        seq.append((t, body))
        if t == b"Z":
            break
    assert seq == [(b"c", b""), (b"C", P.cstr("START_STREAMING")), (b"C", P.cstr("START_REPLICATION")),
                   (b"Z", b"I")]
    assert rows(c.query("IDENTIFY_SYSTEM"))[0][2] == format_lsn(target).encode()
    assert h.shared.walsnd[0].get("state") == 0
    c.close()
    assert h.wait_exit(h.walsender_pid()) == 0


@pytest.mark.timeout(30)
def test_start_errors_ahead_and_history(harness_factory):
    h = harness_factory(tli=2)
    h.start_wal(start_lsn=3 * SEGSIZE)
    flush = h.write_records(2)
    Path(h.pg_wal, "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    port = h.listen_for_walsenders()
    c = RawClient(port)
    ahead = flush + 2 * SEGSIZE
    r = c.query(f"START_REPLICATION {format_lsn(ahead)} TIMELINE 2")
    assert r[0][0] == b"W"      # as PostgreSQL: the error comes after CopyBothResponse
    err = error_fields(r[1][1])
    assert err["M"] == (f"requested starting point {format_lsn(ahead)} is ahead of the WAL flush position "
                        f"of this server {format_lsn(flush)}")
    r = c.query("START_REPLICATION 0/3800000 TIMELINE 1")
    err = error_fields(r[0][1])
    assert err["M"] == "requested starting point 0/3800000 on timeline 1 is not in this server's history"
    assert err["D"] == "This server's history forked from timeline 1 at 0/3000000."
    err = error_fields(c.query("START_REPLICATION 0/3000000 TIMELINE 5")[0][1])
    assert err["M"] == "requested timeline 5 is not in this server's history"
    # Exactly at the switchpoint: no copy at all, just the next timeline.
    r = c.query("START_REPLICATION 0/3000000 TIMELINE 1")
    assert [t for t, _ in r] == [b"T", b"D", b"C", b"C", b"Z"]
    assert columns(r) == [("next_tli", P.INT8OID), ("next_tli_startpos", P.TEXTOID)]
    assert rows(r) == [[b"2", b"0/3000000"]]
    c.close()


@pytest.mark.timeout(60)
def test_end_of_historic_timeline(harness_factory):
    """Streaming timeline 1 ends at the switchpoint with PostgreSQL's next-timeline result."""
    h = harness_factory(tli=1)
    h.start_wal()
    h.write_bytes(SEGSIZE + 100_000)          # into segment 2
    switch = h.writer.insert_lsn
    h.writer.close()
    # Promote: timeline 2 starts at `switch`; segment 2 is copied to the new timeline.
    seg2_tli1 = Path(h.segment_path(2, tli=1)).read_bytes()
    Path(h.segment_path(2, tli=2)).write_bytes(seg2_tli1)
    Path(h.pg_wal, "00000002.history").write_text(f"1\t{format_lsn(switch)}\tno recovery target specified\n")
    with h.shared.xlog.locked():
        h.shared.xlog.set(timeline=2)
    h.publish(switch)
    # The timeline-1 file of the switch segment is gone (as after archive recovery):
    # the walsender must read the switch segment from the timeline-2 copy.
    os.unlink(h.segment_path(2, tli=1))
    port = h.listen_for_walsenders()
    c = RawClient(port)
    streaming_copy(c, f"START_REPLICATION {format_lsn(SEGSIZE)} TIMELINE 1")
    data, start, msgs = read_xlogdata(c, switch)
    assert data == (Path(h.segment_path(1)).read_bytes() + seg2_tli1)[:switch - SEGSIZE]
    t, body = c.recv()
    assert (t, body) == (b"c", b"")
    c.send(P.copy_done())
    tail = c.until(b"Z")
    assert [t for t, _ in tail] == [b"T", b"D", b"C", b"C", b"Z"]
    assert rows(tail) == [[b"2", format_lsn(switch).encode()]]
    assert (b"C", P.cstr("START_STREAMING")) in tail
    c.close()


@pytest.mark.timeout(30)
def test_removed_segment_error(harness_factory):
    h = harness_factory()
    h.start_wal()
    h.write_bytes(2 * SEGSIZE + 1000)
    os.unlink(h.segment_path(1))
    port = h.listen_for_walsenders()
    c = RawClient(port)
    r = c.query(f"START_REPLICATION {format_lsn(SEGSIZE + 8192)} TIMELINE 1")
    assert r[0][0] == b"W"
    err = error_fields(r[1][1])
    assert (err["C"], err["M"]) == ("58P01", "requested WAL segment 000000010000000000000001 has already been removed")
    # oldest_kept_segno says so even while the file is still there.
    with h.shared.xlog.locked():
        h.shared.xlog.set(oldest_kept_segno=3)
    r = c.query(f"START_REPLICATION {format_lsn(2 * SEGSIZE)} TIMELINE 1")
    err = error_fields(r[1][1])
    assert err["M"] == "requested WAL segment 000000010000000000000002 has already been removed"
    assert h.shared.walsnd[0].get("state") == 0
    c.close()
    wait_for(lambda: "requested WAL segment 000000010000000000000001 has already been removed" in h.log_text(),
             10, "the ERROR in the server log")


# ---------------------------------------------------------------- keepalives, timeout, lag
@pytest.mark.timeout(30)
def test_keepalive_and_replication_timeout(harness_factory):
    h = harness_factory(wal_sender_timeout="2s")
    h.start_wal()
    flush = h.write_records(5)
    port = h.listen_for_walsenders()
    c = RawClient(port)
    streaming_copy(c, f"START_REPLICATION {format_lsn(SEGSIZE)} TIMELINE 1")
    data, _, _ = read_xlogdata(c, flush, reply=False)
    t0 = time.monotonic()
    try:
        t, body = c.recv()
    except Exception:
        code = h.wait_exit(h.walsender_pid())
        raise AssertionError(f"walsender exit {code} after {time.monotonic() - t0}: {h.log_text()[-500:]}")
    assert body[:1] == b"k"
    we, _st, rr = struct.unpack_from("!QqB", body, 1)
    assert (we, rr) == (flush, 1)
    assert 0.5 < time.monotonic() - t0 < 2.0      # half of wal_sender_timeout
    # Reply to it, then go silent: the walsender gives up after wal_sender_timeout.
    c.standby_status(flush, flush, flush, reply=True)
    t, body = c.recv()
    assert body[:1] == b"k" and body[-1] == 0      # the reply we asked for
    pid = h.walsender_pid()
    assert h.wait_exit(pid, 10) == 0
    wait_for(lambda: "terminating walsender process due to replication timeout" in h.log_text(), 5, "timeout log")
    c.sock.close()


@pytest.mark.timeout(60)
def test_psycopg2_feedback_updates_slot_and_lag(harness_factory):
    h = harness_factory()
    h.start_wal()
    h.write_records(10)
    port = h.listen_for_walsenders()
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", application_name="pgcopy",
                            connection_factory=psycopg2.extras.PhysicalReplicationConnection)
    try:
        cur = conn.cursor()
        cur.execute("IDENTIFY_SYSTEM")
        sysid, tli, xlogpos, dbname = cur.fetchone()
        assert (sysid, tli, dbname) == (str(SYSID), 1, None)
        cur.start_replication(start_lsn=SEGSIZE, timeline=1)
        target = h.write_bytes(300_000)
        received = SEGSIZE
        deadline = time.monotonic() + 20
        while received < target and time.monotonic() < deadline:
            m = cur.read_message()
            if m is None:
                import select
                select.select([cur], [], [], 0.5)
                continue
            assert m.data_start == received
            received = m.data_start + len(m.payload)
            assert m.wal_end >= received
        assert received == target
        time.sleep(0.05)   # let some lag accrue so it is non-zero
        cur.send_feedback(write_lsn=target, flush_lsn=target, apply_lsn=SEGSIZE + 100, reply=True, force=True)
        slot = h.shared.walsnd[0]
        wait_for(lambda: slot.get("write_lsn") == target, 10, "write position in the slot")
        s = slot.snapshot()
        assert s["flush_lsn"] == target and s["replay_lsn"] == SEGSIZE + 100
        assert s["application_name"] == "pgcopy"
        assert s["write_lag_us"] > 0 and s["flush_lag_us"] > 0
        assert abs(s["reply_time_us"] / 1e6 - time.time()) < 5
        assert s["state"] == 3
        # apply behind: its lag is interpolated / from the next sample, so known too.
        assert s["replay_lag_us"] > 0
    finally:
        conn.close()
    assert h.wait_exit(h.walsender_pid()) == 0


# ---------------------------------------------------------------- shutdown
@pytest.mark.timeout(60)
def test_shutdown_sends_everything_then_copy_0(harness_factory):
    h = harness_factory()
    h.start_wal()
    h.write_records(5)
    port = h.listen_for_walsenders()
    c = RawClient(port)
    streaming_copy(c, f"START_REPLICATION {format_lsn(SEGSIZE)} TIMELINE 1")
    final = h.write_bytes(400_000)
    pid = h.walsender_pid()
    os.kill(pid, signal.SIGUSR2)
    got = SEGSIZE
    seen_complete = None
    while True:
        t, body = c.recv()
        if t == b"d" and body[:1] == b"w":
            ds = struct.unpack_from("!Q", body, 1)[0]
            got = ds + len(body) - 25
        elif t == b"d" and body[:1] == b"k":
            if body[-1]:
                c.standby_status(got, got, got)
        else:
            seen_complete = (t, body)
            break
    assert got == final
    assert seen_complete == (b"C", P.cstr("COPY 0"))
    assert h.wait_exit(pid) == 0
    stop = h.events_of("walsender_stop")[-1]
    assert stop["sent_lsn"] == format_lsn(final)
    c.sock.close()


@pytest.mark.timeout(30)
def test_idle_walsender_exits_on_sigterm_and_on_postmaster_death(harness_factory):
    h = harness_factory()
    h.start_wal()
    port = h.listen_for_walsenders()
    c = RawClient(port)
    pid = h.walsender_pid()
    os.kill(pid, signal.SIGTERM)
    t, body = c.recv()
    assert t == b"E" and error_fields(body)["C"] == "57P01"
    assert h.wait_exit(pid) == 0
    c.sock.close()
    c2 = RawClient(port)
    pid2 = h.accepted[-1]
    streaming_copy(c2, f"START_REPLICATION {format_lsn(SEGSIZE)} TIMELINE 1")
    h.postmaster_death()
    assert h.wait_exit(pid2) == 1
    c2.sock.close()


# ---------------------------------------------------------------- pg_receivewal
def run_receivewal(port: int, outdir: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    outdir.mkdir(exist_ok=True)
    return subprocess.run([pg_tool("pg_receivewal"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                           "-D", str(outdir), "--no-loop", "-v", "-w", *extra],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(90)
def test_pg_receivewal_receives_identical_segments(harness_factory, tmp_path):
    h = harness_factory()
    h.start_wal()
    h.write_records(3)
    port = h.listen_for_walsenders()
    out = tmp_path / "recv"
    out.mkdir()
    proc = subprocess.Popen([pg_tool("pg_receivewal"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                             "-D", str(out), "--no-loop", "-v", "-w", "-s", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: h.shared.walsnd[0].get("state") == 3, 20, "pg_receivewal streaming")
        final = 0
        for _ in range(6):                 # live writes, segment switches included
            final = h.write_bytes(600_000)
        final = h.switch()
        final = h.write_bytes(100_000)
        wait_for(lambda: h.shared.walsnd[0].get("write_lsn") >= final, 30, "pg_receivewal to confirm the end")
        os.kill(h.walsender_pid(), signal.SIGUSR2)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last_seg = final // SEGSIZE
    for segno in range(1, last_seg):
        name = segment_name(1, segno, SEGSIZE)
        assert (out / name).read_bytes() == Path(h.segment_path(segno)).read_bytes(), name
    partial = out / (segment_name(1, last_seg, SEGSIZE) + ".partial")
    got = partial.read_bytes()
    src = Path(h.segment_path(last_seg)).read_bytes()
    upto = final - last_seg * SEGSIZE
    assert got[:upto] == src[:upto]
    assert not got[upto:].strip(b"\0")
    # Shutdown ends the stream as PostgreSQL's does (CommandComplete, not an error).
    assert "replication stream was terminated before stop point" in err, err


@pytest.mark.timeout(60)
def test_pg_receivewal_endpos_and_removed_segment(harness_factory, tmp_path):
    h = harness_factory()
    h.start_wal()
    h.write_bytes(2 * SEGSIZE + 50_000)
    flush = h.flush()
    port = h.listen_for_walsenders()
    out = tmp_path / "recv1"
    p = run_receivewal(port, out, "-E", format_lsn(flush - 1))
    assert p.returncode == 0, p.stderr
    assert f"stopped log streaming at {format_lsn(flush)} (timeline 1)" in p.stderr, p.stderr
    name = segment_name(1, 3, SEGSIZE)
    assert (out / (name + ".partial")).read_bytes()[:flush % SEGSIZE] == \
        Path(h.segment_path(3)).read_bytes()[:flush % SEGSIZE]
    # Now the segment it needs is gone (archived and removed).
    os.unlink(h.segment_path(3))
    out2 = tmp_path / "recv2"
    p = run_receivewal(port, out2)
    assert p.returncode != 0
    assert "requested WAL segment 000000010000000000000003 has already been removed" in p.stderr, p.stderr


@pytest.mark.timeout(90)
def test_pg_receivewal_follows_timeline_switch(harness_factory, tmp_path):
    h = harness_factory(tli=1)
    h.start_wal()
    h.write_bytes(SEGSIZE + 100_000)
    switch = h.writer.insert_lsn
    h.writer.close()
    seg2 = Path(h.segment_path(2, tli=1)).read_bytes()
    Path(h.segment_path(2, tli=2)).write_bytes(seg2)
    hist = f"1\t{format_lsn(switch)}\tno recovery target specified\n"
    Path(h.pg_wal, "00000002.history").write_text(hist)
    h.tli = 2
    with h.shared.xlog.locked():
        h.shared.xlog.set(timeline=2)
    from xlog.writer import WalWriter
    h.writer = WalWriter(h.pg_wal, 2, SEGSIZE, SYSID, switch, 0)
    final = h.write_bytes(200_000)
    port = h.listen_for_walsenders()
    out = tmp_path / "recv"
    out.mkdir()
    share_with_postgres(out)
    # pg_receivewal resumes from a partial timeline-1 segment 1.
    (out / (segment_name(1, 1, SEGSIZE) + ".partial")).write_bytes(Path(h.segment_path(1, tli=1)).read_bytes())
    p = run_receivewal(port, out, "-E", format_lsn(final - 1))
    assert p.returncode == 0, p.stderr
    assert f"switched to timeline 2 at {format_lsn(switch)}" in p.stderr, p.stderr
    assert (out / "00000002.history").read_text() == hist
    assert (out / segment_name(1, 1, SEGSIZE)).read_bytes() == Path(h.segment_path(1, tli=1)).read_bytes()
    # Timeline 1's segment 2 up to the switch, then timeline 2's segment 2 from its start.
    got1 = (out / (segment_name(1, 2, SEGSIZE) + ".partial")).read_bytes()
    assert got1[:switch % SEGSIZE] == seg2[:switch % SEGSIZE]
    got2 = (out / (segment_name(2, 2, SEGSIZE) + ".partial")).read_bytes()
    src2 = Path(h.segment_path(2, tli=2)).read_bytes()
    assert got2[:final % SEGSIZE] == src2[:final % SEGSIZE]


@pytest.mark.timeout(30)
def test_shutdown_with_stalled_client_is_bounded(harness_factory, monkeypatch):
    import walsender.walsender as ws
    monkeypatch.setattr(ws, "SHUTDOWN_CONFIRM_WAIT", 1.0)     # inherited by the forked walsender
    h = harness_factory()
    h.start_wal()
    h.write_records(2)
    port = h.listen_for_walsenders()
    c = RawClient(port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    streaming_copy(c, f"START_REPLICATION {format_lsn(SEGSIZE)} TIMELINE 1")
    h.write_bytes(6 * SEGSIZE)          # far more than the socket buffers hold; the client reads nothing
    pid = h.walsender_pid()
    wait_for(lambda: 0 < h.shared.walsnd[0].get("sent_lsn") < h.shared.xlog.get("flush_lsn"), 10, "a stall")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGUSR2)
    assert h.wait_exit(pid, 10) == 0
    assert time.monotonic() - t0 < 5
    wait_for(lambda: "before shutdown" in h.log_text(), 5, "the give-up log line")
    c.sock.close()
