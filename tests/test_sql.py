"""The SQL surface and the key/value store as units (no server, no WAL files).

``FakeEngine`` stands in for the backend: it records the "WAL" it is asked
to write as a list and applies a commit at once, so the tests see what the
executor asks for (records, tags, errors, transaction states).
"""
from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libpq import protocol as P
from backend import sql
from storage.kvstore import KVStore, dump, kv_path
from libpq.protocol import SQLError
from backend.sql import CommitWait, Engine, Session, Until
from utils.config import Config, SETTINGS


# ---------------------------------------------------------------- helpers

class FakeEngine(Engine):
    def __init__(self, store: KVStore, recovery: bool = False):
        self.store = store
        self.config = Config({s.name: s.default for s in SETTINGS.values()}, {})
        self.shared = None
        self.datadir = "/tmp/x"
        self.recovery = recovery
        self.wal: list[tuple] = []
        self.lsn = 0x1000000
        self.next_xid = 3
        self.checkpoints = 0
        self.promote_requested = False

    def in_recovery(self) -> bool:
        return self.recovery

    def _rec(self, *what) -> int:
        self.wal.append(what)
        self.lsn += 64
        return self.lsn

    def log_change(self, txn, op, key, value):
        if not txn.xid:
            txn.xid = self.next_xid
            self.next_xid += 1
        start = self.lsn
        self._rec("kv", txn.xid, op, key, value)
        if txn.first_lsn is None:
            txn.first_lsn = start

    def log_commit(self, txn):
        if not txn.xid:
            return None
        end = self._rec("commit", txn.xid)
        return CommitWait(txn, end)

    def log_abort(self, txn):
        self._rec("abort", txn.xid)

    def wal_position(self, which):
        return self.lsn

    def switch_wal(self):
        return self._rec("switch")

    def checkpoint(self):
        self.checkpoints += 1

    def request_promote(self):
        self.promote_requested = True


def run(session: Session, query: str, engine: FakeEngine | None = None) -> list[tuple[bytes, bytes]]:
    """Run a query to the end (commits applied at once); return the messages."""
    gen = session.run(query)
    for w in gen:
        if isinstance(w, CommitWait):
            session.engine.store.apply(w.txn.changes, w.end_lsn, 1)
        elif isinstance(w, Until):
            pass
    r = P.MessageReader()
    r.feed(bytes(session.out))
    session.out.clear()
    out = []
    while (m := r.next()) is not None:
        out.append(m)
    return out


def fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode()
    return out


def tags(msgs) -> list[str]:
    return [b.rstrip(b"\0").decode() for t, b in msgs if t == b"C"]


def errors(msgs) -> list[tuple[str, str]]:
    return [(fields(b)["C"], fields(b)["M"]) for t, b in msgs if t == b"E"]


def notices(msgs) -> list[tuple[str, str]]:
    return [(fields(b)["C"], fields(b)["M"]) for t, b in msgs if t == b"N"]


def rows(msgs) -> list[list[str | None]]:
    out = []
    for t, b in msgs:
        if t != b"D":
            continue
        (n,) = struct.unpack_from("!H", b)
        pos, row = 2, []
        for _ in range(n):
            (ln,) = struct.unpack_from("!i", b, pos)
            pos += 4
            if ln < 0:
                row.append(None)
            else:
                row.append(b[pos:pos + ln].decode())
                pos += ln
        out.append(row)
    return out


def columns(msgs) -> list[tuple[str, int]]:
    for t, b in msgs:
        if t == b"T":
            (n,) = struct.unpack_from("!H", b)
            pos, out = 2, []
            for _ in range(n):
                end = b.index(b"\0", pos)
                name = b[pos:end].decode()
                pos = end + 1
                _tbl, _att, typ, _sz, _mod, _fmt = struct.unpack_from("!IhIhih", b, pos)
                pos += 18
                out.append((name, typ))
            return out
    return []


@pytest.fixture
def store(tmp_path):
    s = KVStore(str(tmp_path / "base" / "kv.sqlite"))
    yield s
    s.close()


@pytest.fixture
def sess(store):
    return Session(FakeEngine(store), 4242, {"user": "postgres", "database": "postgres"})


# ---------------------------------------------------------------- lexer/parser

