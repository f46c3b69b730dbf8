"""PostgreSQL's parser (pglast) and the extended query protocol, end to end: cases beside
tests/test_extended_protocol.py, each checked against a real PostgreSQL 15 (error position at end of
input, rows counted per Execute after PortalSuspended, $n::type inferred by Describe, numeric binary).

A real primary on 127.0.0.1, real clients: psql (error caret), psycopg 3 (text and binary parameters,
prepare=True, executemany, pipeline mode), libpq's own extended calls through psycopg.pq, and raw
protocol messages built with libpq/protocol.py (Execute with a row limit → PortalSuspended).  pgbench
-M extended/prepared and the hot-standby reads are in tests/test_extended_protocol.py.
"""
from __future__ import annotations

import socket
import struct
import subprocess
from decimal import Decimal

import psycopg
import pytest
from psycopg import pq

from libpq import protocol as P
from tests.cluster import PGBIN


def psql(node, query: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PGBIN / "psql"), "-X", "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres",
                           "-d", "postgres", "-v", "ON_ERROR_STOP=1"], input=query,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def primary(nodes):
    return nodes.primary()


def pg3(node, **kw) -> psycopg.Connection:
    return psycopg.connect(node.dsn(), autocommit=True, **kw)


# ---------------------------------------------------------------- parser: psql

@pytest.mark.timeout(120)
def test_psql_syntax_error_caret_nesting_and_unsupported(primary):
    p = psql(primary, "SELEC 1;")
    assert p.returncode == 3
    assert p.stderr.splitlines()[-3:] == ['ERROR:  syntax error at or near "SELEC"',
                                          "LINE 1: SELEC 1;", "        ^"]
    p = psql(primary, "select 1 from")
    assert p.stderr.splitlines()[-2:] == ["LINE 1: select 1 from", "                     ^"]
    # PostgreSQL 15 answers: 1,000 nested parentheses -> 1; 100,000 -> the grammar's "memory exhausted";
    # a 5,000-term sum -> 54001; a 100,000-item IN list -> a result.  The session survives each.
    script = ("SELECT " + "(" * 1000 + "1" + ")" * 1000 + " AS deep;\n"
              "\\set ON_ERROR_STOP 0\n"
              "SELECT " + "(" * 100000 + "1" + ")" * 100000 + ";\n"
              "SELECT " + "+".join(["1"] * 5000) + ";\n"
              "SELECT " + "+".join(["1"] * 350) + " AS sum350;\n"
              "SELECT 1 IN (" + ",".join(["2"] * 99999) + ",1) AS found;\n"
              "CREATE INDEX i ON kv (value);\n"
              "VACUUM kv;\n"
              "SELECT 'still here' AS alive;\n")
    p = psql(primary, script)
    out, err = p.stdout, p.stderr
    assert " deep \n------\n    1\n" in out
    assert 'ERROR:  memory exhausted at or near "("' in err
    assert "ERROR:  stack depth limit exceeded" in err
    assert " found \n-------\n t\n" in out
    assert " sum350 \n--------\n    350\n" in out
    assert "ERROR:  CREATE INDEX is not supported" in err
    assert "ERROR:  VACUUM is not supported" in err
    assert "still here" in out
    assert "RecursionError" not in primary.log_text() and "Traceback" not in primary.log_text()
    with pg3(primary) as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute("CREATE INDEX i ON kv (value)")
        with pytest.raises(psycopg.errors.SyntaxError) as ei:
            c.execute("SELECT 1 FROM kv WHERE")
        assert ei.value.diag.statement_position == "23"


# ---------------------------------------------------------------- pgbench

@pytest.mark.timeout(120)
def test_psycopg3_parameters_prepare_executemany_pipeline(nodes):
    p = nodes.primary()
    with pg3(p) as c:
        c.execute("INSERT INTO kv VALUES (%s, %s)", ("t1", "text one"))
        c.execute("INSERT INTO kv VALUES (%b, %b)", ("b1", "binary one"))
        assert c.execute("SELECT value FROM kv WHERE key = %s", ("t1",)).fetchall() == [("text one",)]
        assert c.execute("SELECT value FROM kv WHERE key = %b", ("b1",), binary=True).fetchall() == \
            [("binary one",)]
        # typed parameters both ways, results text and binary
        row = c.execute("SELECT %s::int + 1, %b::bigint * 2, %s::boolean, %b", (41, 21, True, "s")).fetchone()
        assert row == (42, 42, True, "s")
        row = c.execute("SELECT %b + 1, %b, pg_current_wal_lsn() > '0/0'", (41, 2 ** 40), binary=True).fetchone()
        assert row == (42, 2 ** 40, True)
        row = c.execute("SELECT %b, %b::numeric + 1, '-12345.0001'::numeric", (Decimal("10000.5"), Decimal("1.5")),
                        binary=True).fetchone()
        assert row == (Decimal("10000.5"), Decimal("2.5"), Decimal("-12345.0001"))
        for i in range(8):                                      # server-side prepared after the 5th
            assert c.execute("SELECT value FROM kv WHERE key = %s", ("t1",), prepare=True).fetchone() == \
                ("text one",)
        cur = c.cursor()
        cur.executemany("INSERT INTO kv VALUES (%s, %s)", [(f"m{i}", str(i)) for i in range(50)])
        assert c.execute("SELECT count(*) FROM kv WHERE key >= %s AND key < %s", ("m", "n")).fetchone() == (50,)
        cur.executemany("UPDATE kv SET value = %b WHERE key = %b", [(f"u{i}", f"m{i}") for i in range(5)])
        assert c.execute("SELECT value FROM kv WHERE key = 'm3'").fetchone() == ("u3",)
        # pipeline: an error inside; what follows up to Sync is skipped, then the session recovers
        with pytest.raises(psycopg.errors.UndefinedTable):
            with c.pipeline():
                c.execute("INSERT INTO kv VALUES (%s, %s)", ("p1", "1"))
                c.execute("SELECT * FROM nosuch WHERE key = %s", ("x",))
                c.execute("INSERT INTO kv VALUES (%s, %s)", ("p2", "2"))
        with c.pipeline():
            c.execute("INSERT INTO kv VALUES (%s, %s)", ("p3", "3"))
            cur2 = c.execute("SELECT key FROM kv WHERE key >= %s AND key < %s ORDER BY key", ("p", "q"))
        # the implicit transaction lasts until Sync (as PostgreSQL): p1 went with the error
        assert cur2.fetchall() == [("p3",)]
        # errors of the protocol itself
        with pytest.raises(psycopg.errors.SyntaxError) as ei:
            c.execute("SELECT %s; SELECT 2", ("a",))
        assert "cannot insert multiple commands into a prepared statement" in str(ei.value)


