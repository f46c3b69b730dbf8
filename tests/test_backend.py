"""The backend process under a test harness (no postmaster): tests/test_backend_harness.py.

Real sockets, real clients (psycopg2, psql, pgbench), real WAL files and the
real key/value store; shared memory made by the harness the way the
postmaster and the startup process would make it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from storage.kvstore import KVStore, dump
from startup.redo import Redo
from tests.test_backend_harness import PGBIN, BackendHarness
from xlog import constants as C
from xlog.control import DBState, read_control
from xlog.lsn import parse_lsn, segment_name
from xlog.reader import WalReader
from xlog.record import CheckPoint


@pytest.fixture
def backend(tmp_path):
    made: list[BackendHarness] = []

    def make(**kw) -> BackendHarness:
        h = BackendHarness(str(tmp_path / f"data{len(made)}"), **kw)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.stop()


def wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def stays(pred, seconds: float, what: str) -> None:
    """The condition holds for the whole period (a bounded check that nothing happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), f"{what}: condition broke"
        time.sleep(0.05)


def wal_records(datadir: str):
    cf = read_control(datadir)
    # from the first segment on
    r = WalReader.from_dir(os.path.join(datadir, "pg_wal"), cf.wal_segsize, cf.timeline, 0x100000 + 40,
                           expected_sysid=cf.system_identifier)
    out = []
    while (rec := r.read_record()) is not None:
        out.append(rec)
    return out


def replay(datadir: str, from_lsn: int = 0x100000 + 40) -> dict[str, str]:
    """Apply all committed transactions of the WAL to a fresh store: the data the WAL says exists."""
    cf = read_control(datadir)
    tmp = os.path.join(datadir, "replay.sqlite")
    store = KVStore(tmp)
    redo = Redo(store, cf.timeline)
    r = WalReader.from_dir(os.path.join(datadir, "pg_wal"), cf.wal_segsize, cf.timeline, from_lsn,
                           expected_sysid=cf.system_identifier)
    while (rec := r.read_record()) is not None:
        redo.apply(rec)
    redo.flush()
    out = dict(store.items())
    store.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp + suffix)
    return out


