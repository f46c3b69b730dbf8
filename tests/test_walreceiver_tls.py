"""Our walreceiver (libpq through psycopg) against a real PostgreSQL 15 primary over TLS.

PostgreSQL 15 runs with ``ssl = on`` and a server certificate from a CA made here (``tests/tls_certs.py``);
its pg_hba.conf admits replication only as ``hostssl ... scram-sha-256 clientcert=verify-full`` and rejects
``hostnossl`` replication.  The standby connects with ``sslmode=verify-full``, the CA as ``sslrootcert``, a
client certificate (``sslcert``/``sslkey``), ``channel_binding=require`` (so SCRAM-SHA-256-PLUS), and the
password from a passfile (``passfile=`` or ``PGPASSFILE``) or from conninfo.  The password must appear in
none of: our log, events.jsonl, the whole shared-memory segment (which ``walswitch status`` and
pg_stat_wal_receiver read) and pg_stat_wal_receiver's row.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from backend.sql import stat_wal_receiver_rows
from shmem.states import WalRcvState
from tests.cluster import wait_for
from tests.test_walreceiver import SEGSIZE, fatal_lines, receiver_env  # noqa: F401 (fixture)
from tests.test_walreceiver_real_pg import PG15, _cannot_run_pg, standby_for
from tests.tls_certs import issue, make_ca
from xlog.lsn import format_lsn, parse_lsn, segment_name, segno_of

pytestmark = pytest.mark.skipif(_cannot_run_pg() is not None, reason=str(_cannot_run_pg()))

PASSWORD = "tls-Secret-9f2c"


class PG15TLS(PG15):
    HBA = """\
