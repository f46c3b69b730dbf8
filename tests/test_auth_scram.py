"""SCRAM-SHA-256 server state machine (libpq/scram.py) against an RFC 5802 client written here,
and the wire: what a server without TLS advertises, psycopg 3 (libpq 18) and psql clients."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import subprocess

import psycopg
import pytest

from libpq import scram
from libpq.scram import ScramError, ScramServer
from tests.cluster import pg_tool, wait_for, walswitch

pytestmark = pytest.mark.timeout(120)


def _h(k: bytes, m: bytes) -> bytes:
    return hmac.new(k, m, hashlib.sha256).digest()


def client_exchange(server: ScramServer, password: str, mech: str, cb_flag: str, cb_data: bytes = b""):
    """Run one exchange as a client would; returns the server-final message."""
    cnonce = base64.b64encode(os.urandom(18)).decode()
    gs2 = f"{cb_flag},,"
    bare = f"n=,r={cnonce}"
    first = server.start(mech, (gs2 + bare).encode()).decode()
    attrs = dict(p.split("=", 1) for p in first.split(","))
    assert attrs["r"].startswith(cnonce)
    sp = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    ck = _h(sp, b"Client Key")
    without = f"c={base64.b64encode(gs2.encode() + cb_data).decode()},r={attrs['r']}"
    auth = f"{bare},{first},{without}".encode()
    proof = bytes(a ^ b for a, b in zip(ck, _h(hashlib.sha256(ck).digest(), auth)))
    final = server.finish(f"{without},p={base64.b64encode(proof).decode()}".encode()).decode()
    assert final == "v=" + base64.b64encode(_h(_h(sp, b"Server Key"), auth)).decode()
    return final


def test_scram_plain_and_wrong_password():
    v = scram.make_verifier("pw")
    assert scram.parse_verifier(v.encode()) == v and v.iterations == 4096
    s = ScramServer("u", v)
    assert s.mechanisms() == ["SCRAM-SHA-256"]
    client_exchange(s, "pw", "SCRAM-SHA-256", "n")
    with pytest.raises(ScramError) as e:
        client_exchange(ScramServer("u", v), "nope", "SCRAM-SHA-256", "n")
    assert e.value.sqlstate == "28P01" and e.value.message == 'password authentication failed for user "u"'


def test_unknown_user_gets_same_exchange_and_error():
    s1, s2 = ScramServer("ghost", None), ScramServer("ghost", None)
    first1 = s1.start("SCRAM-SHA-256", b"n,,n=,r=abc").decode()
    first2 = s2.start("SCRAM-SHA-256", b"n,,n=,r=abc").decode()
    assert first1.split(",")[1:] == first2.split(",")[1:]      # stable mock salt, 4096 iterations
    with pytest.raises(ScramError) as e:
        client_exchange(ScramServer("ghost", None), "anything", "SCRAM-SHA-256", "n")
    assert e.value.sqlstate == "28P01" and "ghost" in e.value.message


def test_channel_binding_plus():
    v = scram.make_verifier("pw")
    cb = hashlib.sha256(b"certificate").digest()
    s = ScramServer("u", v, channel_binding=cb)
    assert s.mechanisms() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    client_exchange(s, "pw", "SCRAM-SHA-256-PLUS", "p=tls-server-end-point", cb)
    with pytest.raises(ScramError, match="channel binding check failed"):
        client_exchange(ScramServer("u", v, cb), "pw", "SCRAM-SHA-256-PLUS", "p=tls-server-end-point",
                        hashlib.sha256(b"other").digest())
    with pytest.raises(ScramError, match="negotiation error"):       # downgrade attempt
        client_exchange(ScramServer("u", v, cb), "pw", "SCRAM-SHA-256", "y")
    with pytest.raises(ScramError, match="invalid SASL authentication mechanism"):
        ScramServer("u", v).start("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=x")


@pytest.mark.parametrize("junk", [b"", b"x", b"n,,", b"n,,n=,r=", b"q,,n=,r=a", b"n,a=b,n=,r=x", b"\xff\xfe"])
def test_malformed_client_first(junk):
    with pytest.raises(ScramError) as e:
        ScramServer("u", scram.make_verifier("pw")).start("SCRAM-SHA-256", junk)
    assert e.value.sqlstate in ("08P01", "0A000")


def _startup(port: int, user: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(x.encode() + b"\0" for x in ("user", user, "database", "postgres"))
    body += b"\0"
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    head = s.recv(5)
    rest = b""
    (n,) = struct.unpack("!I", head[1:5])
    while len(rest) < n - 4:
        rest += s.recv(n - 4 - len(rest))
    s.close()
    return head[:1] + rest


def test_wire_scram_without_tls(nodes, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("sup3r\n")
    n = nodes("p")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "-U", "admin",
              "--pwfile", str(pw), "--auth", "scram-sha-256")
    n.start()
    # AuthenticationSASL offers SCRAM-SHA-256 only: no -PLUS without TLS
    msg = _startup(n.port, "admin")
    assert msg[:1] == b"R" and struct.unpack("!I", msg[1:5])[0] == 10
    assert msg[5:].split(b"\0")[:2] == [b"SCRAM-SHA-256", b""]
    dsn = f"host=127.0.0.1 port={n.port} dbname=postgres user=admin"
    with psycopg.connect(dsn + " password=sup3r") as c:
        assert c.execute("SELECT current_user").fetchone() == ("admin",)
        c.execute("SET password_encryption = 'md5'")
        c.execute("CREATE ROLE m LOGIN PASSWORD 'mpw'")
        assert c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'm'").fetchone()[0] == \
            scram.md5_verifier("mpw", "m")
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "admin"'):
        psycopg.connect(dsn + " password=wrong")
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(dsn + " password=sup3r channel_binding=require sslmode=disable")
    # psql, password from the environment (PGPASSWORD); scram with an md5 secret fails as PostgreSQL
    env = {**os.environ, "PGPASSWORD": "sup3r", "PGCONNECT_TIMEOUT": "10"}
    r = subprocess.run([pg_tool("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(n.port), "-U", "admin",
                        "-d", "postgres", "-c", "SELECT current_user"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "admin", r.stderr
    env["PGPASSWORD"] = "mpw"
    r = subprocess.run([pg_tool("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(n.port), "-U", "m",
                        "-d", "postgres", "-c", "SELECT 1"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'password authentication failed for user "m"' in r.stderr
    # password method: cleartext checked against the stored SCRAM secret
    with open(os.path.join(n.datadir, "pg_hba.conf"), "w") as f:
        f.write("host all m 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 password\n")
    walswitch("reload", "-D", n.datadir)
    n.wait_log("received SIGHUP")

    def md5_ok() -> bool:
        try:
            psycopg.connect(dsn.replace("user=admin", "user=m") + " password=mpw").close()
            return True
        except psycopg.OperationalError:
            return False
    wait_for(md5_ok, 30, "md5 login after reload")
    with psycopg.connect(dsn + " password=sup3r") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn + " password=bad")
    assert "sup3r" not in n.log_text() and "mpw" not in n.log_text()


def test_garbage_during_authentication(nodes, tmp_path):
    """Malformed or oversized SASL messages get a FATAL and a closed connection; the server stays up."""
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    n = nodes("p")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "-U", "postgres",
              "--pwfile", str(pw), "--auth", "scram-sha-256")
    n.start()
    body = struct.pack("!I", 196608) + b"user\0postgres\0\0"
    for payload in (b"p" + struct.pack("!I", 8) + b"xx\0\0",                      # no length field
                    b"p" + struct.pack("!I", 4 + 20) + b"SCRAM-SHA-256\0" + struct.pack("!i", 99) + b"n,",
                    b"p" + struct.pack("!I", 200000) + b"A" * 100000,              # oversized
                    b"Q" + struct.pack("!I", 13) + b"SELECT 1;\0"):                # not a password message
        s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        assert s.recv(1) == b"R"
        s.recv(65536)
        s.sendall(payload)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            # Closed with the client's bytes unread: the kernel may drop our FATAL for a reset.
            assert len(payload) > 65536, payload[:20]
            got = b"E FATAL (reset)"
        s.close()
        assert got[:1] == b"E" and b"FATAL" in got, (payload[:20], got)
    with psycopg.connect(f"host=127.0.0.1 port={n.port} user=postgres dbname=postgres password=pw") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert not n.events("crash")


def test_scram_plus_over_tls_and_hostssl(nodes, tmp_path):
    """Over TLS the server offers SCRAM-SHA-256-PLUS and libpq's channel_binding=require succeeds;
    a hostssl-only file refuses plain TCP with PostgreSQL's no-entry message."""
    pw = tmp_path / "pw"
    pw.write_text("tlspw\n")
    n = nodes("p")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "-U", "postgres",
              "--pwfile", str(pw), "--auth", "scram-sha-256", "--ssl")
    with open(os.path.join(n.datadir, "pg_hba.conf"), "w") as f:
        f.write("hostssl all all 127.0.0.1/32 scram-sha-256\n")
    n.start()
    base = f"host=127.0.0.1 port={n.port} user=postgres dbname=postgres password=tlspw"
    with psycopg.connect(base + " sslmode=require channel_binding=require") as c:
        assert c.info.pgconn.ssl_in_use
        assert c.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError,
                       match='no pg_hba.conf entry for host "127.0.0.1", user "postgres", database "postgres", SSL off'):
        psycopg.connect(base + " sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"host=127.0.0.1 port={n.port} user=postgres dbname=postgres password=no "
                        "sslmode=require channel_binding=require")


