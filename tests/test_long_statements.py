"""A statement that runs long on the backend's one loop pauses every few milliseconds (sql.Session.pause):
a CancelRequest or statement_timeout ends it with 57014 while it RUNS (not only while it waits), its
changes roll back, and other sessions' commits complete meanwhile.

Statements that run long here: a many-row INSERT ... VALUES, UPDATE/DELETE over the whole table, a
SELECT filtering many rows.  bench/isolation.py measures the latency others see.
"""
from __future__ import annotations

import time

import psycopg2
import pytest

from tests.cluster import run_in_thread, wait_for

ROWS = 40000


def execute(conn, query, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def fill(n) -> None:
    c = n.connect()
    execute(c, "INSERT INTO kv VALUES " + ",".join(f"('k{i}', 'v')" for i in range(ROWS)))
    c.close()


@pytest.mark.timeout(300)
def test_running_update_cancelled_while_others_commit(nodes):
    n = nodes.primary()
    fill(n)
    victim, other, watcher = n.connect(), n.connect(), n.connect()
    vpid = victim.get_backend_pid()
    # Twenty UPDATEs in one Query message (one implicit transaction): seconds of work however fast the
    # machine is, so the other session's commits surely land while it runs.
    t, res = run_in_thread(lambda: execute(victim, "; ".join(["UPDATE kv SET value = value || 'x'"] * 20)))
    wait_for(lambda: execute(watcher, "SELECT state FROM pg_stat_activity WHERE pid = %s", (vpid,)) == [("active",)],
             30, "the UPDATE running")
    # Another session commits while the UPDATE runs: its commit returns and the UPDATE is still running.
    for i in range(5):
        execute(other, "INSERT INTO kv VALUES (%s, 'during')", (f"other{i}",))
    assert t.is_alive() and execute(watcher, "SELECT state FROM pg_stat_activity WHERE pid = %s", (vpid,)) == \
        [("active",)], "the UPDATE ended before the other session's commits: nothing showed they went on"
    victim.cancel()
    t.join(30)
    assert not t.is_alive()
    e = res.get("error")
    assert isinstance(e, psycopg2.errors.QueryCanceled) and e.pgcode == "57014", res
    assert "canceling statement due to user request" in str(e)
    assert execute(watcher, "SELECT count(*) FROM kv WHERE value <> 'v' AND value <> 'during'") == [(0,)]  # rolled back
    assert execute(watcher, "SELECT count(*) FROM kv WHERE value = 'during'") == [(5,)]
    assert execute(victim, "SELECT 1") == [(1,)]
    for c in (victim, other, watcher):
        c.close()


@pytest.mark.timeout(300)
def test_statement_timeout_ends_running_statements(nodes):
    n = nodes.primary()
    fill(n)
    c = n.connect()
    execute(c, "SET statement_timeout = '150ms'")
    for query in ("UPDATE kv SET value = value || 'x'",
                  "DELETE FROM kv WHERE value <> 'nothing'",
                  "SELECT count(*) FROM kv WHERE value IN ('a', 'b', 'c', 'd')",
                  "INSERT INTO kv VALUES " + ",".join(f"('n{i}', 'new')" for i in range(ROWS))):
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled) as ei:
            execute(c, query)
        assert "canceling statement due to statement timeout" in str(ei.value), query[:40]
        assert time.monotonic() - t0 < 10, query[:40]
    execute(c, "SET statement_timeout = 0")
    assert execute(c, "SELECT count(*) FROM kv WHERE value = 'v'") == [(ROWS,)]
    assert execute(c, "SELECT count(*) FROM kv WHERE value = 'new'") == [(0,)]
    c.close()


@pytest.mark.timeout(300)
def test_large_commits_beside_small_ones_survive_a_crash(nodes):
    """Large commits (3 MiB values) beside a stream of small ones: every acknowledged commit is
    readable at once, by another session too, and after a crash and recovery."""
    n = nodes.primary()
    big, other, reader = n.connect(), n.connect(), n.connect()
    size = 3 << 20

    def writer():
        for i in range(6):
            execute(big, "INSERT INTO kv VALUES ('big', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    ("x" * (size + i),))
            assert execute(reader, "SELECT length(value) FROM kv WHERE key = 'big'") == [(size + i,)]
    t, res = run_in_thread(writer)
    i = 0
    while t.is_alive():
        execute(other, "INSERT INTO kv VALUES (%s, 'small')", (f"s{i}",))
        assert execute(other, "SELECT value FROM kv WHERE key = %s", (f"s{i}",)) == [("small",)]
        i += 1
    t.join()
    assert "error" not in res, res
    for c in (big, other, reader):
        c.close()
    n.kill9_all()
    n.start()
    assert n.sql("SELECT count(*) FROM kv WHERE value = 'small'") == [(i,)]
    assert n.sql("SELECT length(value) FROM kv WHERE key = 'big'") == [(size + 5,)]
