"""TLS end to end, what test_tls.py did not show: ``ssl_min_protocol_version`` refusing an older
client (Python's ssl and libpq), ``clientcert=verify-ca`` (any certificate the CA signed, whatever its
CN; none refused with 28000), and the names in the certificate ``walswitch init --ssl`` makes
(default and ``--ssl-hosts``), checked with ``cryptography`` and by libpq's ``verify-full``."""
from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import struct
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from libpq import protocol as P
from tests.cluster import walswitch
from tests.test_security_more import raw_login
from tests.tls_certs import issue, make_ca

pytestmark = pytest.mark.timeout(120)


def _init_ssl(node, *extra: str) -> None:
    walswitch("init", "-D", node.datadir, "--wal-segsize", "1", "-p", str(node.port), "-U", "postgres",
              "--ssl", *extra)


def _dsn(node, **kw) -> str:
    base = {"host": "127.0.0.1", "port": node.port, "user": "postgres", "dbname": "postgres",
            "sslrootcert": os.path.join(node.datadir, "root.crt"), "connect_timeout": 10}
    base.update(kw)
    return " ".join(f"{k}={v}" for k, v in base.items())


def _tls_hello(node, ctx: ssl.SSLContext) -> str:
    """SSLRequest, then a handshake with ``ctx``; the protocol version agreed."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(struct.pack("!II", 8, P.SSL_REQUEST))
        assert s.recv(1) == b"S"
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.version()


def test_min_protocol_version_tls13_refuses_tls12_clients(nodes):
    n = nodes("p")
    _init_ssl(n)
    n.set_conf(ssl_min_protocol_version="TLSv1.3")
    n.start()
    root = os.path.join(n.datadir, "root.crt")
    ctx = ssl.create_default_context(cafile=root)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError) as ei:
        _tls_hello(n, ctx)
    assert "PROTOCOL_VERSION" in str(ei.value).upper() or "ALERT" in str(ei.value).upper(), ei.value
    assert _tls_hello(n, ssl.create_default_context(cafile=root)) == "TLSv1.3"
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(_dsn(n, sslmode="verify-full", ssl_max_protocol_version="TLSv1.2"))
    assert "SSL error: tlsv1 alert protocol version" in str(ei.value), ei.value     # the server's alert
    with psycopg.connect(_dsn(n, sslmode="verify-full", ssl_min_protocol_version="TLSv1.3")) as c:
        assert c.pgconn.ssl_in_use
    n.wait_log("could not accept SSL connection")
    # the default (TLSv1.2) still takes a TLSv1.2 client
    m = nodes("q")
    _init_ssl(m)
    m.start()
    ctx = ssl.create_default_context(cafile=os.path.join(m.datadir, "root.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _tls_hello(m, ctx) == "TLSv1.2"


def test_clientcert_verify_ca_end_to_end(nodes, tmp_path):
    n = nodes("p")
    _init_ssl(n)
    ca = make_ca("client CA")
    ca.write(os.path.join(n.datadir, "client_ca.crt"))
    other = make_ca("another CA")
    issue(ca, "someone-else", server=False).write(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    issue(other, "postgres", server=False).write(str(tmp_path / "o.crt"), str(tmp_path / "o.key"))
    n.set_conf(ssl_ca_file="client_ca.crt")
    Path(n.datadir, "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n")
    n.start()
    # a certificate the CA signed: in, though its CN is not the user
    with psycopg.connect(_dsn(n, sslmode="verify-full", sslcert=tmp_path / "c.crt", sslkey=tmp_path / "c.key")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("postgres",)
    # no certificate: 28000 on the wire, libpq shows the message
    e = raw_login(n.port, "postgres", tls=ssl.create_default_context(cafile=os.path.join(n.datadir, "root.crt")))
    assert e["error"] is not None and (e["error"]["C"], e["error"]["M"]) == \
        ("28000", "connection requires a valid client certificate"), e
    with pytest.raises(psycopg.OperationalError, match="connection requires a valid client certificate"):
        psycopg.connect(_dsn(n, sslmode="verify-full", sslcert="/nonexistent", sslkey="/nonexistent"))
    # a certificate of another CA (CN = the user, even): the handshake fails
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(_dsn(n, sslmode="verify-full", sslcert=tmp_path / "o.crt", sslkey=tmp_path / "o.key"))
    assert "SSL error: tlsv1 alert unknown ca" in str(ei.value), ei.value           # the server's alert
    # plain TCP: no hostssl line for it
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(_dsn(n, sslmode="disable"))


def _sans(datadir: str) -> tuple[str, list[str]]:
    cert = x509.load_pem_x509_certificate(Path(datadir, "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    ca = x509.load_pem_x509_certificate(Path(datadir, "root.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    return cn, names


def test_init_ssl_certificate_names(nodes):
    d = nodes("default")
    _init_ssl(d)
    cn, names = _sans(d.datadir)
    host = socket.gethostname()
    assert cn == "localhost"
    assert set(names) == {"localhost", "127.0.0.1", "::1", host}, names
    assert ipaddress.ip_address("::1") in x509.load_pem_x509_certificate(
        Path(d.datadir, "server.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    d.start()
    for name in ("localhost", "127.0.0.1", host):       # libpq's verify-full accepts each name
        with psycopg.connect(_dsn(d, sslmode="verify-full", host=name, hostaddr="127.0.0.1")) as c:
            assert c.pgconn.ssl_in_use
    # --ssl-hosts: the names given instead, the first the CN
    o = nodes("other")
    _init_ssl(o, "--ssl-hosts", "db1.example.net, 192.0.2.10,db1")
    cn, names = _sans(o.datadir)
    assert cn == "db1.example.net" and sorted(names) == ["192.0.2.10", "db1", "db1.example.net"], names
    o.start()
    with psycopg.connect(_dsn(o, sslmode="verify-full", host="db1.example.net", hostaddr="127.0.0.1")) as c:
        assert c.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(_dsn(o, sslmode="verify-full", host="localhost", hostaddr="127.0.0.1"))
