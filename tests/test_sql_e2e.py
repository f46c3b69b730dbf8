"""The SQL front end through a real server (walswitch init/start/stop): psql, psycopg2, pgbench.

Uses the shared ``nodes`` fixture (tests/conftest.py): servers are stopped
and leak-checked at teardown.
"""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psycopg2
import pytest

from tests.cluster import PGBIN, wait_for
from xlog.control import DBState, read_control
from xlog.lsn import parse_lsn


def pgbench(node, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    path = Path(node.datadir).parent / f"{node.name}-bench.sql"
    path.write_text(script)
    return subprocess.run([str(PGBIN / "pgbench"), "-n", "-M", "simple", "-f", str(path), *args,
                           "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres", "postgres"],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_psql_and_psycopg2_write_and_read(nodes):
    n = nodes.primary()
    p = n.psql("INSERT INTO kv VALUES ('psql', 'one'); INSERT INTO kv (key, value) VALUES ('q''uote', 'it''s')")
    assert p.returncode == 0
    c = n.connect(autocommit=False)                  # psycopg2's default: transactions
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES (%s, %s)", ("py", "two"))
    cur.execute("SELECT value FROM kv WHERE key = %s", ("q'uote",))
    assert cur.fetchone() == ("it's",)
    c.commit()
    cur.execute("SELECT * FROM kv ORDER BY key")
    assert cur.fetchall() == [("psql", "one"), ("py", "two"), ("q'uote", "it's")]
    c.commit()
    c.close()
    assert n.psql("SELECT count(*) FROM kv").stdout.strip() == "3"
    assert n.dump()[0] == {"psql": "one", "py": "two", "q'uote": "it's"}
    assert parse_lsn(n.sql("SELECT pg_current_wal_lsn()")[0][0]) > 0
    assert n.sql("SELECT pg_is_in_recovery()") == [(False,)]


@pytest.mark.timeout(120)
def test_rollback_leaves_nothing(nodes):
    n = nodes.primary()
    c = n.connect(autocommit=False)
    cur = c.cursor()
    cur.execute("INSERT INTO kv VALUES ('gone', '1')")
    cur.execute("DELETE FROM kv WHERE key = 'gone'")
    cur.execute("INSERT INTO kv VALUES ('gone2', '2')")
    c.rollback()
    cur.execute("SELECT count(*) FROM kv")
    assert cur.fetchone() == (0,)
    c.close()
    assert n.dump()[0] == {}


@pytest.mark.timeout(120)
def test_errors_keep_the_connection(nodes):
    n = nodes.primary()
    c = n.connect()
    cur = c.cursor()
    with pytest.raises(psycopg2.errors.SyntaxError):
        cur.execute("FROBNICATE kv")
    with pytest.raises(psycopg2.errors.UndefinedTable):
        cur.execute("SELECT * FROM pg_class")
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState):
        cur.execute("SELECT pg_promote()")
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    p = n.psql("SELECT nosuch()", check=False)
    assert p.returncode != 0 and "ERROR:  function nosuch() does not exist" in p.stderr
    c.close()


@pytest.mark.timeout(180)
def test_pgbench_inserts(nodes):
    n = nodes.primary()
    p = pgbench(n, "\\set id random(1, 1000000)\nINSERT INTO kv VALUES (:id, :id);\n",
                "-c", "4", "-j", "2", "-T", "10")
    assert p.returncode == 0, p.stderr
    assert "number of failed transactions: 0 (0.000%)" in p.stdout, p.stdout
    tps = float(p.stdout.split("tps = ")[1].split()[0])
    print(f"pgbench: {tps:.0f} tps")
    assert tps > 100
    rows, _lsn = n.dump()
    assert rows and all(k == v for k, v in rows.items())


@pytest.mark.timeout(180)
def test_restart_and_crash_keep_every_acknowledged_commit(nodes):
    n = nodes.primary()
    n.sql("INSERT INTO kv VALUES ('before', 'stop')")
    n.stop("fast")
    assert read_control(n.datadir).state == DBState.SHUTDOWNED
    n.start()
    assert n.sql("SELECT value FROM kv WHERE key = 'before'") == [("stop",)]
    acked: set[str] = set()
    stop = threading.Event()

    def worker(i: int) -> None:
        try:
            c = n.connect()
            cur = c.cursor()
            j = 0
            while not stop.is_set():
                cur.execute("INSERT INTO kv VALUES (%s, 'x')", (f"w{i}-{j}",))
                acked.add(f"w{i}-{j}")
                j += 1
        except psycopg2.Error:
            pass

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    wait_for(lambda: len(acked) > 500, 60, "some commits")
    n.kill9("backend")
    stop.set()
    for t in ts:
        t.join()
    wait_for(lambda: n.sql("SELECT 1"), 60, "crash restart")
    have = {k for (k,) in [(r[0],) for r in n.sql("SELECT key FROM kv")]}
    assert acked <= have
    assert "before" in have


@pytest.mark.timeout(180)
def test_hot_standby_reads_refuses_writes_and_promotes(nodes):
    p = nodes.primary()
    p.sql("INSERT INTO kv VALUES ('a', '1')")
    s = nodes.standby(p)
    wait_for(lambda: s.sql("SELECT value FROM kv WHERE key = 'a'") == [("1",)], 60, "replay on the standby")
    assert s.sql("SELECT pg_is_in_recovery()") == [(True,)]
    p.sql("INSERT INTO kv VALUES ('b', '2')")
    wait_for(lambda: s.sql("SELECT value FROM kv WHERE key = 'b'") == [("2",)], 60, "streamed change")
    wait_for(lambda: p.sql("SELECT state FROM pg_stat_replication") == [("streaming",)], 60, "a streaming walsender")
    assert s.sql("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]
    recv, replay = s.sql("SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")[0]
    assert parse_lsn(recv) >= parse_lsn(replay) > 0
    c = s.connect()
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction) as ei:
        c.cursor().execute("INSERT INTO kv VALUES ('x', 'y')")
    assert str(ei.value).startswith("cannot execute INSERT in a read-only transaction")
    c.cursor().execute("SELECT 1")               # still usable
    c.close()
    assert s.sql("SELECT pg_promote()") == [(True,)]
    wait_for(lambda: s.sql("SELECT pg_is_in_recovery()") == [(False,)], 60, "promotion")
    wait_for(lambda: s.psql("INSERT INTO kv VALUES ('after', 'promote')", check=False).returncode == 0, 60,
             "writes on the promoted standby")
    assert s.dump()[0] == {"a": "1", "b": "2", "after": "promote"}
