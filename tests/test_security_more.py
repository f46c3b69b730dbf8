"""What the security tests did not yet show, end to end (real TCP, real libpq, psql and pg_receivewal):

* the SQLSTATE on the wire at connect time, read from the ErrorResponse by a raw-socket client
  (libpq hides it): 28000 for no pg_hba.conf line and for a ``reject`` line, 28P01 with the same
  message for a wrong password and for a user that does not exist (cleartext, md5 and SCRAM);
* ``superuser_reserved_connections``: a non-superuser refused with 53300 when only reserved slots
  remain, a superuser still let in;
* ``walswitch init``'s defaults (initdb's loopback-only pg_hba.conf, ``listen_addresses =
  localhost``), ``-W`` driven through a terminal, ``-A/--auth``, ``--auth-host``, ``--auth-local``;
* roles: NOSUPERUSER, NOREPLICATION and PASSWORD NULL take effect (also for an open session), psql's
  ``\\password`` through a terminal;
* the accept loop when accept() fails with EMFILE while hundreds of clients wait at once: it backs
  off, logs once per interval, a connected session keeps committing, no crash-restart;
* bytes that are not UTF-8 in postgresql.conf and pg_hba.conf: one line naming file and line;
* no SQL name can arm a fault-injection point.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import pty
import re
import select
import signal
import socket
import ssl
import struct
import time
from pathlib import Path

import psutil
import psycopg
import psycopg2
import pytest

from libpq import protocol as P
from libpq.hba import parse_hba
from tests.cluster import ROOT, as_postgres, pg_tool, wait_for, walswitch

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- a raw-socket client
def _h(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def raw_login(port: int, user: str, password: str | None = None, database: str = "postgres",
              timeout: float = 10.0, tls: "ssl.SSLContext | None" = None) -> dict:
    """Start a session over a bare socket (inside TLS after an SSLRequest when ``tls`` is given),
    answering the server's password request (cleartext, md5, SCRAM-SHA-256) with ``password``.
    Returns {"auth": [request codes], "error": ErrorResponse fields or None, "ready": ReadyForQuery seen}."""
    params = P.cstr("user") + P.cstr(user) + P.cstr("database") + P.cstr(database) + b"\0"
    body = struct.pack("!I", P.PROTOCOL_3) + params
    out: dict = {"auth": [], "error": None, "ready": False}
    scram: dict = {}
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        if tls is not None:
            s.sendall(struct.pack("!II", 8, P.SSL_REQUEST))
            assert s.recv(1) == b"S"
            s = stack.enter_context(tls.wrap_socket(s, server_hostname="localhost"))
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        reader = P.MessageReader()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                return out
            reader.feed(data)
            while (m := reader.next()) is not None:
                mtype, mbody = m
                if mtype == b"E":
                    out["error"] = {chr(f[0]): f[1:].decode() for f in mbody.split(b"\0") if f}
                    return out
                if mtype == b"Z":
                    out["ready"] = True
                    return out
                if mtype != b"R":
                    continue
                (code,) = struct.unpack("!I", mbody[:4])
                out["auth"].append(code)
                pw = (password or "").encode()
                if code == 3:                                   # cleartext
                    s.sendall(P.msg(b"p", pw + b"\0"))
                elif code == 5:                                 # md5 with a 4-byte salt
                    inner = hashlib.md5(pw + user.encode()).hexdigest().encode()
                    s.sendall(P.msg(b"p", b"md5" + hashlib.md5(inner + mbody[4:8]).hexdigest().encode() + b"\0"))
                elif code == 10:                                # SASL: mechanisms
                    scram["bare"] = "n=,r=" + base64.b64encode(os.urandom(18)).decode()
                    first = ("n,," + scram["bare"]).encode()
                    s.sendall(P.msg(b"p", P.cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
                elif code == 11:                                # SASLContinue: server-first
                    server_first = mbody[4:].decode()
                    out["server_first"] = server_first
                    a = dict(x.split("=", 1) for x in server_first.split(","))
                    salted = hashlib.pbkdf2_hmac("sha256", pw, base64.b64decode(a["s"]), int(a["i"]))
                    ck = _h(salted, b"Client Key")
                    without = f"c=biws,r={a['r']}"
                    auth = f"{scram['bare']},{server_first},{without}".encode()
                    proof = bytes(x ^ y for x, y in zip(ck, _h(hashlib.sha256(ck).digest(), auth)))
                    s.sendall(P.msg(b"p", f"{without},p={base64.b64encode(proof).decode()}".encode()))
        raise AssertionError(f"no answer within {timeout} s")


def _hba(node, text: str) -> None:
    Path(node.datadir, "pg_hba.conf").write_text(text)


def _reload_and_wait(node, probe) -> None:
    """pg_reload_conf() as the superuser, then wait until ``probe()`` shows the new rules."""
    node.sql("SELECT pg_reload_conf()")
    wait_for(probe, 30, "the new pg_hba.conf in force")


# ---------------------------------------------------------------- 1. SQLSTATEs on the wire
def test_wire_sqlstates_at_connect(nodes):
    p = nodes.primary("p")
    p.sql("CREATE ROLE alice LOGIN PASSWORD 'apw'")
    p.sql("SET password_encryption = 'md5'; CREATE ROLE mallory LOGIN PASSWORD 'mpw'")
    p.sql("CREATE ROLE mscram LOGIN PASSWORD 'spw'")
    _hba(p, "host all postgres 127.0.0.1/32 trust\n"
            "host all rejected 127.0.0.1/32 reject\n"
            "host all alice,ghost 127.0.0.1/32 scram-sha-256\n"
            "host all mallory,mscram,ghost_md5 127.0.0.1/32 md5\n"
            "host all all 127.0.0.1/32 password\n"
            "host postgres nohba 10.0.0.0/8 trust\n")
    _reload_and_wait(p, lambda: raw_login(p.port, "alice", "apw")["auth"][:1] == [10])
    assert raw_login(p.port, "alice", "apw")["ready"]
    assert raw_login(p.port, "mallory", "mpw")["ready"]

    # pg_hba.conf: no line matches (the database "elsewhere" is on no line for this user), a reject line
    _hba(p, Path(p.datadir, "pg_hba.conf").read_text().replace("host all all 127.0.0.1/32 password",
                                                                "host postgres all 127.0.0.1/32 password"))
    _reload_and_wait(p, lambda: raw_login(p.port, "zed", database="elsewhere")["error"] is not None)
    e = raw_login(p.port, "zed", database="elsewhere")["error"]
    assert (e["S"], e["V"], e["C"]) == ("FATAL", "FATAL", "28000"), e
    assert e["M"] == 'no pg_hba.conf entry for host "127.0.0.1", user "zed", database "elsewhere", SSL off'
    e = raw_login(p.port, "rejected")["error"]
    assert (e["V"], e["C"]) == ("FATAL", "28000"), e
    assert e["M"] == 'pg_hba.conf rejects connection for host "127.0.0.1", user "rejected", database "postgres", SSL off'

    # a wrong password and a user that does not exist: 28P01, the same fields, per method.  On an md5
    # line, as PostgreSQL's CheckPWChallengeAuth, a user without a secret gets password_encryption's
    # exchange (SCRAM here), the same as a user whose secret is SCRAM; an md5 secret gets the md5 one.
    assert raw_login(p.port, "mallory", "x")["auth"] == [5]
    for method, user, ghost in (("scram-sha-256", "alice", "ghost"), ("md5", "mscram", "ghost_md5"),
                                ("password", "alice2", "ghost_pw")):
        if method == "password":
            p.sql("CREATE ROLE alice2 LOGIN PASSWORD 'a2pw'")
        wrong = raw_login(p.port, user, "not-the-password")
        unknown = raw_login(p.port, ghost, "not-the-password")
        assert wrong["error"]["C"] == "28P01" and unknown["error"]["C"] == "28P01", (method, wrong, unknown)
        assert wrong["error"]["M"] == f'password authentication failed for user "{user}"'
        # nothing tells the two apart: same request codes, same fields but the name
        assert unknown["auth"] == wrong["auth"], method
        assert unknown["error"] == {k: v.replace(user, ghost) for k, v in wrong["error"].items()}, method
        if method == "scram-sha-256":            # the mock exchange: 4096 iterations, a salt of the same length
            w = dict(x.split("=", 1) for x in wrong["server_first"].split(","))
            u = dict(x.split("=", 1) for x in unknown["server_first"].split(","))
            assert u["i"] == w["i"] == "4096" and len(base64.b64decode(u["s"])) == len(base64.b64decode(w["s"]))
    # a role without LOGIN and a user without a password on a password line
    p.sql("CREATE ROLE nopw LOGIN")
    e = raw_login(p.port, "nopw", "x")["error"]
    assert (e["C"], e["M"]) == ("28P01", 'password authentication failed for user "nopw"'), e
    log = p.log_text()
    assert 'Role "ghost" does not exist.' in log and "not-the-password" not in log


# ---------------------------------------------------------------- 2. reserved connection slots
def test_superuser_reserved_connections_end_to_end(nodes):
    p = nodes.primary("p", max_connections=5, superuser_reserved_connections=2)
    p.sql("CREATE ROLE app LOGIN")
    held = []
    try:
        for _ in range(3):                        # 5 - 2 slots for everyone
            held.append(p.connect(user="app"))
        e = raw_login(p.port, "app")["error"]
        assert e is not None and (e["V"], e["C"]) == ("FATAL", "53300"), e
        assert e["M"] == "remaining connection slots are reserved for non-replication superuser connections"
        with pytest.raises(psycopg2.OperationalError, match="remaining connection slots are reserved"):
            p.connect(user="app")
        for _ in range(2):                        # the reserved ones serve the superuser
            su = p.connect()
            with su.cursor() as cur:
                cur.execute("SELECT current_user, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                assert cur.fetchone()[0] == "postgres"
            held.append(su)
        e = raw_login(p.port, "postgres")["error"]
        assert e is not None and (e["C"], e["M"]) == ("53300", "sorry, too many clients already"), e
        # Every session counts against the unreserved slots, a superuser's too (PostgreSQL's
        # HaveNFreeProcs): with one app and one superuser gone, 3 sessions remain and app is refused.
        held.pop(0).close()
        held.pop().close()
        wait_for(lambda: raw_login(p.port, "postgres")["ready"], 10, "a slot for the superuser")
        assert raw_login(p.port, "app")["error"]["C"] == "53300"
        held.pop().close()
        wait_for(lambda: raw_login(p.port, "app")["ready"], 10, "an unreserved slot for app")
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------- 4. walswitch init's defaults and options
def _rules(datadir: str) -> list[tuple[str, str, str, str, str]]:
    out = []
    for line in Path(datadir, "pg_hba.conf").read_text().splitlines():
        f = line.split("#", 1)[0].split()
        if f:
            out.append((f[0], f[1], f[2], f[3] if f[0] != "local" else "", f[-1]))
    return out


def _initdb_rules(host: str, local: str) -> list[tuple[str, str, str, str, str]]:
    """The rule lines of PostgreSQL 15's own pg_hba.conf.sample, as initdb substitutes them."""
    sample = Path("/usr/share/postgresql/15/pg_hba.conf.sample")
    if not sample.exists():
        pytest.skip(f"{sample} is not installed")
    text = (sample.read_text().replace("@remove-line-for-nolocal@", "").replace("@authcomment@", "")
            .replace("@authmethodhost@", host).replace("@authmethodlocal@", local))
    out = []
    for line in text.splitlines():
        f = line.split("#", 1)[0].split()
        if f:
            out.append((f[0], f[1], f[2], f[3] if f[0] != "local" else "", f[-1]))
    return out


