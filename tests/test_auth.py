"""Authentication, roles and privileges with real clients over TCP (issue 10, items 1-3)."""
from __future__ import annotations

import json
import os
import signal

import psycopg
import psycopg2
import pytest

from backend.session import handoff_payload
from libpq.protocol import StartupPacket
from storage.roles import RoleInfo

from libpq import scram
from libpq.hba import HbaError, parse_hba
from tests.cluster import as_postgres, pg_tool, wait_for, walswitch

pytestmark = pytest.mark.timeout(180)


def test_hba_parse_and_first_match():
    rules = parse_hba('# c\nhost "all" u1,u2 10.0.0.0 255.0.0.0 md5\nhostssl all all 0.0.0.0/0 scram-sha-256\n'
                      'host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n')
    assert rules.match("10.1.2.3", False, "db", "u2", False) is None      # quoted "all" is a name
    assert rules.match("10.1.2.3", False, "all", "u1", False).method == "md5"
    assert rules.match("10.1.2.3", True, "db", "x", False).method == "scram-sha-256"
    assert rules.match("127.0.0.1", False, "db", "x", True).method == "trust"
    assert rules.match("127.0.0.1", False, "db", "x", False).method == "reject"
    assert rules.match("::1", False, "db", "x", False) is None
    with pytest.raises(HbaError, match=r'invalid authentication method "bogus" in file "f" line 2'):
        parse_hba("host all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 bogus\n", "f")


def _hba(node, text: str) -> None:
    with open(os.path.join(node.datadir, "pg_hba.conf"), "w") as f:
        f.write(text)


def _reload(node) -> None:
    os.kill(node.status()["postmaster_pid"], signal.SIGHUP)


def _connect(node, user, password=None, **kw):
    return psycopg2.connect(node.dsn(user=user, **({"password": password} if password else {}), **kw))


def test_methods_roles_privileges(nodes):
    p = nodes("p")
    p.init()
    p.start()
    p.sql("CREATE ROLE alice LOGIN PASSWORD 'secret'")
    p.sql("CREATE ROLE bob LOGIN PASSWORD %s", (scram.md5_verifier("pw", "bob"),))
    p.sql("CREATE ROLE carol LOGIN PASSWORD %s", (scram.make_verifier("cpw").encode(),))
    p.sql("CREATE ROLE nologin PASSWORD 'x'")
    p.sql("CREATE USER dave PASSWORD 'dpw'")
    # trust (the default file): no password asked
    with _connect(p, "alice") as c:
        pass
    c.close()
    _hba(p, "host all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n"
            "host all alice,carol,nologin,ghost 127.0.0.1/32 scram-sha-256\nhost all bob 127.0.0.1/32 md5\n"
            "host all dave 127.0.0.1/32 password\nhost all eve 127.0.0.1/32 reject\n"
            "host replication alice 127.0.0.1/32 scram-sha-256\n")
    _reload(p)
    wait_for(lambda: _refused(p, "alice", None) is not None, 30, "reload")
    assert _connect(p, "alice", "secret").close() is None
    assert "password authentication failed for user \"alice\"" in _refused(p, "alice", "wrong")
    assert _refused(p, "ghost", "x") == _refused(p, "alice", "x").replace("alice", "ghost")
    assert _connect(p, "dave", "dpw").close() is None           # password method
    assert "password authentication failed" in _refused(p, "dave", "nope")
    assert _connect(p, "carol", "cpw").close() is None          # \password-style verifier
    assert _connect(p, "bob", "pw").close() is None             # md5
    assert "password authentication failed" in _refused(p, "bob", "no")
    assert "not permitted to log in" in _refused(p, "nologin", "x")
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "eve"' in _refused(p, "eve", None)
    assert ('no pg_hba.conf entry for host "127.0.0.1", user "zed", database "postgres", SSL off'
            in _refused(p, "zed", None))
    # channel_binding=require: we never offer -PLUS without TLS, libpq refuses by itself
    assert "channel binding" in _refused(p, "alice", "secret", channel_binding="require", sslmode="disable")
    # privileges
    c = _connect(p, "alice", "secret")
    c.autocommit = True
    for q, msg in (("SELECT pg_switch_wal()", "permission denied for function pg_switch_wal"),
                   ("SELECT pg_promote()", "permission denied for function pg_promote"),
                   ("CHECKPOINT", "must be superuser to do CHECKPOINT"),
                   ("SELECT pg_reload_conf()", "permission denied for function pg_reload_conf"),
                   ("SELECT * FROM pg_authid", "permission denied for table pg_authid"),
                   ("DROP ROLE bob", "permission denied to drop role"),
                   ("ALTER ROLE bob PASSWORD 'x'", "permission denied"),
                   ("CREATE ROLE x", "permission denied to create role")):
        with pytest.raises(psycopg2.Error) as e, c.cursor() as cur:
            cur.execute(q)
        assert e.value.pgcode == "42501" and msg in str(e.value), q
    c.close()
    # replication without REPLICATION
    r = as_postgres([pg_tool("pg_receivewal"), "-d", p.dsn(user="alice", password="secret"), "-D", "/tmp",
                     "--no-loop", "-n"], timeout=60)
    assert r.returncode != 0 and "must be superuser or replication role to start walsender" in r.stderr
    r = as_postgres([pg_tool("pg_basebackup"), "-d", p.dsn(user="alice", password="secret"), "-D",
                     "/tmp/never-written-auth-test", "-Xnone"], timeout=60)
    assert r.returncode != 0 and "must be superuser or replication role to start walsender" in r.stderr
    assert not os.path.exists("/tmp/never-written-auth-test")
    # a bad file keeps the old rules (pg_reload_conf as the superuser)
    _hba(p, "host all all 127.0.0.1/32 bogus\n")
    assert p.sql("SELECT pg_reload_conf()") == [(True,)]
    p.wait_log('invalid authentication method "bogus" in file')
    assert _connect(p, "alice", "secret").close() is None
    assert "password authentication failed" in _refused(p, "alice", "wrong")
    # an unknown user on a scram line: same message as a wrong password (mock exchange)
    assert _refused(p, "ghost2", "x") is not None
    # waldump describes role records without their secrets
    dump = walswitch("waldump", os.path.join(p.datadir, "pg_wal")).stdout
    assert 'ROLE' in dump and 'role "alice"; set' in dump and "SCRAM-SHA-256$" not in dump