def _certs(d, client_cns):
    """A CA, a server certificate for 127.0.0.1 and client certificates for the given CNs (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(cn, key, issuer_name, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(name, data, mode=0o600):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = cert("test CA", ca_key, ca_name, ca_key, ca=True)
    write("root.crt", ca.public_bytes(serialization.Encoding.PEM))
    sk = ec.generate_private_key(ec.SECP256R1())
    write("server.crt", cert("localhost", sk, ca_name, ca_key,
                             san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]).public_bytes(
        serialization.Encoding.PEM))
    write("server.key", key_pem(sk))
    out = {}
    for cn in client_cns:
        k = ec.generate_private_key(ec.SECP256R1())
        out[cn] = (write(f"{cn}.crt", cert(cn, k, ca_name, ca_key).public_bytes(serialization.Encoding.PEM)),
                   write(f"{cn}.key", key_pem(k)))
    return out


def test_hostssl_clientcert(nodes, tmp_path):
    n = nodes("p")
    walswitch("init", "-D", n.datadir, "--wal-segsize", "1", "-p", str(n.port), "-U", "postgres")
    clients = _certs(n.datadir, ["postgres", "someone"])
    with open(os.path.join(n.datadir, "walswitch.conf"), "a") as f:
        f.write("ssl = on\nssl_ca_file = 'root.crt'\n")
    with open(os.path.join(n.datadir, "pg_hba.conf"), "w") as f:
        f.write("hostssl all all 127.0.0.1/32 trust clientcert=verify-full\n")
    n.start()
    base = f"host=127.0.0.1 port={n.port} user=postgres dbname=postgres sslmode=require"
    crt, key = clients["postgres"]
    with psycopg.connect(f"{base} sslcert={crt} sslkey={key}") as c:
        assert c.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="connection requires a valid client certificate"):
        psycopg.connect(f"{base} sslcert=/nonexistent sslkey=/nonexistent")
    crt, key = clients["someone"]
    with pytest.raises(psycopg.OperationalError, match=r"clientcert=verify-full\) failed for user \"postgres\""):
        psycopg.connect(f"{base} sslcert={crt} sslkey={key}")


@pytest.mark.timeout(180)
def test_standby_over_tls_scram_passfile_then_promoted(nodes, tmp_path):
    """A standby made and streaming over sslmode=verify-full as a REPLICATION role with SCRAM (-PLUS,
    channel_binding=require) from a passfile; promoted, it authenticates the same roles."""
    from tests.cluster import wait_for
    p = nodes("p")
    walswitch("init", "-D", p.datadir, "--wal-segsize", "1", "-p", str(p.port), "-U", "postgres", "--ssl")
    with open(os.path.join(p.datadir, "pg_hba.conf"), "w") as f:
        f.write("host all postgres 127.0.0.1/32 trust\n"
                "hostssl replication repl 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    p.start()
    p.sql("CREATE ROLE repl LOGIN REPLICATION PASSWORD 'r3pl'")
    p.sql("CREATE ROLE app LOGIN PASSWORD 'app-pw'")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{p.port}:*:repl:r3pl\nlocalhost:{p.port}:*:repl:r3pl\n")
    passfile.chmod(0o600)
    conninfo = (f"host=localhost hostaddr=127.0.0.1 port={p.port} user=repl passfile={passfile} "
                f"sslmode=verify-full sslrootcert={os.path.join(p.datadir, 'root.crt')} channel_binding=require")
    s = nodes("s")
    walswitch("basebackup", "-d", conninfo, "-D", s.datadir, "-R")
    s.set_conf(port=s.port, primary_conninfo=conninfo, archive_mode="off", wal_retrieve_retry_interval="1s")
    s.start(wait_ready=False)
    wait_for(lambda: s.status().get("walreceiver_state") == "streaming", 60, "standby streaming")
    p.sql("CREATE ROLE late LOGIN PASSWORD 'late-pw'")
    app = (f"host=127.0.0.1 port={s.port} dbname=postgres sslmode=require channel_binding=require")

    def login(user: str, pw: str) -> bool:
        try:
            psycopg.connect(f"{app} user={user} password={pw}").close()
            return True
        except psycopg.OperationalError:
            return False
    wait_for(lambda: login("late", "late-pw"), 60, "the standby to authenticate a role created after the backup")
    assert login("app", "app-pw") and not login("app", "wrong")
    p.stop()
    s.sql("SELECT pg_promote()")
    wait_for(lambda: s.sql("SELECT pg_is_in_recovery()") == [(False,)], 60, "promotion")
    assert login("app", "app-pw") and login("late", "late-pw") and not login("late", "x")
    for n in (p, s):
        assert "r3pl" not in n.log_text() and "app-pw" not in n.log_text()