def run_in_pty(argv: list[str], answers: list[tuple[str, str]], timeout: float = 60.0,
               env: dict | None = None) -> tuple[int, str]:
    """Run argv with a new terminal as its controlling tty (what getpass and psql's prompts read);
    answer each prompt in turn.  Returns (exit status, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:                                  # the child: a session leader on the pty
        try:
            os.chdir(ROOT)
            os.execvpe(argv[0], argv, env if env is not None else os.environ)
        finally:
            os._exit(127)
    out = b""
    seen = 0
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{argv[:3]} did not finish in {timeout} s; the terminal showed: {out!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:                       # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            while pending and (i := out.find(pending[0][0].encode(), seen)) >= 0:
                seen = i + len(pending[0][0])
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
    finally:
        os.close(fd)
        status = None
        while time.monotonic() < deadline + 5:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                status = st
                break
            time.sleep(0.02)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def _init_argv(node, *extra: str) -> list[str]:
    import sys
    return [sys.executable, "-m", "walswitch.cli", "init", "-D", node.datadir, "--wal-segsize", "1",
            "-p", str(node.port), *extra]


def _non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_init_defaults_loopback_only(nodes):
    n = nodes("d")
    r = walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "-U", "postgres")
    assert 'enabling "trust" authentication for local connections' in r.stderr
    assert _rules(n.datadir) == _initdb_rules("trust", "trust")
    rules = parse_hba(Path(n.datadir, "pg_hba.conf").read_text())
    for addr in ("127.0.0.1", "::1"):
        assert rules.match(addr, False, "postgres", "x", False).method == "trust"
        assert rules.match(addr, False, "postgres", "x", True).method == "trust"      # replication
    for addr in ("192.0.2.7", "10.1.2.3", "::ffff:192.0.2.7", "2001:db8::1", "127.0.0.2"):
        assert rules.match(addr, False, "postgres", "x", False) is None, addr
    conf = Path(n.datadir, "walswitch.conf").read_text()
    assert re.search(r"^listen_addresses = 'localhost'$", conf, re.M)
    n.start()
    assert n.sql("SHOW listen_addresses") == [("localhost",)]
    other = _non_loopback_ipv4()
    if other is not None:                      # the host's own address: nothing listens there
        with pytest.raises(OSError) as ei:
            socket.create_connection((other, n.port), timeout=5).close()
        assert isinstance(ei.value, (ConnectionRefusedError, TimeoutError)), ei.value
        with pytest.raises(psycopg2.OperationalError, match="Connection refused|timeout"):
            psycopg2.connect(n.dsn(host=other, connect_timeout=5))


def test_init_password_prompt_and_auth_options(nodes):
    # -W reads the password twice from the terminal, as initdb; --auth-host for TCP lines only
    w = nodes("w")
    code, shown = run_in_pty(_init_argv(w, "-U", "admin", "-W", "--auth-host", "scram-sha-256"),
                             [("Enter new superuser password: ", "t3rm-pw"), ("Enter it again: ", "t3rm-pw")])
    assert code == 0, shown
    assert "t3rm-pw" not in shown                 # no echo of the password
    assert _rules(w.datadir) == _initdb_rules("scram-sha-256", "trust")
    w.start()
    with psycopg.connect(f"host=127.0.0.1 port={w.port} dbname=postgres user=admin password=t3rm-pw") as c:
        assert c.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
                         ).fetchone() == ("admin", True)
    assert raw_login(w.port, "admin", "wrong")["error"]["C"] == "28P01"
    assert raw_login(w.port, "admin", "t3rm-pw")["auth"][0] == 10        # SCRAM asked
    # typed differently the second time: refused as initdb, nothing made
    bad = nodes("bad")
    code, shown = run_in_pty(_init_argv(bad, "-W"), [("Enter new superuser password: ", "one"),
                                                    ("Enter it again: ", "two")])
    assert code != 0 and "Passwords didn't match." in shown, shown
    assert not Path(bad.datadir, "walswitch.conf").exists()
    # -A for both kinds of lines, --auth-local/--auth-host override it
    pwfile = Path(w.datadir).parent / "pw"
    pwfile.write_text("filepw\n")
    a = nodes("a")
    walswitch("init", "-D", a.datadir, "--wal-segsize", "1", "-A", "md5", "--pwfile", str(pwfile))
    assert _rules(a.datadir) == _initdb_rules("md5", "md5")
    b = nodes("b")
    walswitch("init", "-D", b.datadir, "--wal-segsize", "1", "--auth", "password", "--auth-local", "reject",
              "--pwfile", str(pwfile))
    assert _rules(b.datadir) == _initdb_rules("password", "reject")
    c = nodes("c")
    r = walswitch("init", "-D", c.datadir, "--wal-segsize", "1", "--auth-host", "scram-sha-256", check=False)
    assert r.returncode != 0
    assert "must specify a password for the superuser to enable scram-sha-256 authentication" in r.stderr


# ---------------------------------------------------------------- 5. roles
PWD_HBA = ("host all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n"
           "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n")


def test_role_attributes_take_effect(nodes, tmp_path):
    p = nodes.primary("p")
    p.sql("CREATE ROLE x LOGIN SUPERUSER REPLICATION PASSWORD 'xpw'")
    _hba(p, PWD_HBA)
    _reload_and_wait(p, lambda: raw_login(p.port, "x", "xpw")["auth"][:1] == [10])
    dsn = p.dsn(user="x", password="xpw")
    open_session = psycopg2.connect(dsn)
    open_session.autocommit = True
    with open_session.cursor() as cur:
        cur.execute("SELECT pg_switch_wal()")                # a superuser's right
    with psycopg.connect(dsn + " replication=true", autocommit=True) as c:
        assert c.pgconn.exec_(b"IDENTIFY_SYSTEM").status == psycopg.pq.ExecStatus.TUPLES_OK

    # NOSUPERUSER: a new session and the one already open get 42501
    p.sql("ALTER ROLE x NOSUPERUSER")
    with psycopg2.connect(dsn) as c, c.cursor() as cur:
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute("SELECT pg_switch_wal()")
    assert ei.value.pgcode == "42501" and "permission denied for function pg_switch_wal" in str(ei.value)
    with pytest.raises(psycopg2.Error) as ei, open_session.cursor() as cur:
        cur.execute("SELECT pg_reload_conf()")
    assert ei.value.pgcode == "42501", ei.value
    with pytest.raises(psycopg2.Error) as ei, open_session.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_authid")
    assert ei.value.pgcode == "42501", ei.value
    open_session.close()

    # NOREPLICATION: pg_receivewal and a replication connection refused (it was REPLICATION, not superuser)
    p.sql("ALTER ROLE x NOREPLICATION")
    r = as_postgres([pg_tool("pg_receivewal"), "-d", dsn, "-D", "/tmp", "--no-loop", "-n"], timeout=60)
    assert r.returncode != 0 and "must be superuser or replication role to start walsender" in r.stderr, r.stderr
    with pytest.raises(psycopg.OperationalError, match="must be superuser or replication role to start walsender"):
        psycopg.connect(dsn + " replication=true")
    e = raw_login(p.port, "x", "xpw")
    assert e["ready"]                                          # an ordinary session is still fine

    # PASSWORD NULL: the password no longer logs in, 28P01 as a wrong one
    p.sql("ALTER ROLE x PASSWORD NULL")
    assert p.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'x'") == [(None,)]
    e = raw_login(p.port, "x", "xpw")["error"]
    assert (e["C"], e["M"]) == ("28P01", 'password authentication failed for user "x"'), e
    with pytest.raises(psycopg2.OperationalError, match='password authentication failed for user "x"'):
        psycopg2.connect(dsn)

    # psql's \password, typed twice at its terminal prompt; it sends a SCRAM secret, never the password
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    code, shown = run_in_pty([pg_tool("psql"), "-X", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres",
                              "-d", "postgres", "-c", "\\password x"],
                             [('Enter new password for user "x": ', "n3w-pw"), ("Enter it again: ", "n3w-pw")],
                             env=env)
    assert code == 0, shown
    secret = p.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'x'")[0][0]
    assert secret.startswith("SCRAM-SHA-256$4096:")
    with psycopg2.connect(p.dsn(user="x", password="n3w-pw")) as c, c.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("x",)
    assert raw_login(p.port, "x", "xpw")["error"]["C"] == "28P01"
    assert "n3w-pw" not in p.log_text()


# ---------------------------------------------------------------- 6. accept() failing: back off, log once
def _open_many(port: int, count: int) -> list[socket.socket]:
    """``count`` clients connecting at once (non-blocking), each sending its startup packet as soon as
    its connection is up; all stay open."""
    startup = struct.pack("!I", P.PROTOCOL_3) + b"user\0postgres\0database\0postgres\0\0"
    startup = struct.pack("!I", len(startup) + 4) + startup
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    pending = set(socks)
    deadline = time.monotonic() + 3             # those past the listen backlog may stay unconnected
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(pending), [], 0.5)
        for s in writable:
            pending.discard(s)
            with contextlib.suppress(OSError):
                s.send(startup)
    return socks


def _answers(socks: list[socket.socket]) -> dict[str, int]:
    out = {"53300": 0, "ready": 0}
    for s in socks:
        with contextlib.suppress(OSError):
            data = s.recv(65536, socket.MSG_PEEK)
            if b"C53300" in data:
                out["53300"] += 1
            elif b"Z\0\0\0\x05" in data:
                out["ready"] += 1
    return out


@pytest.mark.timeout(120)
def test_accept_emfile_backs_off_with_hundreds_waiting(nodes):
    from backend.fdbudget import ACCEPT_BACKOFF
    from tests.test_robustness import start_with_nofile
    n = nodes("p")
    n.init(1, max_connections=1000)
    start_with_nofile(n, 64)
    writer = n.connect()
    wcur = writer.cursor()
    wcur.execute("INSERT INTO kv VALUES ('before', 'v')")
    backend = n.child("backend")
    before = len(n.log_text().splitlines())
    # Every descriptor of the backend in use: its soft limit lowered to what it has open now, so the
    # next accept() fails with EMFILE (what a process sees when something else took its reserve).
    backend.rlimit(psutil.RLIMIT_NOFILE, (backend.num_fds(), 64))
    socks: list[socket.socket] = []
    try:
        cpu0, t0 = sum(backend.cpu_times()[:2]), time.monotonic()
        socks = _open_many(n.port, 300)
        n.wait_log("could not accept new connection: Too many open files", timeout=5)
        # The waiting clients are refused (53300, through a spare descriptor) one per back-off, no faster.
        wait_for(lambda: _answers(socks)["53300"] >= 4, 15, "four clients refused through the spare descriptor")
        for i in range(10):                    # the connected session goes on committing meanwhile
            wcur.execute("INSERT INTO kv VALUES (%s, 'v')", (f"during{i}",))
        elapsed, cpu = time.monotonic() - t0, sum(backend.cpu_times()[:2]) - cpu0
        got = _answers(socks)
        assert got["53300"] <= elapsed / ACCEPT_BACKOFF + 2, (got, elapsed)
        assert cpu < 0.5 * elapsed, f"the backend spun: {cpu:.2f} s of CPU in {elapsed:.2f} s"
        lines = n.log_text().splitlines()[before:]
        emfile = [ln for ln in lines if "could not accept new connection" in ln]
        assert len(emfile) == 1, emfile              # once per 10 s interval, not per attempt
        assert len(lines) < 10, "\n".join(lines)
    finally:
        backend.rlimit(psutil.RLIMIT_NOFILE, (64, 64))
        for s in socks:
            s.close()
    wcur.execute("SELECT count(*) FROM kv")
    assert wcur.fetchone() == (11,)
    writer.close()
    wait_for(lambda: n.sql("SELECT 1") == [(1,)], 15, "new connections served again")
    events = n.events()
    assert not [e for e in events if e.get("kind") in ("crash", "crash_restart")]
    assert not [e for e in events if e.get("kind") == "child_exit" and (e.get("signal") or e.get("code"))]
    assert n.child("backend").pid == backend.pid


# ---------------------------------------------------------------- 7. bytes that are not UTF-8
def test_non_utf8_configuration_files(nodes):
    p = nodes("p")
    p.init()
    conf = Path(p.datadir, "postgresql.conf")
    conf.write_bytes(b"# settings\nwork_mem = '4MB'\ncluster_name = 'caf\xe9'\n")
    r = p.start(check=False, timeout=30)
    assert r.returncode != 0 and not p.is_running()
    lines = [ln for ln in r.stderr.splitlines() if "invalid byte sequence" in ln]
    assert len(lines) == 1 and f'in file "{conf}" line 3' in lines[0] and "0xe9" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    conf.unlink()

    hba = Path(p.datadir, "pg_hba.conf")
    good = hba.read_bytes()
    hba.write_bytes(good + b"host all r\xf6le 127.0.0.1/32 trust\n")
    r = p.start(check=False, timeout=30)
    assert r.returncode != 0 and not p.is_running()
    bad_line = good.count(b"\n") + 1
    lines = [ln for ln in (r.stderr + p.log_text()).splitlines() if "invalid byte sequence" in ln]
    assert lines and f'in file "{hba}" line {bad_line}' in lines[0], r.stderr
    assert "Traceback" not in r.stderr

    # at a reload: logged with file and line, the rules in force stay
    hba.write_bytes(b"host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n")
    p.start()
    p.sql("CREATE ROLE other LOGIN")
    assert raw_login(p.port, "other")["error"]["C"] == "28000"
    hba.write_bytes(b"host all all 127.0.0.1/32 trust\n# caf\xe9\n")
    p.sql("SELECT pg_reload_conf()")
    p.wait_log(f'invalid byte sequence for encoding "UTF8" in file "{hba}" line 2')
    p.wait_log("pg_hba.conf was not reloaded")
    assert raw_login(p.port, "other")["error"]["C"] == "28000"       # the old rules: still rejected
    assert raw_login(p.port, "postgres")["ready"]
    assert not p.events("crash")


# ---------------------------------------------------------------- 8. fault injection is not on the wire
def test_no_sql_arms_a_fault(nodes):
    p = nodes.primary("p")
    from backend.functions import FUNCS
    assert not [f for f in FUNCS if re.search("inject|fault|arm", f)], sorted(FUNCS)
    for q in ("SELECT inject('before_flush', 'kill')", "SELECT pg_inject('before_flush', 'kill')",
              "SELECT walswitch_inject('before_flush', 'kill')", "SELECT arm('before_flush', 'kill')",
              "SELECT inject_arm('before_flush', 'kill')", "SELECT walswitch.inject('before_flush', 'kill')",
              "SELECT pg_catalog.inject_fault('before_flush')", "SELECT inject_fault('before_flush', 'kill')"):
        with pytest.raises(psycopg2.Error) as ei:
            p.sql(q)
        assert ei.value.pgcode in ("42883", "3F000"), (q, ei.value.pgcode, str(ei.value))
    for q in ("SET walswitch.inject = 'before_flush:kill'", "SET inject = 'before_flush:kill'"):
        with contextlib.suppress(psycopg2.Error):
            p.sql(q)
    # nor a startup packet setting nor an options string
    with psycopg2.connect(p.dsn(), options="-c walswitch.inject=before_flush:kill") as c, c.cursor() as cur:
        cur.execute("SELECT 1")
    assert not Path(p.datadir, "inject").exists() or not os.listdir(Path(p.datadir, "inject"))
    assert not p.events("inject")