def _refused(node, user, password, **kw) -> str | None:
    try:
        _connect(node, user, password, **kw).close()
    except psycopg2.OperationalError as e:
        return str(e)
    return None


def test_standby_roles_survive_promotion(nodes):
    """Roles are WAL-logged: the standby authenticates them, also after promotion; pg_roles masks passwords."""
    p = nodes("p")
    p.init()
    p.start()
    s = nodes.standby(p)
    p.sql("CREATE ROLE repl_user LOGIN REPLICATION PASSWORD 'rpw'")
    p.sql("CREATE USER app PASSWORD 'apw'")
    p.sql("ALTER ROLE app PASSWORD 'apw2'")
    p.sql("CREATE ROLE gone LOGIN")
    p.sql("DROP ROLE gone")
    scram_only = ("host all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n"
                  "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n")
    for n in (p, s):
        _hba(n, scram_only)
        _reload(n)
    for n in (p, s):
        wait_for(lambda n=n: _refused(n, "app", "not-it") is not None, 60, f"scram in force on {n.name}")
    wait_for(lambda: _refused(s, "app", "apw2") is None, 60, "the standby to authenticate app")
    assert "password authentication failed" in _refused(s, "app", "apw")
    assert "password authentication failed" in _refused(s, "gone", "x")
    with pytest.raises(psycopg2.Error) as e:
        s.sql("CREATE ROLE on_standby")
    assert e.value.pgcode == "25006" and "cannot execute CREATE ROLE in a read-only transaction" in str(e.value)
    rows = dict(s.sql("SELECT rolname, rolpassword FROM pg_roles"))
    assert rows["app"] == "********" and "gone" not in rows and rows["postgres"] is None
    authid = dict(p.sql("SELECT rolname, rolpassword FROM pg_authid"))
    assert authid["app"].startswith("SCRAM-SHA-256$4096:")
    c = _connect(p, "app", "apw2")
    with pytest.raises(psycopg2.Error) as e, c.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_authid")
    assert e.value.pgcode == "42501"
    c.close()
    p.stop()
    s.sql("SELECT pg_promote()")
    wait_for(lambda: s.sql("SELECT pg_is_in_recovery()") == [(False,)], 60, "promotion")
    assert _connect(s, "app", "apw2").close() is None
    s.sql("CREATE ROLE after_promote LOGIN PASSWORD 'z'")
    assert _connect(s, "after_promote", "z").close() is None
    r = as_postgres([pg_tool("pg_receivewal"), "-d", s.dsn(user="app", password="apw2"), "-D", "/tmp",
                     "--no-loop", "-n"], timeout=60)
    assert "must be superuser or replication role" in r.stderr