@pytest.mark.timeout(30)
@pytest.mark.parametrize("q", [
    "INSERT INTO kv VALUES ('k','v')",
    "insert into KV (key, value) values ('k', 'v')",
    "INSERT INTO kv (value, key) VALUES ('v', 'k')",
    "INSERT INTO public.kv VALUES ('k','v') ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "INSERT INTO kv VALUES ('a','1'), ('b', '2') ON CONFLICT DO NOTHING",
    "INSERT INTO kv VALUES (12, 34)",
    "INSERT INTO kv VALUES ('big', repeat('x', 10000))",
    "DELETE FROM kv WHERE key = 'a'",
    "SELECT value FROM kv WHERE key = 'a'",
    "SELECT * FROM kv ORDER BY key",
    "SELECT count(*) FROM kv",
    "BEGIN", "START TRANSACTION", "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ", "COMMIT", "END",
    "ROLLBACK", "ABORT", "COMMIT WORK",
    "SHOW port", "SHOW ALL", "SET application_name = 'x'", "SET search_path TO public, \"$user\"",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SELECT pg_current_wal_lsn()", "select pg_switch_wal()", "SELECT pg_is_in_recovery()",
    "SELECT 1", "SELECT version()", "SELECT * FROM pg_stat_replication",
    "SELECT state, replay_lag FROM pg_stat_replication",
    "select 1; -- trailing comment", "/* c */ SELECT 1 /* nested /* c */ */ ;  ",
    "CHECKPOINT",
])
def test_parses(q):
    assert sql.parse(q)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("q,near", [
    ("FOO BAR", 'syntax error at or near "FOO"'),
    ("SELECT * FROM WHERE", 'syntax error at or near "WHERE"'),
    ("INSERT INTO kv VALUES ('a'", "syntax error at end of input"),
    ("DELETE kv", 'syntax error at or near "kv"'),
    ("SELECT 'abc", "unterminated quoted string at or near \"'abc\""),
    ("SELECT 1 2", 'syntax error at or near "2"'),
])
def test_syntax_errors(q, near):
    with pytest.raises(SQLError) as ei:
        sql.parse(q)
    assert ei.value.sqlstate == "42601"
    assert ei.value.message == near


@pytest.mark.timeout(30)
def test_quoting_and_split():
    stmts = sql.parse("INSERT INTO kv VALUES ('it''s; here', 'a -- b');SELECT 1;;")
    assert len(stmts) == 2
    ins = stmts[0]
    assert ins.rows[0][0].value == "it's; here"
    assert ins.rows[0][1].value == "a -- b"
    assert sql.parse("") == [] and sql.parse(" -- only a comment\n ;") == []


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40))
def test_literal_roundtrip(s):
    lit = "'" + s.replace("'", "''") + "'"
    (ins,) = sql.parse(f"INSERT INTO kv VALUES ({lit}, {lit})")
    assert ins.rows[0][0].value == s


# ---------------------------------------------------------------- execution

