"""Issue 10, items 7 and 8: cancel, statement_timeout, connection slots, descriptor exhaustion.

* a CancelRequest with the session's (pid, key) cancels its running statement with 57014
  "canceling statement due to user request" (libpq's PQcancel through psycopg2, and raw
  CancelRequest packets); a wrong key does nothing; the session stays usable;
* ``statement_timeout`` (server setting and SET) cancels with 57014 "canceling statement due to
  statement timeout";
* ``max_connections`` with ``superuser_reserved_connections``: PostgreSQL's two 53300 refusals;
* under ``ulimit -n 64`` hundreds of idle clients are refused with 53300 or closed, nothing
  else: no crash-restart, an already-connected session keeps committing, the log stays short,
  and once the clients leave, new ones are served.
"""
from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import subprocess
import sys
import time

import psycopg2
import pytest

from backend.session import slot_refusal
from libpq import protocol as P
from tests.cluster import run_in_thread, ROOT, wait_for

STARTUP = (lambda body: struct.pack("!I", len(body) + 4) + body)(
    struct.pack("!I", P.PROTOCOL_3) + P.cstr("user") + P.cstr("postgres") + P.cstr("database")
    + P.cstr("postgres") + b"\x00")


def backend_pid_and_key(node) -> tuple[socket.socket, int, int]:
    """A raw session: (socket, pid, key) from its BackendKeyData."""
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    s.sendall(STARTUP)
    r = P.MessageReader()
    while True:
        b = s.recv(65536)
        assert b
        r.feed(b)
        while (m := r.next()) is not None:
            if m[0] == b"K":
                pid, key = struct.unpack("!II", m[1])
            if m[0] == b"Z":
                return s, pid, key


def send_cancel(node, pid: int, key: int) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as c:
        c.sendall(struct.pack("!IIII", 16, P.CANCEL_REQUEST, pid, key))
        c.settimeout(10)
        assert c.recv(100) == b""          # the server answers nothing and closes


def read_until_ready(s: socket.socket) -> list[tuple[bytes, bytes]]:
    r = P.MessageReader()
    out = []
    while True:
        b = s.recv(65536)
        assert b, "connection closed"
        r.feed(b)
        while (m := r.next()) is not None:
            out.append(m)
            if m[0] == b"Z":
                return out


def error_of(msgs) -> dict[str, str]:
    for t, body in msgs:
        if t == b"E":
            return {chr(p[0]): p[1:].decode() for p in body.split(b"\x00") if p}
    return {}


# ---------------------------------------------------------------- cancel
@pytest.mark.timeout(120)
def test_cancel_request_cancels_running_statement(nodes):
    n = nodes.primary()
    c = n.connect()
    t0 = time.monotonic()
    t, res = run_in_thread(lambda: c.cursor().execute("SELECT pg_sleep(10)"))
    # A CancelRequest that arrives before the Query cancels nothing (as in PostgreSQL): repeat
    # it until the statement ends; a cancel of an idle session is harmless.
    for _ in range(50):
        c.cancel()
        t.join(0.1)
        if not t.is_alive():
            break
    assert not t.is_alive()
    assert time.monotonic() - t0 < 8
    e = res.get("error")
    assert isinstance(e, psycopg2.errors.QueryCanceled), res
    assert e.pgcode == "57014" and "canceling statement due to user request" in str(e)
    cur = c.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    c.close()


@pytest.mark.timeout(120)
def test_cancel_with_wrong_key_does_nothing(nodes):
    n = nodes.primary()
    s, pid, key = backend_pid_and_key(n)
    other, opid, okey = backend_pid_and_key(n)
    s.sendall(P.msg(b"Q", b"SELECT pg_sleep(1.5)\x00"))
    send_cancel(n, pid, key ^ 1)            # wrong key
    send_cancel(n, pid + 1, key)            # wrong pid
    send_cancel(n, opid, okey)              # another session's key: that idle session is untouched
    t0 = time.monotonic()
    msgs = read_until_ready(s)
    assert not error_of(msgs), error_of(msgs)
    assert time.monotonic() - t0 > 1.0
    # and the right key cancels
    s.sendall(P.msg(b"Q", b"SELECT pg_sleep(10)\x00"))   # in the backend's socket before the cancel connects
    send_cancel(n, pid, key)
    msgs = read_until_ready(s)
    assert error_of(msgs).get("C") == "57014"
    other.sendall(P.msg(b"Q", b"SELECT 1\x00"))
    assert not error_of(read_until_ready(other))
    s.close()
    other.close()