local all all trust
hostssl replication repl 127.0.0.1/32 scram-sha-256 clientcert=verify-full
hostnossl replication all 127.0.0.1/32 reject
host all all 127.0.0.1/32 trust
"""

    def __init__(self, client_dir: Path) -> None:
        super().__init__()
        self.client_dir = client_dir

    def init_and_start(self) -> None:
        self.run("initdb", "-D", self.data, "--wal-segsize=1", "-A", "trust", "-U", "postgres", "-N",
                 "--no-instructions")
        Path(self.data, "pg_hba.conf").write_text(self.HBA)
        ca = make_ca()
        ca.write(os.path.join(self.data, "root.crt"))
        issue(ca, "localhost", ["localhost", "127.0.0.1"]).write(os.path.join(self.data, "server.crt"),
                                                                   os.path.join(self.data, "server.key"))
        for f in ("root.crt", "server.crt", "server.key"):
            os.chown(os.path.join(self.data, f), *_postgres_ids())
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                    "ssl_ca_file = 'root.crt'\n")
        # The client's side: the CA, a certificate for role repl, another CA that signed nothing of this server.
        ca.write(str(self.client_dir / "root.crt"))
        issue(ca, "repl", server=False).write(str(self.client_dir / "repl.crt"), str(self.client_dir / "repl.key"))
        make_ca("some other CA").write(str(self.client_dir / "other.crt"))
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c wal_level=replica "
                "-c max_wal_senders=4 -c wal_keep_size=256MB -c fsync=off -c wal_sender_timeout=60s")
        self.started = True
        self.run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.base, "log"), "-w", "-t", "30",
                 "start")
        self.psql(f"CREATE ROLE repl LOGIN REPLICATION PASSWORD '{PASSWORD}'")


def _postgres_ids() -> tuple[int, int]:
    import pwd
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def pgtls(tmp_path):
    client = tmp_path / "client"
    client.mkdir()
    c = PG15TLS(client)
    try:
        c.init_and_start()
        yield c
    finally:
        c.close()


def _passfile(path: Path, port: int) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# host:port:database:user:password\n127.0.0.1:{port}:replication:repl:{PASSWORD}\n")
    return str(path)


def _tls_conninfo(pg: PG15TLS, rootcert: str = "root.crt") -> str:
    c = pg.client_dir
    return (f"host=127.0.0.1 port={pg.port} user=repl sslmode=verify-full sslrootcert={c / rootcert} "
            f"sslcert={c / 'repl.crt'} sslkey={c / 'repl.key'} channel_binding=require application_name=tlstest")


def _assert_no_secret(env) -> None:
    secret = PASSWORD.encode()
    assert PASSWORD not in env.log_text()
    events = Path(env.datadir, "log", "events.jsonl")
    assert not events.exists() or secret not in events.read_bytes()
    assert secret not in bytes(env.shared.buf[:]), "the password is in shared memory"
    for row in stat_wal_receiver_rows(env.shared):
        assert all(PASSWORD not in str(v) for v, _t in row)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("password_from", ["passfile", "PGPASSFILE", "home", "conninfo"])
def test_verify_full_scram_channel_binding(pgtls, receiver_env, tmp_path, monkeypatch, password_from):
    conninfo = _tls_conninfo(pgtls)
    if password_from == "passfile":
        conninfo += f" passfile={_passfile(tmp_path / 'pgpass', pgtls.port)}"
    elif password_from == "PGPASSFILE":
        monkeypatch.setenv("PGPASSFILE", _passfile(tmp_path / 'pgpass', pgtls.port))
    elif password_from == "home":
        # libpq's default, ~/.pgpass (the walreceiver inherits the server's HOME)
        home = tmp_path / "home"
        home.mkdir()
        _passfile(home / ".pgpass", pgtls.port)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv("PGPASSFILE", raising=False)
    else:
        conninfo += f" password={PASSWORD}"
    first = min(f for f in os.listdir(pgtls.pg_wal()) if len(f) == 24)
    start = int(first[16:24], 16) * SEGSIZE
    env = standby_for(receiver_env, pgtls, conninfo, wal_receiver_status_interval=1)
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming over TLS")
    pgtls.psql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, repeat('z', 300) FROM "
               "generate_series(1, 6000) g; SELECT pg_switch_wal()")
    target = parse_lsn(pgtls.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_for(lambda: env.flushed() >= target, 30, f"flush to {format_lsn(target)}")
    flushed = env.flushed()
    for segno in range(segno_of(start, SEGSIZE), segno_of(flushed, SEGSIZE) + 1):
        name = segment_name(1, segno, SEGSIZE)
        n = min(SEGSIZE, flushed - segno * SEGSIZE)
        assert Path(env.pg_wal, name).read_bytes()[:n] == Path(pgtls.pg_wal(), name).read_bytes()[:n], name
    row = pgtls.psql("SELECT r.application_name, r.usename, s.ssl, s.client_dn FROM pg_stat_replication r "
                     "JOIN pg_stat_ssl s USING (pid)").split("|")
    assert row == ["tlstest", "repl", "t", "/CN=repl"], row
    ours = stat_wal_receiver_rows(env.shared)[0]
    conninfo_shown = ours[-1][0]
    assert "sslmode=verify-full" in conninfo_shown and "channel_binding=require" in conninfo_shown
    if password_from == "conninfo":
        assert "password=********" in conninfo_shown
    assert env.walrcv()["sender_host"] == "127.0.0.1" and env.walrcv()["sender_port"] == pgtls.port
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    _assert_no_secret(env)


@pytest.mark.timeout(120)
def test_wrong_ca_fails_verify_full_and_retries(pgtls, receiver_env):
    env = standby_for(receiver_env, pgtls, _tls_conninfo(pgtls, "other.crt") + f" password={PASSWORD}",
                      standby_wal_coordination="concurrent", wal_retrieve_retry_interval="200ms")
    env.request(SEGSIZE, 1)
    pid = env.fork_walreceiver()
    # Attempts 50 ms apart, doubling up to the 200 ms retry interval; the LOG line once per interval.
    wait_for(lambda: len(env.events_of("walreceiver_connect_failed")) >= 6, 30, "six refused attempts")
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    text = env.log_text()
    line = (f'LOG:  could not connect to the primary server: connection to server at "127.0.0.1", '
            f'port {pgtls.port} failed: SSL error: certificate verify failed')
    assert 2 <= text.count(line) < len(env.events_of("walreceiver_connect_failed")), text
    assert env.events_of("walreceiver_connect_failed")[0]["error"] == line.split("server: ", 1)[1]
    assert env.segment_files() == []
    _assert_no_secret(env)


@pytest.mark.timeout(90)
def test_plain_tcp_is_refused_by_hostnossl(pgtls, receiver_env):
    env = standby_for(receiver_env, pgtls, f"host=127.0.0.1 port={pgtls.port} user=repl sslmode=disable "
                                           f"password={PASSWORD}")
    env.request(SEGSIZE, 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    [fatal] = fatal_lines(env.log_text())
    assert fatal == (f'could not connect to the primary server: connection to server at "127.0.0.1", port '
                     f'{pgtls.port} failed: FATAL:  pg_hba.conf rejects replication connection for host '
                     f'"127.0.0.1", user "repl", no encryption')
    _assert_no_secret(env)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sslmode", ["prefer", "require", "verify-ca"])
def test_weaker_sslmodes_still_use_tls(pgtls, receiver_env, sslmode):
    """sslmode prefer, require and verify-ca all end up on TLS here (the primary refuses plain
    replication): the stream runs and PostgreSQL's pg_stat_ssl says so.  The password comes from
    conninfo and is masked where the conninfo is shown."""
    c = pgtls.client_dir
    conninfo = (f"host=127.0.0.1 port={pgtls.port} user=repl sslmode={sslmode} sslrootcert={c / 'root.crt'} "
                f"sslcert={c / 'repl.crt'} sslkey={c / 'repl.key'} password={PASSWORD} application_name=mode")
    env = standby_for(receiver_env, pgtls, conninfo)
    first = min(f for f in os.listdir(pgtls.pg_wal()) if len(f) == 24)
    env.request(int(first[16:24], 16) * SEGSIZE, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, f"walreceiver streaming with sslmode={sslmode}")
    row = pgtls.psql("SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                     "WHERE r.application_name = 'mode'")
    assert row == "t", row
    shown = stat_wal_receiver_rows(env.shared)[0][-1][0]
    assert f"sslmode={sslmode}" in shown and "password=********" in shown
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    _assert_no_secret(env)
