"""TLS on the server: `walswitch init --ssl` certificates, libpq clients with every sslmode, the key file
check, GSSENCRequest refused, and the data directory's TLS files 0600 (issue 10 item 4)."""
from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import psycopg
import psycopg2
import pytest
from cryptography import x509

from libpq.tls import TLSChannel, check_key_file_mode, TLSConfigError, tls_server_end_point
from tests.cluster import PGBIN, pg_tool, walswitch
from tests.tls_certs import issue, make_ca
from xlog.lsn import parse_lsn, segment_name


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
    with psycopg2.connect(dsn(tls_primary, sslmode=mode)) as c, c.cursor() as cur:
        assert c.info.ssl_in_use
        cur.execute("SELECT value FROM kv WHERE key = %s", (f"tls-{mode}",))
        assert cur.fetchone() == ("x",)


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
    from tests.test_file_modes import loose_modes
    assert loose_modes(standby.datadir) == []         # server.key and root.crt came with the backup


@pytest.mark.timeout(120)
def test_pg_receivewal_over_tls_verify_full(tls_primary, tmp_path):
    """A replication connection of PostgreSQL's own client over TLS: the walsender's bytes pass the relay."""
    for i in range(50):
        tls_primary.sql(f"INSERT INTO kv VALUES ('r{i}', '{'y' * 2000}')")
    end = parse_lsn(tls_primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
    out = tmp_path / "recv"
    out.mkdir()
    conninfo = dsn(tls_primary, sslmode="verify-full", host="localhost", hostaddr="127.0.0.1")
    p = subprocess.run([pg_tool("pg_receivewal"), "-d", conninfo, "-D", str(out), "--no-loop", "-v", "-w",
                        "-E", f"{(end - 1) >> 32:X}/{(end - 1) & 0xFFFFFFFF:X}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    segsize = 1 << 20
    segno = (end - 1) // segsize
    name = segment_name(1, segno, segsize)
    got = (out / (name + ".partial")).read_bytes()
    src = Path(tls_primary.datadir, "pg_wal", name).read_bytes()
    upto = end - segno * segsize
    assert got[:upto] == src[:upto]
    # The relay closed with the stream: the server still takes TLS connections and has no walsender left.
    with psycopg.connect(dsn(tls_primary, sslmode="verify-ca"), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_stat_replication").fetchone() == (0,)


@pytest.mark.timeout(60)
def test_gssenc_refused_then_ssl_accepted_on_the_same_socket(tls_primary):
    """libpq with Kerberos credentials asks for GSS encryption first, then TLS, on one connection."""
    s = socket.create_connection(("127.0.0.1", tls_primary.port), timeout=10)
    try:
        s.sendall(struct.pack("!II", 8, 80877104))
        assert s.recv(1) == b"N"
        s.sendall(struct.pack("!II", 8, 80877103))
        assert s.recv(1) == b"S"
        ctx = ssl.create_default_context(cafile=os.path.join(tls_primary.datadir, "root.crt"))
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.version() in ("TLSv1.2", "TLSv1.3")
            params = b"user\0postgres\0database\0postgres\0\0"
            t.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
            assert t.recv(1) == b"R"          # authentication (trust: AuthenticationOk) inside TLS
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_bad_certificate_file_refuses_start(nodes):
    n = nodes("tlsbadcrt")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "--ssl")
    crt = os.path.join(n.datadir, "server.crt")
    with open(crt, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    p = n.start(check=False, timeout=30)
    assert p.returncode != 0
    lines = [ln for ln in (p.stderr + n.log_text()).splitlines() if "could not load server certificate" in ln]
    assert lines and f'"{crt}"' in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not n.is_running()


def test_key_file_mode_rules(tmp_path):
    """PostgreSQL's rule: a key file owned by the server's user may have no group/other bits (u+x is fine)."""
    key = tmp_path / "k.key"
    key.write_text("x")
    for mode, ok in ((0o600, True), (0o400, True), (0o700, True), (0o640, False), (0o604, False),
                     (0o620, False)):
        key.chmod(mode)
        if ok:
            check_key_file_mode(str(key))
        else:
            with pytest.raises(TLSConfigError, match="has group or world access"):
                check_key_file_mode(str(key))
    with pytest.raises(TLSConfigError, match="is not a regular file"):
        check_key_file_mode(str(tmp_path))


def _handshake(server: TLSChannel, client: ssl.SSLObject, cin: ssl.MemoryBIO, cout: ssl.MemoryBIO) -> None:
    for _ in range(20):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        server.receive(cout.read())
        cin.write(server.take_output())
        if done and server.handshaken:
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("with_client_cert", [True, False])
def test_channel_peer_certificate_and_end_point(tmp_path, with_client_cert):
    """What a connection knows after the handshake: the client certificate's CN and whether it was
    verified, and the tls-server-end-point data equal to the hash of the certificate the client saw."""
    from libpq.tls import server_context
    ca = make_ca()
    ca.write(str(tmp_path / "ca.crt"))
    issue(ca, "localhost", ["localhost"]).write(str(tmp_path / "s.crt"), str(tmp_path / "s.key"))
    issue(ca, "alice", server=False).write(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    cfg = {"ssl": True, "ssl_cert_file": "s.crt", "ssl_key_file": "s.key", "ssl_ca_file": "ca.crt",
           "ssl_min_protocol_version": "TLSv1.2"}
    server = TLSChannel(server_context(cfg, str(tmp_path)))
    cctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    if with_client_cert:
        cctx.load_cert_chain(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(cin, cout, server_hostname="localhost")
    _handshake(server, client, cin, cout)
    assert server.peer_cert_verified() is with_client_cert
    assert server.peer_common_name() == ("alice" if with_client_cert else None)
    import hashlib
    seen = client.getpeercert(binary_form=True)
    assert tls_server_end_point((tmp_path / "s.crt").read_bytes()) == hashlib.sha256(seen).digest()
    client.write(b"hello")
    assert server.receive(cout.read()) == b"hello"


def test_end_point_hash_follows_the_signature_hash():
    """RFC 5929: the certificate's own signature hash when stronger than SHA-256 (this OpenSSL will not
    sign with SHA-1 or MD5, the cases mapped to SHA-256)."""
    import datetime as dt
    import hashlib
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "h")])
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    c384 = b.sign(key, hashes.SHA384())
    der = c384.public_bytes(Encoding.DER)
    assert tls_server_end_point(der) == hashlib.sha384(der).digest()
    assert tls_server_end_point(c384.public_bytes(Encoding.PEM)) == hashlib.sha384(der).digest()
    der512 = b.sign(key, hashes.SHA512()).public_bytes(Encoding.DER)
    assert tls_server_end_point(der512) == hashlib.sha512(der512).digest()