@pytest.mark.timeout(120)
def test_libpq_prepared_statement_rules(primary):
    with pg3(primary) as c:
        pgc = c.pgconn
        r = pgc.prepare(b"s1", b"SELECT value FROM kv WHERE key = $1")
        assert r.status == pq.ExecStatus.COMMAND_OK
        r = pgc.prepare(b"s1", b"SELECT 1")
        assert r.status == pq.ExecStatus.FATAL_ERROR and r.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        d = pgc.describe_prepared(b"s1")
        assert d.nparams == 1 and d.param_type(0) == 25 and d.nfields == 1 and d.fname(0) == b"value"
        r = pgc.exec_prepared(b"nosuch", [])
        assert r.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        r = pgc.describe_portal(b"nosuch")
        assert r.error_field(pq.DiagnosticField.SQLSTATE) == b"34000"
        pgc.exec_(b"INSERT INTO kv VALUES ('k', 'v')")
        r = pgc.exec_prepared(b"s1", [b"k"])
        assert r.status == pq.ExecStatus.TUPLES_OK and r.get_value(0, 0) == b"v"
        pgc.prepare(b"s2", b"SELECT $1::int + $2::bigint, $3")
        d = pgc.describe_prepared(b"s2")            # types inferred from the casts; the rest: text
        assert [d.param_type(i) for i in range(d.nparams)] == [23, 20, 25]
        assert [d.ftype(i) for i in range(d.nfields)] == [20, 25]
        r = pgc.exec_prepared(b"s2", [b"1", b"2", b"x"])
        assert (r.get_value(0, 0), r.get_value(0, 1)) == (b"3", b"x")
        r = pgc.exec_prepared(b"s2", [b"one", b"2", b"x"])
        assert r.error_field(pq.DiagnosticField.SQLSTATE) == b"22P02"
        d = pgc.describe_prepared(b"")     # no unnamed statement yet
        assert d.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"


# ---------------------------------------------------------------- raw protocol: row limit

class Raw:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        body = struct.pack("!I", P.PROTOCOL_3) + b"user\0postgres\0database\0postgres\0\0"
        self.s.sendall(struct.pack("!I", len(body) + 4) + body)
        self.reader = P.MessageReader()
        self.until_ready()

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        got: list[tuple[bytes, bytes]] = []
        while True:
            m = self.reader.next()
            if m is None:
                data = self.s.recv(65536)
                assert data, "connection closed"
                self.reader.feed(data)
                continue
            got.append(m)
            if m[0] == b"Z":
                return got


@pytest.mark.timeout(120)
def test_execute_with_row_limit_suspends_then_finishes(primary):
    with pg3(primary) as c:
        c.cursor().executemany("INSERT INTO kv VALUES (%s, 'x')", [(f"r{i:02}",) for i in range(10)])
    r = Raw(primary.port)
    r.s.sendall(P.parse_message("", "SELECT key FROM kv WHERE key >= $1 ORDER BY key", [25])
                + P.bind_message("", "", [b"r"], result_formats=[0]) + P.describe_message("P", "")
                + P.execute_message("", 4) + P.execute_message("", 4) + P.execute_message("", 0)
                + P.sync_message())
    got = r.until_ready()
    kinds = b"".join(t for t, _ in got)
    assert kinds == b"12T" + b"D" * 4 + b"s" + b"D" * 4 + b"s" + b"D" * 2 + b"CZ"
    keys = [b[6:].decode() for t, b in got if t == b"D"]
    assert keys == [f"r{i:02}" for i in range(10)]
    assert got[-2][1] == b"SELECT 2\x00"
    # an error skips to Sync; the portal of a finished transaction is gone
    r.s.sendall(P.bind_message("", "nosuch") + P.execute_message("", 0) + P.sync_message()
                + P.execute_message("", 0) + P.sync_message())
    got = r.until_ready() + r.until_ready()
    kinds = b"".join(t for t, _ in got)
    assert kinds == b"EZEZ"
    assert b"C26000" in got[0][1] and b"C34000" in got[2][1]
    # a named statement survives Sync and runs with binary parameters and results
    r.s.sendall(P.parse_message("n", "SELECT $1::int * 2 AS twice", [23]) + P.sync_message())
    assert [t for t, _ in r.until_ready()] == [b"1", b"Z"]
    r.s.sendall(P.bind_message("", "n", [struct.pack("!i", 21)], [1], [1]) + P.execute_message("", 0)
                + P.close_message("S", "n") + P.sync_message())
    got = r.until_ready()
    assert [t for t, _ in got] == [b"2", b"D", b"C", b"3", b"Z"]
    assert got[1][1] == struct.pack("!hi", 1, 4) + struct.pack("!i", 42)
    r.s.close()


# ---------------------------------------------------------------- hot standby