def test_standby_streams_as_scram_replication_role(nodes):
    """The walreceiver authenticates with SCRAM as a REPLICATION role; a wrong password does not stream."""
    p = nodes("p")
    p.init()
    p.start()
    p.sql("CREATE ROLE repl LOGIN REPLICATION PASSWORD 'rpw'")
    s = nodes.standby(p, start=False)
    _hba(p, "host replication repl 127.0.0.1/32 scram-sha-256\nhost all postgres 127.0.0.1/32 trust\n")
    _reload(p)
    wait_for(lambda: _refused(p, "repl", "rpw") is not None, 30, "the new pg_hba.conf in force")
    s.set_conf(primary_conninfo=f"host=127.0.0.1 port={p.port} user=repl password=wrong")
    s.start(wait_ready=False)
    s.wait_log('password authentication failed for user "repl"', timeout=60)
    assert s.status()["walreceiver_state"] != "streaming"
    s.stop()
    s.set_conf(primary_conninfo=f"host=127.0.0.1 port={p.port} user=repl password=rpw")
    s.start(wait_ready=False)
    p.sql("INSERT INTO kv VALUES ('after', 'auth')")
    wait_for(lambda: s.dump()[0].get("after") == "auth", 60, "the row to reach the standby")
    assert s.status()["walreceiver_state"] == "streaming"
    assert "rpw" not in s.log_text() and "rpw" not in p.log_text()


def test_replication_handoff_carries_authenticated_role(nodes):
    """The walsender reports the role the backend authenticated; a client cannot inject role keys."""
    p = nodes("p")
    p.init()
    p.start()
    p.sql("CREATE ROLE repl LOGIN REPLICATION")
    with psycopg.connect(p.dsn(user="repl", replication="true"), autocommit=True) as c:
        assert c.info.parameter_status("is_superuser") == "off"
        assert c.info.parameter_status("session_authorization") == "repl"
        res = c.pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK


def test_handoff_payload_drops_client_role_keys():
    pkt = StartupPacket({"user": "u", "replication": "true", "walswitch.role_superuser": "on",
                         "walswitch.role": "postgres"})
    assert json.loads(handoff_payload(pkt, RoleInfo("u", replication=True))) == {
        "user": "u", "replication": "true", "walswitch.role": "u", "walswitch.role_superuser": "off",
        "walswitch.role_replication": "on"}
    assert "walswitch.role" not in json.loads(handoff_payload(pkt))


def test_hba_keywords_types_and_addresses():
    rules = parse_hba('local all all trust\nhostnossl all all 127.0.0.1 255.255.255.255 md5\n'
                      'hostssl all all samehost scram-sha-256\nhost sameuser all ::1/128 password\n'
                      'host db1,"db 2" u 192.168.0.0/16 trust\n')
    assert rules.match("127.0.0.1", False, "x", "y", False).method == "md5"        # local never matches
    assert rules.match("127.0.0.1", True, "x", "y", False).method == "scram-sha-256"
    assert rules.match("::1", False, "bob", "bob", False).method == "password"
    assert rules.match("::1", False, "other", "bob", False) is None
    assert rules.match("::ffff:192.168.3.4", False, "db 2", "u", False).method == "trust"
    assert rules.match("192.168.3.4", False, "db 2", "u", True) is None       # "all"/names never match replication
    assert rules.match("10.0.0.1", False, "db1", "u", False) is None