@pytest.mark.timeout(30)
def test_insert_select_delete_tags(sess):
    m = run(sess, "INSERT INTO kv VALUES ('a', '1')")
    assert tags(m) == ["INSERT 0 1"]
    m = run(sess, "INSERT INTO kv (key, value) VALUES ('b', '2'), ('c', '3') "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    assert tags(m) == ["INSERT 0 2"]
    m = run(sess, "INSERT INTO kv VALUES ('a', 'one')")        # upsert
    assert tags(m) == ["INSERT 0 1"]
    m = run(sess, "SELECT value FROM kv WHERE key = 'a'")
    assert rows(m) == [["one"]] and tags(m) == ["SELECT 1"] and columns(m) == [("value", sql.TEXT)]
    m = run(sess, "SELECT * FROM kv ORDER BY key")
    assert rows(m) == [["a", "one"], ["b", "2"], ["c", "3"]] and tags(m) == ["SELECT 3"]
    m = run(sess, "SELECT count(*) FROM kv")
    assert rows(m) == [["3"]] and columns(m) == [("count", sql.INT8)]
    m = run(sess, "DELETE FROM kv WHERE key = 'b'")
    assert tags(m) == ["DELETE 1"]
    m = run(sess, "DELETE FROM kv WHERE key = 'b'")
    assert tags(m) == ["DELETE 0"]
    m = run(sess, "SELECT value FROM kv WHERE key = 'nope'")
    assert rows(m) == [] and tags(m) == ["SELECT 0"]
    m = run(sess, "SELECT * FROM kv ORDER BY key DESC LIMIT 1")
    assert rows(m) == [["c", "3"]]
    m = run(sess, "INSERT INTO kv VALUES ('c', 'x') ON CONFLICT DO NOTHING")
    assert tags(m) == ["INSERT 0 0"]
    assert sess.engine.store.get("c") == "3"


@pytest.mark.timeout(30)
def test_numbers_as_text_and_repeat(sess):
    run(sess, "INSERT INTO kv VALUES (17, 42)")
    run(sess, "INSERT INTO kv VALUES ('big', repeat('xy', 5000))")
    assert sess.engine.store.get("17") == "42"
    assert sess.engine.store.get("big") == "xy" * 5000
    m = run(sess, "SELECT value FROM kv WHERE key = 17")          # pgbench substitutes :id textually
    assert rows(m) == [["42"]]
    m = run(sess, "SELECT length(value) FROM kv WHERE key = 'big'")
    assert rows(m) == [["10000"]]


@pytest.mark.timeout(30)
def test_wal_records_and_xids(sess):
    eng = sess.engine
    run(sess, "INSERT INTO kv VALUES ('a', '1'), ('b', NULL)")
    assert eng.wal == [("kv", 3, "put", "a", "1"), ("kv", 3, "put", "b", None), ("commit", 3)]
    eng.wal.clear()
    run(sess, "SELECT * FROM kv")          # read-only: no xid, no commit record
    assert eng.wal == []
    run(sess, "BEGIN; DELETE FROM kv WHERE key = 'a'; ROLLBACK")
    assert eng.wal == [("kv", 4, "delete", "a", None), ("abort", 4)]
    assert eng.store.get("a") == "1"
    # applied_lsn follows the commit's end
    assert eng.store.applied_lsn() > 0


@pytest.mark.timeout(30)
def test_transaction_block_states(sess):
    m = run(sess, "BEGIN")
    assert tags(m) == ["BEGIN"] and sess.status == b"T"
    run(sess, "INSERT INTO kv VALUES ('t', '1')")
    # own write visible inside, not outside
    assert rows(run(sess, "SELECT value FROM kv WHERE key = 't'")) == [["1"]]
    assert sess.engine.store.get("t") is None
    assert rows(run(sess, "SELECT count(*) FROM kv")) == [["1"]]
    m = run(sess, "BEGIN")
    assert notices(m) == [("25001", "there is already a transaction in progress")]
    m = run(sess, "COMMIT")
    assert tags(m) == ["COMMIT"] and sess.status == b"I"
    assert sess.engine.store.get("t") == "1"
    m = run(sess, "COMMIT")
    assert notices(m) == [("25P01", "there is no transaction in progress")] and tags(m) == ["COMMIT"]
    m = run(sess, "ROLLBACK")
    assert notices(m) == [("25P01", "there is no transaction in progress")] and tags(m) == ["ROLLBACK"]


@pytest.mark.timeout(30)
def test_failed_block(sess):
    run(sess, "BEGIN")
    run(sess, "INSERT INTO kv VALUES ('f', '1')")
    m = run(sess, "SELEC 1")
    assert errors(m) == [("42601", 'syntax error at or near "SELEC"')]
    assert sess.status == b"E"
    m = run(sess, "SELECT 1")
    assert errors(m) == [("25P02", "current transaction is aborted, commands ignored until end of "
                                   "transaction block")]
    m = run(sess, "COMMIT")
    assert tags(m) == ["ROLLBACK"] and sess.status == b"I"
    assert sess.engine.store.get("f") is None
    assert sess.engine.wal[-1][0] == "abort"
    assert rows(run(sess, "SELECT 1")) == [["1"]]


@pytest.mark.timeout(30)
def test_multi_statement_implicit_transaction(sess):
    m = run(sess, "INSERT INTO kv VALUES ('m1', '1'); SELECT 1/0; INSERT INTO kv VALUES ('m2', '2')")
    assert tags(m) == ["INSERT 0 1"]
    assert errors(m) == [("22012", "division by zero")]
    assert sess.engine.store.get("m1") is None and sess.status == b"I"     # whole implicit block rolled back
    m = run(sess, "INSERT INTO kv VALUES ('m1', '1'); INSERT INTO kv VALUES ('m2', '2'); SELECT count(*) FROM kv")
    assert tags(m) == ["INSERT 0 1", "INSERT 0 1", "SELECT 1"] and rows(m) == [["2"]]
    assert sess.engine.wal.count(("commit", 4)) == 1 and sess.engine.wal[-1] == ("commit", 4)
    # BEGIN; ...; COMMIT; then more: the explicit commit applies first
    m = run(sess, "BEGIN; INSERT INTO kv VALUES ('m3', '3'); COMMIT; INSERT INTO kv VALUES ('m4', '4'); SELEC")
    assert errors(m)[0][0] == "42601" and tags(m) == []     # syntax error: nothing ran
    m = run(sess, "BEGIN; INSERT INTO kv VALUES ('m3', '3'); COMMIT; INSERT INTO kv VALUES ('m4', '4'); "
                  "SELECT 1/0")
    assert tags(m) == ["BEGIN", "INSERT 0 1", "COMMIT", "INSERT 0 1"]
    assert sess.engine.store.get("m3") == "3" and sess.engine.store.get("m4") is None
    # syntax error anywhere: nothing runs
    m = run(sess, "INSERT INTO kv VALUES ('m5', '5'); FOO")
    assert tags(m) == [] and errors(m) == [("42601", 'syntax error at or near "FOO"')]


@pytest.mark.timeout(30)
def test_empty_query(sess):
    m = run(sess, "  ")
    assert [t for t, _ in m] == [b"I"]
    m = run(sess, ";")
    assert [t for t, _ in m] == [b"I"]


@pytest.mark.timeout(30)
def test_error_codes(sess):
    assert errors(run(sess, "SELECT * FROM nosuch")) == [("42P01", 'relation "nosuch" does not exist')]
    assert errors(run(sess, "INSERT INTO nosuch VALUES ('a','b')")) == [
        ("42P01", 'relation "nosuch" does not exist')]
    e = errors(run(sess, "SELECT nosuch(1)"))
    assert e == [("42883", "function nosuch(integer) does not exist")]
    assert errors(run(sess, "SHOW nosuch")) == [("42704", 'unrecognized configuration parameter "nosuch"')]
    assert errors(run(sess, "SELECT nosuch FROM kv")) == [("42703", 'column "nosuch" does not exist')]
    assert errors(run(sess, "INSERT INTO kv VALUES (NULL, 'x')"))[0][0] == "23502"
    assert errors(run(sess, "INSERT INTO kv VALUES ('a', 'b', 'c')"))[0][0] == "42601"
    e = errors(run(sess, "SELECT pg_promote()"))
    assert e == [("55000", "recovery is not in progress")]
    # the session is still fine
    assert rows(run(sess, "SELECT 1")) == [["1"]]


@pytest.mark.timeout(30)
def test_read_only(store):
    s = Session(FakeEngine(store, recovery=True), 1, {})
    assert errors(run(s, "INSERT INTO kv VALUES ('a', 'b')")) == [
        ("25006", "cannot execute INSERT in a read-only transaction")]
    assert errors(run(s, "DELETE FROM kv WHERE key = 'a'")) == [
        ("25006", "cannot execute DELETE in a read-only transaction")]
    assert rows(run(s, "SELECT pg_is_in_recovery()")) == [["t"]]
    assert errors(run(s, "SELECT pg_current_wal_lsn()")) == [("55000", "recovery is in progress")]
    assert rows(run(s, "SELECT count(*) FROM kv")) == [["0"]]
    s2 = Session(FakeEngine(store), 1, {})
    run(s2, "BEGIN READ ONLY")
    assert errors(run(s2, "INSERT INTO kv VALUES ('a', 'b')"))[0][0] == "25006"


@pytest.mark.timeout(30)
def test_show_set(sess):
    m = run(sess, "SHOW port")
    assert rows(m) == [["5432"]] and tags(m) == ["SHOW"] and columns(m) == [("port", sql.TEXT)]
    assert rows(run(sess, "SHOW checkpoint_timeout")) == [["5min"]]
    assert rows(run(sess, "SHOW server_version")) == [["15.0"]]
    assert rows(run(sess, "SHOW transaction isolation level")) == [["read committed"]]
    assert tags(run(sess, "SET application_name = 'walswitch test'")) == ["SET"]
    assert rows(run(sess, "SHOW application_name")) == [["walswitch test"]]
    assert tags(run(sess, "SET statement_timeout TO 0")) == ["SET"]
    assert tags(run(sess, "RESET ALL")) == ["RESET"]
    m = run(sess, "SHOW ALL")
    assert tags(m) == ["SHOW"] and ["max_wal_senders", "10", ""] in rows(m)
    assert rows(run(sess, "SELECT current_setting('max_connections')")) == [["100"]]


@pytest.mark.timeout(30)
def test_functions(sess):
    m = run(sess, "SELECT 1")
    assert rows(m) == [["1"]] and columns(m) == [("?column?", sql.INT4)] and tags(m) == ["SELECT 1"]
    m = run(sess, "SELECT version()")
    assert rows(m)[0][0].startswith("PostgreSQL 15.0")
    m = run(sess, "SELECT pg_current_wal_lsn()")
    assert rows(m) == [["0/1000000"]] and columns(m) == [("pg_current_wal_lsn", sql.PG_LSN)]
    m = run(sess, "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")
    assert rows(m) == [["f", None, None]]
    m = run(sess, "SELECT pg_switch_wal()")
    assert rows(m) == [["0/1000040"]]
    m = run(sess, "SELECT pg_walfile_name('0/3000000'), pg_wal_lsn_diff('0/3000100', '0/3000000')")
    assert rows(m) == [["000000010000000000000002", "256"]]
    m = run(sess, "SELECT 'a' || 'b' AS x, 2 + 3 * 4, '0/10'::pg_lsn")
    assert rows(m) == [["ab", "14", "0/10"]] and [c for c, _ in columns(m)] == ["x", "?column?", "pg_lsn"]


@pytest.mark.timeout(30)
def test_views_without_shared_memory(sess):
    m = run(sess, "SELECT * FROM pg_stat_replication")
    assert [c for c, _ in columns(m)] == [c for c, _ in sql.REL_COLUMNS["pg_stat_replication"]]
    assert tags(m) == ["SELECT 0"]
    m = run(sess, "SELECT state, replay_lag FROM pg_stat_replication")
    assert columns(m) == [("state", sql.TEXT), ("replay_lag", sql.INTERVAL)]
    m = run(sess, "SELECT * FROM pg_stat_wal_receiver")
    assert len(columns(m)) == 15 and tags(m) == ["SELECT 0"]


@pytest.mark.timeout(30)
def test_views_from_shared_memory(tmp_path, store):
    from shmem.segment import SharedState
    shared = SharedState.create(str(tmp_path), 2, 0)
    try:
        eng = FakeEngine(store)
        eng.shared = shared
        s = Session(eng, 1, {})
        shared.walsnd[1].update(pid=999, state=3, sent_lsn=0x3000148, write_lsn=0x3000100, flush_lsn=0x3000100,
                                replay_lsn=0x3000000, write_lag_us=1234, flush_lag_us=-1, replay_lag_us=3_600_500_000,
                                reply_time_us=1_700_000_000_123_000, backend_start_us=1_700_000_000_000_000,
                                client_port=5555, application_name="standby1", client_addr="127.0.0.1")
        m = run(s, "SELECT * FROM pg_stat_replication")
        (r,) = rows(m)
        d = dict(zip([c for c, _ in columns(m)], r))
        assert d["pid"] == "999" and d["state"] == "streaming" and d["application_name"] == "standby1"
        assert d["sent_lsn"] == "0/3000148" and d["replay_lsn"] == "0/3000000"
        assert d["write_lag"] == "00:00:00.001234" and d["flush_lag"] is None
        assert d["replay_lag"] == "01:00:00.5"
        assert d["reply_time"] == "2023-11-14 22:13:20.123+00"
        assert d["sync_state"] == "async" and d["client_port"] == "5555"
        m = run(s, "SELECT application_name, state FROM pg_stat_replication WHERE state = 'streaming'")
        assert rows(m) == [["standby1", "streaming"]]
        shared.walrcv.update(pid=777, state=2, flushed_lsn=0x5000000, written_lsn=0x5000010, received_tli=1,
                             sender_host="127.0.0.1", sender_port=5432,
                             conninfo="host=127.0.0.1 password=secret port=5432")
        m = run(s, "SELECT pid, status, flushed_lsn, conninfo FROM pg_stat_wal_receiver")
        assert rows(m) == [["777", "streaming", "0/5000000", "host=127.0.0.1 password=******** port=5432"]]
    finally:
        shared.destroy()


@pytest.mark.timeout(30)
def test_promote_waits(store):
    eng = FakeEngine(store, recovery=True)
    s = Session(eng, 1, {})
    gen = s.run("SELECT pg_promote()")
    w = next(gen)
    assert isinstance(w, Until) and eng.promote_requested
    assert not w.pred()
    eng.recovery = False
    assert w.pred()
    with pytest.raises(StopIteration):
        gen.send(None)
    r = P.MessageReader()
    r.feed(bytes(s.out))
    msgs = []
    while (m := r.next()) is not None:
        msgs.append(m)
    assert rows(msgs) == [["t"]]


# ---------------------------------------------------------------- kvstore

@pytest.mark.timeout(30)
def test_kvstore_apply_skip(store):
    assert store.applied_lsn() == 0
    assert store.apply([("put", "a", "1"), ("put", "b", "2")], 100, 1)
    assert not store.apply([("put", "a", "X")], 100, 1)       # already applied: skipped
    assert not store.apply([("put", "a", "X")], 50, 1)
    assert store.apply([("delete", "b", None), ("put", "c", None)], 200, 2)
    assert store.items() == [("a", "1"), ("c", None)]
    assert store.applied() == (200, 2) and store.count() == 2
    n = store.apply_many([([("put", "d", "4")], 150), ([("put", "e", "5")], 300), ([("put", "f", "6")], 400)], 2)
    assert n == 2 and store.applied_lsn() == 400 and store.get("d") is None
    store.sync()


@pytest.mark.timeout(30)
def test_kvstore_must_apply_refuses_old_commits(store):
    """A primary's commit at or below the store's position is a bug: refused whole, nothing applied."""
    store.apply([("put", "a", "1")], 100, 1)
    with pytest.raises(ValueError, match="not beyond the store's position"):
        store.apply_many([([("put", "b", "2")], 200), ([("put", "c", "3")], 100)], 1, must_apply=True)
    assert store.items() == [("a", "1")] and store.applied_lsn() == 100


@pytest.mark.timeout(30)
def test_kvstore_atomic(store):
    store.apply([("put", "a", "1")], 10, 1)
    bad = [("put", "x", "1"), ("frobnicate", "y", None)]
    with pytest.raises(ValueError):
        store.apply_many([([("put", "b", "2")], 20), (bad, 30)], 1)
    assert store.items() == [("a", "1")] and store.applied_lsn() == 10


@pytest.mark.timeout(60)
def test_kvstore_reader_sees_whole_transactions(tmp_path):
    path = str(tmp_path / "kv.sqlite")
    w = KVStore(path)
    stop = threading.Event()
    bad = []

    def reader():
        r = KVStore(path, readonly=True)
        while not stop.is_set():
            rows_, lsn, _ = r.snapshot()
            # every transaction writes the same value to 'a' and 'b'
            d = dict(rows_)
            if d.get("a") != d.get("b") or (lsn and str(lsn) != d.get("a")):
                bad.append((d, lsn))
        r.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 400):
            w.apply([("put", "a", str(i * 8)), ("put", "b", str(i * 8))], i * 8, 1)
    finally:
        stop.set()
        t.join()
    assert not bad
    assert w.applied_lsn() == 399 * 8
    w.close()


@pytest.mark.timeout(30)
def test_dump(tmp_path):
    d = str(tmp_path)
    assert dump(d) == ([], 0)
    s = KVStore(d)            # a data directory works too
    assert s.path == kv_path(d)
    s.apply([("put", "k", "v")], 77, 1)
    s.close()
    assert dump(d) == ([("k", "v")], 77)