class RawClient:
    """A protocol-level client: startup done, then raw messages."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
        self.s.sendall(struct.pack("!I", len(body) + 4) + body)
        self.buf = b""
        while b"Z\x00\x00\x00\x05I" not in self.buf:
            chunk = self.s.recv(65536)
            assert chunk, "closed during startup"
            self.buf += chunk
        self.buf = b""

    @staticmethod
    def msg(t: bytes, b: bytes) -> bytes:
        return t + struct.pack("!I", len(b) + 4) + b

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def read_until(self, n_ready: int) -> bytes:
        while self.buf.count(b"Z\x00\x00\x00\x05") < n_ready:
            chunk = self.s.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        return self.buf

    def read_all(self) -> bytes:
        while True:
            try:
                chunk = self.s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            self.buf += chunk
        return self.buf

    def close(self) -> None:
        self.s.close()


# ---------------------------------------------------------------- basics

@pytest.mark.timeout(60)
def test_psycopg2_write_read_and_wal(backend):
    h = backend()
    c = h.connect()                      # default: not autocommit (psycopg2 sends BEGIN)
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES (%s, %s)", ("a", "1"))
    cur.execute("INSERT INTO kv (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                ("b", "it's"))
    assert cur.rowcount == 1
    cur.execute("SELECT value FROM kv WHERE key = %s", ("b",))
    assert cur.fetchall() == [("it's",)]
    c.commit()
    cur.execute("SELECT * FROM kv ORDER BY key")
    assert cur.fetchall() == [("a", "1"), ("b", "it's")]
    cur.execute("SELECT count(*) FROM kv")
    assert cur.fetchone() == (2,)
    cur.execute("SELECT pg_current_wal_lsn(), pg_is_in_recovery()")
    lsn, rec = cur.fetchone()
    c.commit()
    c.close()
    assert rec is False
    rows, applied = dump(h.datadir)
    assert rows == [("a", "1"), ("b", "it's")]
    assert applied <= parse_lsn(lsn)
    recs = wal_records(h.datadir)
    kinds = [(r.rmid, r.info & 0xF0) for r in recs]
    assert kinds[:4] == [(C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN), (C.RM_KV_ID, C.KV_PUT),
                         (C.RM_KV_ID, C.KV_PUT), (C.RM_XACT_ID, C.XLOG_XACT_COMMIT)]
    assert recs[1].xid == recs[2].xid == recs[3].xid == 3
    assert recs[3].next_lsn == applied
    assert replay(h.datadir) == {"a": "1", "b": "it's"}
    # published in shared memory
    assert h.shared.xlog.get("flush_lsn") >= applied


@pytest.mark.timeout(60)
def test_rollback_leaves_nothing(backend):
    h = backend()
    c = h.connect()
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES ('r', '1')")
    cur.execute("SELECT count(*) FROM kv")
    assert cur.fetchone() == (1,)
    c.rollback()
    cur.execute("SELECT count(*) FROM kv")
    assert cur.fetchone() == (0,)
    c.commit()
    c.close()
    assert dump(h.datadir)[0] == []
    # an abort record is not flushed by itself (as in PostgreSQL): the shutdown checkpoint does
    h.signal(signal.SIGTERM)
    assert h.wait_exit() == 0
    recs = wal_records(h.datadir)
    assert [(r.rmid, r.info & 0x70 if r.rmid == C.RM_XACT_ID else r.info & 0xF0) for r in recs[1:]] == [
        (C.RM_KV_ID, C.KV_PUT), (C.RM_XACT_ID, C.XLOG_XACT_ABORT), (C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN)]
    assert replay(h.datadir) == {}


@pytest.mark.timeout(60)
def test_errors_keep_connection_usable(backend):
    h = backend()
    c = h.connect(autocommit=True)
    cur = c.cursor()
    for q, code in [("FOO BAR", "42601"), ("SELECT * FROM nosuch", "42P01"), ("SELECT nosuch()", "42883"),
                    ("SHOW nosuch", "42704"), ("SELECT 1/0", "22012")]:
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute(q)
        assert ei.value.pgcode == code, q
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    c.autocommit = False
    cur.execute("INSERT INTO kv VALUES ('x', 'y')")
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELEC 1")
    assert ei.value.pgcode == "42601"
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT 1")
    assert ei.value.pgcode == "25P02"
    c.rollback()
    cur.execute("SELECT count(*) FROM kv")
    assert cur.fetchone() == (0,)
    c.close()


@pytest.mark.timeout(60)
def test_psql(backend):
    h = backend()

    def psql(q: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(PGBIN / "psql"), "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(h.port),
                               "-U", "postgres", "-d", "postgres", *extra, "-c", q],
                              capture_output=True, text=True, timeout=30)

    p = psql("INSERT INTO kv VALUES ('p1', 'v1'); INSERT INTO kv VALUES ('p2', 'v2'); SELECT count(*) FROM kv")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "2"
    p = psql("SELECT * FROM kv ORDER BY key")
    assert p.stdout.split() == ["p1|v1", "p2|v2"]
    p = psql("SELEC 1")
    assert p.returncode == 1 and 'ERROR:  syntax error at or near "SELEC"' in p.stderr
    p = psql("SHOW wal_segment_size")
    assert p.stdout.strip() == "1MB"
    # a script with a transaction, as a file
    script = Path(h.datadir, "s.sql")
    script.write_text("BEGIN;\nINSERT INTO kv VALUES ('p3', 'v3');\nROLLBACK;\nSELECT count(*) FROM kv;\n")
    p = subprocess.run([str(PGBIN / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(h.port), "-U",
                        "postgres", "-d", "postgres", "-f", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.split()[-1] == "2", p.stderr


@pytest.mark.timeout(60)
def test_extended_protocol_then_simple_query(backend):
    """Parse/Bind/Execute/Sync of the unnamed statement, then a simple Query on the same connection.

    (Until issue 9 the extended protocol was refused with 0A000; this test asserted that.)"""
    h = backend()
    c = RawClient(h.port)
    m = c.msg
    c.send(m(b"P", b"\0SELECT 1\0\0\0") + m(b"B", b"\0\0\0\0\0\0\0\0") + m(b"E", b"\0\0\0\0\0")
           + m(b"S", b"") + m(b"Q", b"SELECT 42\0"))
    buf = c.read_until(2)
    assert buf.startswith(b"1\0\0\0\x04" + b"2\0\0\0\x04")           # ParseComplete, BindComplete
    assert b"SELECT 1\0" in buf and b"42" in buf and b"E\x00" not in buf
    c.send(m(b"X", b""))
    c.close()


@pytest.mark.timeout(60)
def test_max_connections(backend):
    h = backend(conf={"max_connections": 2})
    a, b = h.connect(), h.connect()
    with pytest.raises(psycopg2.OperationalError) as ei:
        h.connect()
    assert "sorry, too many clients already" in str(ei.value)
    a.close()
    wait_for(lambda: _can_connect(h), what="a free slot")
    b.close()


def _can_connect(h) -> bool:
    try:
        h.connect().close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.mark.timeout(60)
def test_cancel_request_just_closes(backend):
    h = backend()
    c = h.connect()
    c.cancel()                      # libpq's PQcancel: a CancelRequest on a new connection
    cur = c.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    c.close()


# ---------------------------------------------------------------- concurrency and group commit

@pytest.mark.timeout(120)
def test_concurrent_commits_are_durable_before_ack(backend):
    h = backend()
    acked: dict[str, str] = {}
    lock = threading.Lock()
    errs = []

    def worker(n: int) -> None:
        try:
            c = h.connect(autocommit=True)
            cur = c.cursor()
            for i in range(150):
                k = f"w{n}-{i}"
                cur.execute("INSERT INTO kv VALUES (%s, %s)", (k, str(i)))
                with lock:
                    acked[k] = str(i)
            c.close()
        except Exception as e:  # noqa: BLE001
            errs.append(e)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    assert len(acked) == 900
    assert dict(dump(h.datadir)[0]) == acked
    assert replay(h.datadir) == acked
    # xids are unique per transaction
    xids = [r.xid for r in wal_records(h.datadir) if r.rmid == C.RM_XACT_ID]
    assert len(xids) == len(set(xids)) == 900


@pytest.mark.timeout(120)
def test_acknowledged_commit_is_visible_to_every_session_at_once(backend):
    """Under concurrent commits (group commit flushes in the background while it serves the other
    clients), a commit is answered only once another session's next statement sees it."""
    h = backend()
    errs: list[str] = []

    def worker(n: int) -> None:
        try:
            c = h.connect(autocommit=True)
            reader = h.connect(autocommit=True)
            cur, rcur = c.cursor(), reader.cursor()
            for i in range(200):
                k = f"v{n}-{i}"
                cur.execute("INSERT INTO kv VALUES (%s, %s)", (k, str(i)))
                rcur.execute("SELECT value FROM kv WHERE key = %s", (k,))
                if rcur.fetchall() != [(str(i),)]:
                    errs.append(f"{k} not visible to another session after its commit was answered")
            c.close()
            reader.close()
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    assert not errs, errs[:3]
    assert len(replay(h.datadir)) == 1200