@pytest.mark.parametrize("text, err", [
    ('host all all 127.0.0.1/32 "trust\n', "unterminated quoted string"),
    ("host all all 127.0.0.1/33 trust\n", 'invalid IP address "127.0.0.1/33"'),
    ("host all all 127.0.0.1 255.0.255.0 trust\n", "invalid IP mask"),
    ("host all all 127.0.0.1/32\n", "end-of-line before authentication method"),
    ("hots all all 127.0.0.1/32 trust\n", 'invalid connection type "hots"'),
    ("include other.conf\n", "include"),
    ("host all all 127.0.0.1/32 trust clientcert\n", "name=value"),
])
def test_hba_bad_lines(text, err):
    with pytest.raises(HbaError) as e:
        parse_hba("# ok\n" + text, "/d/pg_hba.conf")
    assert err in str(e.value) and str(e.value).endswith('in file "/d/pg_hba.conf" line 2')


def test_start_refuses_bad_or_missing_hba(nodes):
    p = nodes("p")
    p.init()
    _hba(p, "host all all 127.0.0.1/32 trust\nhost all all nowhere md5\n")
    r = walswitch("start", "-D", p.datadir, check=False)
    assert r.returncode != 0 and 'in file "' in r.stderr and 'pg_hba.conf" line 2' in r.stderr
    os.unlink(os.path.join(p.datadir, "pg_hba.conf"))
    r = walswitch("start", "-D", p.datadir, check=False)
    assert r.returncode != 0 and "could not load pg_hba.conf" in r.stderr


def test_role_ddl_is_transactional(nodes):
    """Role changes commit or roll back with their transaction, also inside a multi-statement query."""
    p = nodes("p")
    p.init()
    p.start()
    p.sql("SET password_encryption = 'md5'; CREATE ROLE m1 LOGIN PASSWORD 'x'; CREATE USER m2")
    c = p.connect(autocommit=False)
    with c.cursor() as cur:
        cur.execute("CREATE ROLE rolled_back LOGIN")
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = 'rolled_back'")
        assert cur.fetchall() == [("rolled_back",)]
    c.rollback()
    c.close()
    names = {r[0]: r[1] for r in p.sql("SELECT rolname, rolcanlogin FROM pg_roles")}
    assert names == {"postgres": True, "m1": True, "m2": True}
    for q, code in (("CREATE ROLE m1", "42710"), ("DROP ROLE nobody", "42704"), ("CREATE ROLE pg_x", "42939"),
                    ("DROP ROLE postgres", "55006"), ("CREATE ROLE", "42601"),
                    ("CREATE ROLE v VALID UNTIL '2030-01-01'", "0A000"), ("CREATE ROLE w IN ROLE m1", "0A000")):
        with pytest.raises(psycopg2.Error) as e:
            p.sql(q)
        assert e.value.pgcode == code, q


def test_failure_logged_with_reason_never_password(nodes):
    p = nodes("p")
    p.init()
    p.start()
    p.sql("CREATE ROLE lg LOGIN PASSWORD 'right-secret'")
    _hba(p, "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    _reload(p)
    wait_for(lambda: _refused(p, "lg", "wrong-secret") is not None, 30, "scram in force")
    assert _refused(p, "nobody", "wrong-secret") is not None
    p.wait_log('Connection matched pg_hba.conf line 2: "host all all 127.0.0.1/32 scram-sha-256"')
    p.wait_log('Role "nobody" does not exist.')
    text = p.log_text()
    assert 'FATAL:  password authentication failed for user "lg"' in text
    assert "Password does not match for user" in text
    assert "right-secret" not in text and "wrong-secret" not in text


@pytest.mark.parametrize("line, err", [
    ("host all all 127.0.0.1/32 trust clientcert=verify-ca", 'clientcert can only be configured for "hostssl" rows'),
    ("hostssl all all 127.0.0.1/32 trust clientcert=yes", 'invalid value for clientcert: "yes"'),
])
def test_hba_clientcert_options(line, err):
    with pytest.raises(HbaError, match=err):
        parse_hba(line + "\n")
