"""TLS on the server: `walswitch init --ssl` certificates, libpq clients with every sslmode, the key file
check, GSSENCRequest refused, and the data directory's TLS files 0600 (issue 10 item 4)."""
from __future__ import annotations

import os
import socket
import struct
import subprocess

import psycopg
import psycopg2
import pytest

from tests.cluster import PGBIN, walswitch


@pytest.fixture
def tls_primary(nodes):
    n = nodes("tls")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "--ssl")
    n.start()
    return n


def dsn(n, **kw) -> str:
    base = {"host": "127.0.0.1", "port": n.port, "user": "postgres", "dbname": "postgres",
            "sslrootcert": os.path.join(n.datadir, "root.crt")}
    base.update(kw)
    return " ".join(f"{k}={v}" for k, v in base.items())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_libpq_clients_over_tls(tls_primary, mode):
    with psycopg.connect(dsn(tls_primary, sslmode=mode), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        conn.execute("INSERT INTO kv VALUES (%s, %s)", (f"tls-{mode}", "x"))
        assert conn.execute("SELECT value FROM kv WHERE key = %s", (f"tls-{mode}",)).fetchone() == ("x",)
    p = subprocess.run([str(PGBIN / "psql"), "-X", "-A", "-t", "-c", "SELECT count(*) FROM kv",
                        dsn(tls_primary, sslmode=mode)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and int(p.stdout.strip()) >= 1, p.stderr


@pytest.mark.timeout(60)
def test_verify_full_fails_for_a_name_not_in_the_certificate(tls_primary):
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(dsn(tls_primary, sslmode="verify-full", host="not-in-the-cert.example", hostaddr="127.0.0.1"))
    assert 'server certificate for "localhost"' in str(ei.value) and "does not match host name" in str(ei.value)
    # and the server is still fine for others
    with psycopg2.connect(dsn(tls_primary, sslmode="require")) as c, c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


@pytest.mark.timeout(60)
def test_plain_connections_still_work_and_gssenc_is_refused(tls_primary):
    with psycopg2.connect(dsn(tls_primary, sslmode="disable")) as c, c.cursor() as cur:
        cur.execute("SELECT 1")
    s = socket.create_connection(("127.0.0.1", tls_primary.port), timeout=10)
    s.sendall(struct.pack("!II", 8, 80877104))
    assert s.recv(1) == b"N"
    s.close()


@pytest.mark.timeout(60)
def test_tls_files_modes_and_key_check(nodes):
    n = nodes("tlskey")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "--ssl")
    for name in ("root.crt", "server.crt", "server.key"):
        assert oct(os.stat(os.path.join(n.datadir, name)).st_mode & 0o777) == "0o600", name
    assert not [f for f in os.listdir(n.datadir) if f.endswith(".key") and f != "server.key"]
    os.chmod(os.path.join(n.datadir, "server.key"), 0o644)
    p = n.start(check=False, timeout=30)
    assert p.returncode != 0
    text = p.stderr + n.log_text()
    assert f'private key file "{os.path.join(n.datadir, "server.key")}" has group or world access' in text
    assert not n.is_running()


@pytest.mark.timeout(180)
def test_standby_streams_over_tls_verify_full(tls_primary, nodes):
    """Our walreceiver (libpq) streams from our primary over TLS; the backend relays for the walsender."""
    from tests.invariants import check_data_equal, wait_caught_up
    from tests.cluster import wait_for
    tls_primary.sql("INSERT INTO kv VALUES ('before', '1')")
    conninfo = dsn(tls_primary, sslmode="verify-full", host="localhost", hostaddr="127.0.0.1")
    standby = nodes("tlsstandby")
    walswitch("basebackup", "-d", conninfo, "-D", standby.datadir, "-R")
    standby.set_conf(port=standby.port, primary_conninfo=conninfo, archive_mode="off",
                     wal_retrieve_retry_interval="1s")
    standby.start(wait_ready=False)
    wait_for(lambda: standby.status().get("walreceiver_state") == "streaming", 60, "standby streaming over TLS")
    for i in range(200):
        tls_primary.sql(f"INSERT INTO kv VALUES ('k{i}', '{'x' * 500}')")
    tls_primary.sql("SELECT pg_switch_wal()")
    wait_caught_up(tls_primary, standby)
    check_data_equal(tls_primary, standby)
    rows = tls_primary.sql("SELECT state FROM pg_stat_replication")
    assert rows == [("streaming",)]