@pytest.mark.timeout(120)
def test_kill9_never_loses_an_acknowledged_commit(backend):
    """SIGKILL the backend under load: every acknowledged commit is in the WAL."""
    h = backend()
    acked: set[str] = set()
    stop = threading.Event()

    def worker(n: int) -> None:
        try:
            c = h.connect(autocommit=True)
            cur = c.cursor()
            i = 0
            while not stop.is_set():
                k = f"k{n}-{i}"
                cur.execute("INSERT INTO kv VALUES (%s, 'v')", (k,))
                acked.add(k)
                i += 1
        except psycopg2.Error:
            pass

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in ts:
        t.start()
    wait_for(lambda: len(acked) > 300, what="some commits")
    h.signal(signal.SIGKILL)
    h.wait_exit()
    stop.set()
    for t in ts:
        t.join()
    in_wal = replay(h.datadir)
    assert acked <= set(in_wal)
    # the store never runs ahead of the WAL, and what it has is a prefix of the WAL's commits
    store_rows, applied = dump(h.datadir)
    assert set(dict(store_rows)) <= set(in_wal)


@pytest.mark.timeout(120)
def test_pgbench(backend):
    h = backend()
    script = Path(h.datadir, "insert.sql")
    script.write_text("\\set id random(1, 100000)\nINSERT INTO kv VALUES (:id, 'x') "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n")
    p = subprocess.run([str(PGBIN / "pgbench"), "-n", "-M", "simple", "-f", str(script), "-c", "4", "-j", "2",
                        "-T", "5", "-h", "127.0.0.1", "-p", str(h.port), "-U", "postgres", "postgres"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "number of failed transactions: 0" in p.stdout, p.stdout
    tps = float(p.stdout.split("tps = ")[1].split()[0])
    print(f"pgbench tps={tps:.0f}")
    assert tps > 100
    n = int(p.stdout.split("number of transactions actually processed: ")[1].split("/")[0].split()[0])
    assert n > 0
    rows = dict(dump(h.datadir)[0])
    assert replay(h.datadir) == rows


# ---------------------------------------------------------------- WAL switch, archive status, checkpoints

@pytest.mark.timeout(60)
def test_switch_wal_and_archive_status(backend):
    h = backend(conf={"archive_mode": "on", "archive_command": "true"})
    c = h.connect(autocommit=True)
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES ('s', '1')")
    cur.execute("SELECT pg_switch_wal()")
    lsn = parse_lsn(cur.fetchone()[0])
    assert 0x100000 < lsn < 0x200000
    seg1 = segment_name(1, 1, 1 << 20)
    cur.execute("SELECT pg_walfile_name(pg_switch_wal())")    # nothing new: stays
    cur.execute("SELECT pg_walfile_name(%s)", (f"0/{lsn:X}",))
    assert cur.fetchone() == (seg1,)
    assert os.path.exists(os.path.join(h.datadir, "pg_wal", "archive_status", seg1 + ".ready"))
    assert h.shared.latches["archiver"].wait(0) is True
    cur.execute("SELECT pg_current_wal_lsn()")
    assert parse_lsn(cur.fetchone()[0]) == 0x200000
    cur.execute("INSERT INTO kv VALUES ('s2', '2')")
    c.close()
    evs = [json.loads(l) for l in Path(h.datadir, "log", "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "switch" for e in evs)
    assert replay(h.datadir) == {"s": "1", "s2": "2"}


@pytest.mark.timeout(60)
def test_checkpoint_removes_old_segments(backend):
    h = backend(conf={"archive_mode": "on", "archive_command": "true"})
    c = h.connect(autocommit=True)
    cur = c.cursor()
    for i in range(3):
        cur.execute(f"INSERT INTO kv VALUES ('c{i}', '{i}')")
        cur.execute("SELECT pg_switch_wal()")
    pg_wal = os.path.join(h.datadir, "pg_wal")
    segs = lambda: sorted(n for n in os.listdir(pg_wal) if len(n) == 24)  # noqa: E731
    assert segs()[0] == segment_name(1, 1, 1 << 20)
    cur.execute("CHECKPOINT")
    # not archived yet: kept
    assert segs()[0] == segment_name(1, 1, 1 << 20)
    from xlog.archive_status import list_ready, mark_done
    for name in list_ready(pg_wal):
        mark_done(pg_wal, name)
    cur.execute("BEGIN")
    cur.execute("INSERT INTO kv VALUES ('open', 'txn')")         # an open transaction holds redo back
    c2 = h.connect(autocommit=True)
    c2.cursor().execute("CHECKPOINT")
    cf = read_control(h.datadir)
    assert cf.state == DBState.IN_PRODUCTION
    assert cf.redo_lsn < cf.checkpoint_lsn
    assert segs()[0] == segment_name(1, 4, 1 << 20)
    assert h.shared.xlog.get("oldest_kept_segno") == 4
    assert h.shared.xlog.get("checkpoint_lsn") == cf.checkpoint_lsn
    cur.execute("COMMIT")
    # replay from the checkpoint's redo point sees all of the transaction that was open
    assert replay(h.datadir, cf.redo_lsn) == {"open": "txn"}
    assert dict(dump(h.datadir)[0]) == {"c0": "0", "c1": "1", "c2": "2", "open": "txn"}
    c2.close()
    c.close()
    assert "checkpoint complete: " in h.log_text()


@pytest.mark.timeout(60)
def test_checkpoint_requested_through_shared_memory(backend):
    h = backend()
    h.sql("INSERT INTO kv VALUES ('a', 'b')")
    before = read_control(h.datadir).checkpoint_lsn
    with h.shared.pm.locked() as pm:
        pm.set(checkpoint_requested=pm.get("checkpoint_requested") + 1)
    wait_for(lambda: read_control(h.datadir).checkpoint_lsn != before, what="a checkpoint")


@pytest.mark.timeout(60)
def test_archive_timeout(backend):
    h = backend(conf={"archive_timeout": 1, "archive_mode": "on", "archive_command": "true"})
    h.sql("INSERT INTO kv VALUES ('a', 'b')")
    seg1 = segment_name(1, 1, 1 << 20)
    wait_for(lambda: os.path.exists(os.path.join(h.datadir, "pg_wal", "archive_status", seg1 + ".ready")),
             timeout=10, what="archive_timeout switch")


# ---------------------------------------------------------------- shutdown

@pytest.mark.timeout(60)
def test_fast_shutdown_checkpoint(backend):
    h = backend()
    c = h.connect()
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES ('committed', '1')")
    c.commit()
    cur.execute("INSERT INTO kv VALUES ('open', '1')")   # left open
    raw = RawClient(h.port)
    h.signal(signal.SIGTERM)
    assert h.wait_exit() == 0
    assert b"57P01" in raw.read_all() and b"terminating connection due to administrator command" in raw.buf
    raw.close()
    with pytest.raises(psycopg2.Error):
        cur.execute("SELECT 1")
    cf = read_control(h.datadir)
    assert cf.state == DBState.SHUTDOWNED and cf.redo_lsn == cf.checkpoint_lsn
    recs = wal_records(h.datadir)
    last = recs[-1]
    assert (last.rmid, last.info & 0xF0) == (C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN)
    assert last.lsn == cf.checkpoint_lsn
    cp = CheckPoint.unpack(last.main_data)
    assert cp.next_xid == 5 and cp.redo == last.lsn
    assert (recs[-2].rmid, recs[-2].info & 0x70) == (C.RM_XACT_ID, C.XLOG_XACT_ABORT)
    assert dump(h.datadir)[0] == [("committed", "1")]
    assert "shutting down" in h.log_text()


@pytest.mark.timeout(60)
def test_smart_shutdown_waits_for_sessions(backend):
    h = backend()
    c = h.connect(autocommit=True)
    h.signal(signal.SIGINT)
    wait_for(lambda: not _can_connect(h), what="new connections refused")
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES ('late', '1')")      # an existing session goes on
    assert h.poll() is None
    c.close()
    assert h.wait_exit() == 0
    assert read_control(h.datadir).state == DBState.SHUTDOWNED
    assert dump(h.datadir)[0] == [("late", "1")]


@pytest.mark.timeout(60)
def test_restart_after_shutdown_continues_wal_and_xids(backend, tmp_path):
    h = backend()
    h.sql("INSERT INTO kv VALUES ('one', '1')")
    h.signal(signal.SIGTERM)
    assert h.wait_exit() == 0
    h.stop()
    h2 = BackendHarness(h.datadir, create=False)
    try:
        h2.start()
        h2.sql("INSERT INTO kv VALUES ('two', '2')")
        xids = [r.xid for r in wal_records(h.datadir) if r.rmid == C.RM_XACT_ID]
        assert xids == [3, 4]
        assert replay(h.datadir) == {"one": "1", "two": "2"}
    finally:
        h2.stop()


@pytest.mark.timeout(60)
def test_postmaster_death(backend):
    h = backend()
    c = h.connect()
    os.close(h.death_w)
    assert h.wait_exit() == 1
    c.close()


# ---------------------------------------------------------------- hand-off and standby

@pytest.mark.timeout(60)
def test_replication_connection_handed_off(backend):
    h = backend()
    got = {}

    def postmaster_side():
        h.handoff_parent.settimeout(20)
        msg, fds, _f, _a = socket.recv_fds(h.handoff_parent, 65536, 1)
        got["params"] = json.loads(msg.decode().splitlines()[0])
        conn = socket.socket(fileno=fds[0])
        # play walsender: answer the client ourselves
        from libpq import protocol as P
        conn.sendall(P.startup_greeting(P.default_server_params(), 1, 1))
        got["conn"] = conn

    t = threading.Thread(target=postmaster_side)
    t.start()
    from psycopg2.extras import PhysicalReplicationConnection
    c = psycopg2.connect(h.dsn(), connection_factory=PhysicalReplicationConnection)
    t.join()
    assert got["params"]["replication"] == "true" and got["params"]["user"] == "postgres"
    c.close()
    got["conn"].close()
    # the backend still serves normal clients
    assert h.sql("SELECT 1") == [(1,)]


@pytest.mark.timeout(60)
def test_hot_standby_read_only_and_promote(backend):
    h = backend(standby=True)
    # the "startup process" applies something
    store = KVStore(h.datadir)
    store.apply([("put", "replayed", "yes")], 0x100100, 1)
    store.close()
    with h.shared.recovery.locked() as r:
        r.set(replay_lsn=0x100100)
    with h.shared.walrcv.locked() as w:
        w.set(pid=4321, state=2, flushed_lsn=0x100200)
    c = h.connect(autocommit=True)
    cur = c.cursor()
    cur.execute("SELECT value FROM kv WHERE key = 'replayed'")
    assert cur.fetchone() == ("yes",)
    cur.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()")
    assert cur.fetchone() == (True, "0/100100", "0/100200")
    cur.execute("SELECT pid, status FROM pg_stat_wal_receiver")
    assert cur.fetchall() == [(4321, "streaming")]
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("INSERT INTO kv VALUES ('a', 'b')")
    assert ei.value.pgcode == "25006"
    assert str(ei.value).startswith("cannot execute INSERT in a read-only transaction")
    cur.execute("SHOW in_hot_standby")
    assert cur.fetchone() == ("on",)
    # pg_promote: flags raised, then waits for in_recovery = 0
    result = {}

    def promote():
        c2 = h.connect(autocommit=True)
        cur2 = c2.cursor()
        cur2.execute("SELECT pg_promote(true, 30)")
        result["r"] = cur2.fetchone()[0]
        c2.close()

    t = threading.Thread(target=promote)
    t.start()
    wait_for(lambda: h.shared.pm.get("promote_requested") == 1, what="promote flag")
    assert h.shared.recovery.get("promote_requested") == 1
    # other sessions are served meanwhile
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    h.shared.xlog.update(in_recovery=0)
    t.join(20)
    assert result == {"r": True}
    c.close()
    # promoted in place, the backend is now the WAL inserter: its shutdown writes the checkpoint
    before = read_control(h.datadir)
    h.signal(signal.SIGTERM)
    assert h.wait_exit() == 0
    after = read_control(h.datadir)
    assert after.checkpoint_lsn > before.checkpoint_lsn and after.state == DBState.SHUTDOWNED


@pytest.mark.timeout(60)
def test_timed_checkpoint_only_after_activity(backend):
    h = backend(conf={"checkpoint_timeout": 1})
    ckpts = lambda: [e for e in map(json.loads, Path(h.datadir, "log", "events.jsonl").read_text().splitlines())  # noqa: E731
                     if e["kind"] == "checkpoint"]
    h.sql("INSERT INTO kv VALUES ('a', 'b')")
    wait_for(lambda: len(ckpts()) == 1, 10, "a timed checkpoint")
    assert ckpts()[0]["reason"] == "time"
    # idle for more than two checkpoint_timeouts: nothing to do
    stays(lambda: len(ckpts()) == 1, 2.5, "no checkpoint while idle")
    h.sql("INSERT INTO kv VALUES ('c', 'd')")
    wait_for(lambda: len(ckpts()) == 2, 10, "a second timed checkpoint")


@pytest.mark.timeout(60)
def test_wal_keep_size_retains_segments(backend):
    h = backend(conf={"wal_keep_size": "3MB"})
    c = h.connect(autocommit=True)
    cur = c.cursor()
    for i in range(6):
        cur.execute(f"INSERT INTO kv VALUES ('k{i}', repeat('x', 100))")
        cur.execute("SELECT pg_switch_wal()")
    cur.execute("CHECKPOINT")
    pg_wal = os.path.join(h.datadir, "pg_wal")
    segs = sorted(n for n in os.listdir(pg_wal) if len(n) == 24)
    # current segment 7 (the checkpoint record is in it): keep 7 - 3 = 4 onwards
    assert segs[0] == segment_name(1, 4, 1 << 20) and segs[-1] == segment_name(1, 7, 1 << 20)
    assert h.shared.xlog.get("oldest_kept_segno") == 4
    c.close()


@pytest.mark.timeout(60)
def test_sleeping_session_does_not_block_others(backend):
    h = backend()
    done = {}

    def sleeper():
        c = h.connect(autocommit=True)
        t0 = time.monotonic()
        done["started"] = True
        c.cursor().execute("SELECT pg_sleep(1.5)")
        done["t"] = time.monotonic() - t0
        c.close()

    t = threading.Thread(target=sleeper)
    t.start()
    wait_for(lambda: done.get("started"), 10, "the sleeper")
    t0 = time.monotonic()
    h.sql("INSERT INTO kv VALUES ('x', 'y')")
    assert time.monotonic() - t0 < 1.0
    t.join()
    assert 1.4 < done["t"] < 5


@pytest.mark.timeout(60)
def test_big_value_spans_segments(backend):
    h = backend()
    h.sql("INSERT INTO kv VALUES ('big', repeat('0123456789', 300000))")      # 3 MB: spans 1 MB segments
    h.sql("INSERT INTO kv VALUES ('small', 'after')")
    assert h.sql("SELECT length(value) FROM kv WHERE key = 'big'") == [(3_000_000,)]
    got = replay(h.datadir)
    assert len(got["big"]) == 3_000_000 and got["small"] == "after"