# ---------------------------------------------------------------- statement_timeout
@pytest.mark.timeout(120)
def test_statement_timeout(nodes):
    n = nodes.primary(statement_timeout="300ms")
    c = n.connect()
    cur = c.cursor()
    t0 = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled) as ei:
        cur.execute("SELECT pg_sleep(5)")
    assert ei.value.pgcode == "57014"
    assert "canceling statement due to statement timeout" in str(ei.value)
    assert time.monotonic() - t0 < 3
    cur.execute("SET statement_timeout = 0")
    cur.execute("SELECT pg_sleep(0.5)")
    cur.execute("SET statement_timeout = '100ms'")
    with pytest.raises(psycopg2.errors.QueryCanceled):
        cur.execute("SELECT pg_sleep(5)")
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    c.close()


# ---------------------------------------------------------------- connection slots
def test_slot_refusals():
    assert slot_refusal(99, 100, 3, True) is None
    assert slot_refusal(100, 100, 3, True) == "sorry, too many clients already"
    assert slot_refusal(96, 100, 3, False) is None
    assert slot_refusal(97, 100, 3, False) == \
        "remaining connection slots are reserved for non-replication superuser connections"
    assert slot_refusal(97, 100, 3, True) is None


@pytest.mark.timeout(120)
def test_max_connections_with_reserved_slots(nodes):
    """Every role is a superuser until roles exist: all max_connections slots serve them."""
    n = nodes.primary(max_connections=5, superuser_reserved_connections=3)
    conns = [n.connect() for _ in range(5)]
    with pytest.raises(psycopg2.OperationalError) as ei:
        n.connect()
    assert "sorry, too many clients already" in str(ei.value)
    conns.pop().close()
    wait_for(lambda: n.connect().close() is None, 10, "a free slot")
    for c in conns:
        c.close()


# ---------------------------------------------------------------- descriptors
NOFILE = 64


def start_with_nofile(node, limit: int) -> None:
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    p = subprocess.run([sys.executable, "-m", "walswitch.cli", "start", "-D", node.datadir, "--detach", "-t", "60"],
                       cwd=ROOT, capture_output=True, text=True, timeout=90, preexec_fn=lower)
    assert p.returncode == 0, p.stderr


def try_idle_client(port: int) -> str:
    """'served', 'refused' (53300) or 'closed'; the socket stays open when served."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(STARTUP)
        data = b""
        while b"Z\x00\x00\x00\x05" not in data:
            b = s.recv(65536)
            if not b:
                break
            data += b
            if data[:1] == b"E":
                break
    except OSError:
        s.close()
        return "closed", None
    if b"Z\x00\x00\x00\x05" in data:
        return "served", s
    s.close()
    if b"C53300" in data:
        return "refused", None
    return "closed", None


@pytest.mark.timeout(240)
def test_descriptor_exhaustion_refuses_connections_only(nodes):
    n = nodes("primary")
    n.init(1, max_connections=1000)
    start_with_nofile(n, NOFILE)
    backend = n.child("backend")
    assert backend.rlimit(resource.RLIMIT_NOFILE)[0] == NOFILE
    writer = n.connect()
    wcur = writer.cursor()
    log_before = len(n.log_text().splitlines())
    outcomes = {"served": 0, "refused": 0, "closed": 0}
    idle: list[socket.socket] = []
    commits = 0
    try:
        for i in range(300):
            kind, s = try_idle_client(n.port)
            outcomes[kind] += 1
            if s is not None:
                idle.append(s)
            if i % 10 == 0:
                wcur.execute("INSERT INTO kv VALUES (%s, %s)", (f"k{i}", "v"))
                commits += 1
        assert outcomes["refused"] > 200, outcomes
        assert outcomes["served"] > 0, outcomes
        assert backend.num_fds() <= NOFILE
        for i in range(20):
            wcur.execute("INSERT INTO kv VALUES (%s, %s)", (f"after{i}", "v"))
        wcur.execute("SELECT pg_switch_wal()")           # a new WAL segment gets its descriptor
        wcur.execute("INSERT INTO kv VALUES ('last', 'v')")
        wcur.execute("CHECKPOINT")
    finally:
        for s in idle:
            s.close()
    wcur.execute("SELECT count(*) FROM kv")
    assert wcur.fetchone()[0] == commits + 21
    writer.close()
    wait_for(lambda: n.sql("SELECT 1") == [(1,)], 10, "a new connection served once the clients left")
    events = n.events()
    assert not [e for e in events if e.get("kind") in ("crash", "crash_restart")]
    exits = [e for e in events if e.get("kind") == "child_exit" and (e.get("signal") or e.get("code") != 0)]
    assert not exits, [(e.get("child"), e.get("code"), e.get("signal")) for e in exits]
    new_lines = n.log_text().splitlines()[log_before:]
    assert len(new_lines) < 20, "\n".join(new_lines[:40])
    assert any("too many clients" in line for line in new_lines), new_lines
