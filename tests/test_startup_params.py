"""Settings in the startup packet (backend/startup_options.py), as PostgreSQL 15's process_startup_options:
an unknown name is FATAL 42704 ``unrecognized configuration parameter "x"``; PostgreSQL's settings, custom
``prefix.name`` ones, ``options`` (-c / --name=value) and ``_pq_.*`` protocol options are accepted; a
setting that cannot be set at connection time gets PostgreSQL's 55P02 / 42501."""
from __future__ import annotations

import os
import socket
import struct
import subprocess

import psycopg2
import pytest

from libpq import protocol as P
from tests.cluster import PGBIN


def raw_startup(node, params: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Send a StartupMessage with these parameters; the messages up to ReadyForQuery or the FATAL."""
    body = struct.pack("!I", P.PROTOCOL_3) + b"".join(P.cstr(k) + P.cstr(v) for k, v in params.items()) + b"\0"
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        r = P.MessageReader()
        out = []
        while True:
            data = s.recv(65536)
            if not data:
                return out
            r.feed(data)
            while (m := r.next()) is not None:
                out.append(m)
                if m[0] == b"Z":
                    return out


def error_fields(msgs) -> dict[str, str]:
    for t, body in msgs:
        if t == b"E":
            return {chr(p[0]): p[1:].decode() for p in body.split(b"\x00") if p}
    return {}


def psql(node, query: str, pgoptions: str, user: str = "postgres") -> subprocess.CompletedProcess:
    env = {**os.environ, "PGOPTIONS": pgoptions}
    return subprocess.run([str(PGBIN / "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(node.port), "-U", user,
                           "-d", "postgres", "-c", query], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.timeout(120)
def test_startup_parameters(nodes):
    n = nodes.primary()
    base = {"user": "postgres", "database": "postgres"}
    e = error_fields(raw_startup(n, {**base, "no_such_setting": "1"}))
    assert (e.get("S"), e.get("C"), e.get("M")) == \
        ("FATAL", "42704", 'unrecognized configuration parameter "no_such_setting"')
    # PostgreSQL's own settings (as JDBC sends them), a custom one and a protocol option are accepted
    msgs = raw_startup(n, {**base, "DateStyle": "ISO", "extra_float_digits": "2", "TimeZone": "UTC",
                           "myapp.tenant": "7", "_pq_.unknown_option": "x"})
    assert not error_fields(msgs) and msgs[-1][0] == b"Z"
    assert any(t == b"v" for t, _ in msgs)          # NegotiateProtocolVersion names the _pq_ option
    # what cannot be set at connection start, as PostgreSQL refuses it
    for name, value, code, message in (
            ("wal_level", "minimal", "55P02", 'parameter "wal_level" cannot be changed without restarting the server'),
            ("archive_command", "x", "55P02", 'parameter "archive_command" cannot be changed now'),
            ("server_version", "1", "55P02", 'parameter "server_version" cannot be changed'),
            ("statement_timeout", "soon", "22023", 'invalid value for parameter "statement_timeout": "soon"')):
        e = error_fields(raw_startup(n, {**base, name: value}))
        assert e.get("C") == code and e.get("M", "").startswith(message), (name, e)

    # PostgreSQL 15's psql through PGOPTIONS: -c settings apply to the session; an unknown one is FATAL
    p = psql(n, "SHOW statement_timeout", "-c statement_timeout=1234")
    assert p.returncode == 0 and p.stdout.strip() in ("1234", "1234ms"), p.stderr
    p = psql(n, "SHOW myapp.tenant", "--myapp.tenant=9")
    assert p.returncode == 0 and p.stdout.strip() == "9", p.stderr
    p = psql(n, "SELECT 1", "-c bogus=1")
    assert p.returncode != 0 and 'FATAL:  unrecognized configuration parameter "bogus"' in p.stderr, p.stderr

    # a superuser-only setting from a role that is not one: 42501
    n.sql("CREATE ROLE app LOGIN")
    p = psql(n, "SELECT 1", "-c lc_messages=C", user="app")
    assert p.returncode != 0 and 'permission denied to set parameter "lc_messages"' in p.stderr, p.stderr
    assert psql(n, "SELECT 1", "-c lc_messages=C").returncode == 0
    # statement_timeout from the startup packet applies
    c = psycopg2.connect(n.dsn(options="'-c statement_timeout=200'"))
    with pytest.raises(psycopg2.errors.QueryCanceled):
        c.cursor().execute("SELECT pg_sleep(5)")
    c.close()
