"""pg_backend_pid, pg_stat_activity, pg_cancel_backend and pg_terminate_backend over real TCP.

Every session of the one backend process has a pid of its own (backend/activity.py): the one in
BackendKeyData, pg_backend_pid() and pg_stat_activity.  pg_cancel_backend ends that session's
running statement with 57014, pg_terminate_backend ends the session with FATAL 57P01; PostgreSQL 15's
privilege rule and messages (42501), its WARNING for an unknown pid.
"""
from __future__ import annotations

import time

import psycopg2
import pytest

from tests.cluster import run_in_thread, PGBIN, wait_for


def one(conn, query, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()


def state_of(conn, pid):
    row = one(conn, "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,))
    return row


@pytest.mark.timeout(120)
def test_pids_activity_cancel_terminate(nodes):
    n = nodes.primary()
    admin, victim = n.connect(), n.connect()
    vpid = one(victim, "SELECT pg_backend_pid()")[0]
    apid = one(admin, "SELECT pg_backend_pid()")[0]
    assert vpid != apid and victim.get_backend_pid() == vpid      # BackendKeyData carries the same pid
    rows = {r[0]: r for r in n.sql("SELECT pid, usename, datname, state, query, backend_type "
                                   "FROM pg_stat_activity")}
    assert rows[vpid][1:4] == ("postgres", "postgres", "idle")
    assert rows[vpid][4] == "SELECT pg_backend_pid()" and rows[vpid][5] == "client backend"

    # cancel: the victim's running statement ends with 57014, the session stays usable
    t, res = run_in_thread(lambda: one(victim, "SELECT pg_sleep(30)"))
    wait_for(lambda: state_of(admin, vpid) == ("active", "SELECT pg_sleep(30)"), 20, "the victim running")
    t0 = time.monotonic()
    assert one(admin, "SELECT pg_cancel_backend(%s)", (vpid,)) == (True,)
    t.join(20)
    assert not t.is_alive() and time.monotonic() - t0 < 10
    e = res.get("error")
    assert isinstance(e, psycopg2.errors.QueryCanceled) and e.pgcode == "57014", res
    assert "canceling statement due to user request" in str(e)
    assert one(victim, "SELECT 1") == (1,)

    # an idle session is not disturbed by a cancel
    assert one(admin, "SELECT pg_cancel_backend(%s)", (vpid,)) == (True,)
    assert one(victim, "SELECT 2") == (2,)

    # an open transaction shows as such, then terminate: FATAL 57P01, the connection closes
    victim.autocommit = False
    with victim.cursor() as cur:
        cur.execute("INSERT INTO kv VALUES ('t1', 'uncommitted')")
    assert state_of(admin, vpid)[0] == "idle in transaction"
    assert one(admin, "SELECT pg_terminate_backend(%s, 5000)", (vpid,)) == (True,)
    with pytest.raises(psycopg2.OperationalError) as ei:
        one(victim, "SELECT 3")
    assert "terminating connection due to administrator command" in str(ei.value) or victim.closed
    assert one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (vpid,)) == (0,)
    assert n.sql("SELECT value FROM kv WHERE key = 't1'") == []          # its transaction rolled back

    # unknown pid: WARNING and false, as PostgreSQL
    admin.notices.clear()
    assert one(admin, "SELECT pg_cancel_backend(%s)", (vpid,)) == (False,)
    assert one(admin, "SELECT pg_terminate_backend(12345678)") == (False,)
    assert any(f"WARNING:  PID {vpid} is not a PostgreSQL backend process" in m for m in admin.notices)
    assert any("PID 12345678 is not a PostgreSQL backend process" in m for m in admin.notices)
    with pytest.raises(psycopg2.errors.NumericValueOutOfRange) as ei:
        one(admin, "SELECT pg_terminate_backend(%s, -1)", (apid,))
    assert '"timeout" must not be negative' in str(ei.value)
    admin.close()


@pytest.mark.timeout(120)
def test_terminate_from_a_from_clause_and_itself(nodes):
    """The usual form, SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE ...; and a session
    that terminates itself gets the FATAL instead of its result, as PostgreSQL (psql shows it)."""
    n = nodes.primary()
    victims = [n.connect(application_name="doomed") for _ in range(2)]
    admin = n.connect()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'doomed'")
        assert cur.fetchall() == [(True,), (True,)]
    for v in victims:
        with pytest.raises(psycopg2.OperationalError):
            one(v, "SELECT 1")
    p = n.psql("SELECT pg_terminate_backend(pg_backend_pid())", check=False)
    assert p.returncode != 0
    assert "FATAL:  terminating connection due to administrator command" in p.stderr, p.stderr
    with pytest.raises(psycopg2.errors.QueryCanceled):
        one(admin, "SELECT pg_cancel_backend(pg_backend_pid())")
    assert one(admin, "SELECT 1") == (1,)
    admin.close()


@pytest.mark.timeout(120)
def test_signal_privileges(nodes):
    n = nodes.primary()
    n.sql("CREATE ROLE alice LOGIN")
    n.sql("CREATE ROLE bob LOGIN")
    su = n.connect()
    alice1, alice2, bob = n.connect(user="alice"), n.connect(user="alice"), n.connect(user="bob")
    pids = {name: one(c, "SELECT pg_backend_pid()")[0]
            for name, c in (("su", su), ("alice1", alice1), ("alice2", alice2), ("bob", bob))}

    # another role's session: 42501 with PostgreSQL 15's messages
    with pytest.raises(psycopg2.errors.InsufficientPrivilege) as ei:
        one(bob, "SELECT pg_cancel_backend(%s)", (pids["alice1"],))
    assert "must be a member of the role whose query is being canceled or member of pg_signal_backend" \
        in str(ei.value)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege) as ei:
        one(bob, "SELECT pg_terminate_backend(%s)", (pids["alice1"],))
    assert "must be a member of the role whose process is being terminated or member of pg_signal_backend" \
        in str(ei.value)
    # a superuser's session, by a non-superuser
    with pytest.raises(psycopg2.errors.InsufficientPrivilege) as ei:
        one(alice1, "SELECT pg_cancel_backend(%s)", (pids["su"],))
    assert "must be a superuser to cancel superuser query" in str(ei.value)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege) as ei:
        one(alice1, "SELECT pg_terminate_backend(%s)", (pids["su"],))
    assert "must be a superuser to terminate superuser process" in str(ei.value)
    # another role's row: no query, no state, as PostgreSQL shows it
    assert one(bob, "SELECT usename, state, query FROM pg_stat_activity WHERE pid = %s", (pids["alice1"],)) == \
        ("alice", None, "<insufficient privilege>")

    # the same role may: alice terminates her other session; a superuser may signal anyone
    assert one(alice1, "SELECT pg_terminate_backend(%s)", (pids["alice2"],)) == (True,)
    with pytest.raises(psycopg2.OperationalError):
        one(alice2, "SELECT 1")
    assert one(su, "SELECT pg_terminate_backend(%s)", (pids["bob"],)) == (True,)
    with pytest.raises(psycopg2.OperationalError):
        one(bob, "SELECT 1")
    assert one(alice1, "SELECT 1") == (1,)
    for c in (su, alice1):
        c.close()


@pytest.mark.timeout(120)
def test_psql_finds_and_cancels_a_session(nodes):
    """PostgreSQL 15's psql: a pid from pg_stat_activity, then pg_cancel_backend ends that statement."""
    n = nodes.primary()
    victim = n.connect(application_name="sleeper")
    t, res = run_in_thread(lambda: one(victim, "SELECT pg_sleep(30)"))
    pid = wait_for(lambda: n.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'sleeper' "
                                  "AND state = 'active'").stdout.strip(), 20, "the sleeper in psql's view")
    assert n.psql(f"SELECT pg_cancel_backend({int(pid)})").stdout.strip() == "t"
    t.join(20)
    assert isinstance(res.get("error"), psycopg2.errors.QueryCanceled)
    assert PGBIN.exists()
    victim.close()
