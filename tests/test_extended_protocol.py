"""The extended query protocol against a running primary and a hot standby, with real clients.

pgbench -M extended and -M prepared, psycopg 3 (text and binary parameters and results, prepare=True,
executemany, pipeline mode with an error that recovers at Sync), and raw messages for what clients
rarely show (Execute with a row limit -> PortalSuspended, Describe, Close, errors skipping to Sync).
"""
from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.cluster import PGBIN, wait_for
from tests.invariants import wait_caught_up


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class Raw:
    """A v3 client speaking raw messages after a trust login."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        params = b"user\0postgres\0database\0postgres\0\0"
        self.s.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        self.read_until_ready()

    def read_message(self) -> tuple[bytes, bytes]:
        head = self._exact(5)
        (n,) = struct.unpack("!I", head[1:])
        return head[:1], self._exact(n - 4)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf

    def read_until_ready(self) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            m = self.read_message()
            out.append(m)
            if m[0] == b"Z":
                return out

    def close(self) -> None:
        self.s.sendall(msg(b"X"))
        self.s.close()


def parse(name: str, query: str, types: list[int] = ()) -> bytes:
    return msg(b"P", name.encode() + b"\0" + query.encode() + b"\0" + struct.pack(f"!H{len(types)}I", len(types),
                                                                                    *types))


def bind(portal: str, stmt: str, params: list[bytes | None] = (), result_format: int = 0) -> bytes:
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return msg(b"B", body + struct.pack("!Hh", 1, result_format))


def execute(portal: str, limit: int = 0) -> bytes:
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!i", limit))


def kinds(ms: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(t for t, _ in ms)


def sqlstate(body: bytes) -> str:
    for f in body.split(b"\0"):
        if f[:1] == b"C":
            return f[1:].decode()
    return ""


@pytest.fixture
def primary(nodes):
    p = nodes.primary()
    p.sql("INSERT INTO kv VALUES ('a', '1'), ('b', '2'), ('c', '3'), ('d', '4'), ('e', '5')")
    return p


def pgbench(node, mode: str, tmp_path: Path) -> str:
    script = tmp_path / "tx.sql"
    script.write_text("\\set id random(1, 100000)\n"
                      "BEGIN;\n"
                      "INSERT INTO kv VALUES (:id, 'x') ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n"
                      "SELECT value FROM kv WHERE key = :id;\n"
                      "END;\n"
                      "INSERT INTO kv VALUES (:id || '-b', :id);\n")
    p = subprocess.run([str(PGBIN / "pgbench"), "-n", "-M", mode, "-f", str(script), "-c", "2", "-j", "2",
                        "-t", "200", "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres", "postgres"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    assert "number of failed transactions: 0" in p.stdout, p.stdout
    assert "number of transactions actually processed: 400/400" in p.stdout, p.stdout
    return p.stdout


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_extended_and_prepared(primary, mode, tmp_path):
    pgbench(primary, mode, tmp_path)
    assert primary.sql("SELECT count(*) FROM kv")[0][0] > 5


@pytest.mark.timeout(120)
def test_psycopg3_parameters_text_and_binary(primary):
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"k-{binary}", "v"))
            cur.execute("SELECT key, value FROM kv WHERE key = %s", (f"k-{binary}",))
            assert cur.fetchall() == [(f"k-{binary}", "v")]
            cur.execute("SELECT %s::int + %s, %s::bigint, %s::boolean, %s", (2, 3, 2 ** 40, True, None))
            assert cur.fetchone() == (5, 2 ** 40, True, None)
            cur.execute("SELECT count(*) FROM kv WHERE key IN (%s, %s)", ("a", "b"))
            assert cur.fetchone() == (2,)
            cur.execute("SELECT pg_current_wal_lsn(), pg_is_in_recovery()")
            lsn, rec = cur.fetchone()
            # psycopg has no binary loader for pg_lsn: it hands over the 8 bytes of PostgreSQL's pg_lsn_send
            assert rec is False and (len(lsn) == 8 if binary else "/" in lsn)
        with conn.cursor() as cur:
            for _ in range(3):      # prepared on the server after the first runs
                cur.execute("SELECT value FROM kv WHERE key = %s", ("a",), prepare=True)
                assert cur.fetchone() == ("1",)
            cur.executemany("INSERT INTO kv VALUES (%s, %s)", [(f"m{i}", str(i)) for i in range(50)])
            cur.execute("SELECT count(*) FROM kv WHERE key = %s", ("m49",))
            assert cur.fetchone() == (1,)
        with pytest.raises(psycopg.errors.UndefinedParameter):
            conn.execute("SELECT $1")        # a simple Query has no parameters (42P02, as PostgreSQL)


@pytest.mark.timeout(120)
def test_psycopg3_pipeline_error_recovers_at_sync(primary):
    with psycopg.connect(primary.dsn()) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.pipeline():
                conn.execute("INSERT INTO kv VALUES (%s, %s)", ("p1", "x"))
                conn.execute("SELECT 1 / %s::int", (0,))
                conn.execute("INSERT INTO kv VALUES (%s, %s)", ("p2", "x"))
        conn.rollback()
        with conn.pipeline():
            conn.execute("INSERT INTO kv VALUES (%s, %s)", ("p3", "x"))
            cur = conn.execute("SELECT count(*) FROM kv WHERE key = %s", ("p3",))
        assert cur.fetchone() == (1,)
        conn.commit()
    keys = {k for (k,) in primary.sql("SELECT key FROM kv")}
    assert "p3" in keys and "p1" not in keys and "p2" not in keys


@pytest.mark.timeout(60)
def test_row_limit_suspends_the_portal(primary):
    c = Raw(primary.port)
    c.s.sendall(parse("s1", "SELECT key FROM kv ORDER BY key") + bind("p1", "s1")
                + msg(b"D", b"P" + b"p1\0") + execute("p1", 2) + msg(b"H"))
    got = [c.read_message() for _ in range(6)]
    assert kinds(got) == b"12TDDs"                 # Parse/BindComplete, RowDescription, 2 rows, PortalSuspended
    c.s.sendall(execute("p1", 2) + execute("p1", 0) + msg(b"S"))
    rest = c.read_until_ready()
    assert kinds(rest) == b"DDsDCZ"
    assert [b[6:7] for t, b in got + rest if t == b"D"] == [b"a", b"b", b"c", b"d", b"e"]
    assert rest[-2][1] == b"SELECT 1\0"           # PostgreSQL 15 counts the rows of the last Execute only
    c.close()


@pytest.mark.timeout(60)
def test_describe_statement_and_errors_skip_to_sync(primary):
    c = Raw(primary.port)
    c.s.sendall(parse("q", "SELECT value FROM kv WHERE key = $1") + msg(b"D", b"Sq\0") + msg(b"S"))
    out = c.read_until_ready()
    assert kinds(out) == b"1tTZ"
    assert out[1][1] == struct.pack("!HI", 1, 25)              # one parameter, text
    # an error skips Bind/Execute up to Sync; the next batch works
    c.s.sendall(parse("", "SELEC 1") + bind("", "") + execute("") + msg(b"S")
                + parse("q", "SELECT 1") + msg(b"S")
                + bind("", "q", [b"b"]) + execute("") + msg(b"S"))
    first = c.read_until_ready()
    assert kinds(first) == b"EZ" and sqlstate(first[0][1]) == "42601"
    dup = c.read_until_ready()
    assert kinds(dup) == b"EZ" and sqlstate(dup[0][1]) == "42P05"
    ok = c.read_until_ready()
    assert kinds(ok) == b"2DCZ" and ok[1][1].endswith(b"2")
    c.s.sendall(parse("", "SELECT 1; SELECT 2") + msg(b"S") + bind("", "nosuch") + msg(b"S")
                + execute("nosuch") + msg(b"S") + msg(b"C", b"Sq\0") + msg(b"S"))
    codes = [sqlstate(c.read_until_ready()[0][1]) for _ in range(3)]
    assert codes == ["42601", "26000", "34000"]
    assert kinds(c.read_until_ready()) == b"3Z"
    c.close()


@pytest.mark.timeout(180)
def test_hot_standby_answers_the_same_reads(primary, nodes):
    standby = nodes.standby(primary)
    wait_for(lambda: standby.status().get("walreceiver_state") == "streaming", 60, "standby streaming")
    wait_caught_up(primary, standby)
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("SELECT value FROM kv WHERE key = %s", ("c",), prepare=True)
            assert cur.fetchone() == ("3",)
            cur.execute("SELECT count(*) FROM kv WHERE key IN (%s, %s, %s)", ("a", "b", "zz"))
            assert cur.fetchone() == (2,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO kv VALUES (%s, %s)", ("x", "y"))
