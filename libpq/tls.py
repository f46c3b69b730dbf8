"""TLS for the server side of the protocol, with Python's ``ssl``: the context built from the settings,
a sans-IO channel for a non-blocking loop, and the channel-binding data of SCRAM-SHA-256-PLUS.

Settings (PostgreSQL's names and defaults): ``ssl`` (off), ``ssl_cert_file`` (server.crt),
``ssl_key_file`` (server.key), ``ssl_ca_file`` (empty: no client certificates asked for),
``ssl_min_protocol_version`` (TLSv1.2).  As PostgreSQL, the server refuses a key file that group or
others may read (``server_context`` raises TLSConfigError with PostgreSQL's message and DETAIL).

``TLSChannel`` wraps an ``ssl.SSLObject`` over two memory BIOs: the backend's selector loop feeds it
what the socket received and sends what it produced, so one process serves many TLS sessions without
blocking (the handshake included).  ``tls_server_end_point`` is RFC 5929's channel binding type.
"""
from __future__ import annotations

import hashlib
import os
import ssl
import stat
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

PROTOCOL_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                     "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(RuntimeError):
    """The server's TLS files or settings are unusable; str() is the FATAL message (and DETAIL)."""


def _resolve(datadir: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(datadir, name)


def check_key_file_mode(path: str) -> None:
    st = os.stat(path)
    limit = 0o640 if st.st_uid == 0 and os.geteuid() != 0 else 0o600
    if stat.S_IMODE(st.st_mode) & ~limit:
        raise TLSConfigError(
            f'private key file "{path}" has group or world access\n'
            "DETAIL:  File must have permissions u=rw (0600) or less if owned by the database user, or "
            "permissions u=rw,g=r (0640) or less if owned by root.")


def server_context(cfg: Any, datadir: str) -> ssl.SSLContext | None:
    """The server's SSLContext, or None when ``ssl = off``."""
    if not cfg["ssl"]:
        return None
    cert = _resolve(datadir, cfg["ssl_cert_file"])
    key = _resolve(datadir, cfg["ssl_key_file"])
    for what, path in (("server certificate", cert), ("private key", key)):
        if not os.path.exists(path):
            raise TLSConfigError(f'could not load {what} file "{path}": No such file or directory')
    check_key_file_mode(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = PROTOCOL_VERSIONS[cfg["ssl_min_protocol_version"]]
    except KeyError:
        raise TLSConfigError(f'invalid value for parameter "ssl_min_protocol_version": '
                             f'"{cfg["ssl_min_protocol_version"]}"') from None
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise TLSConfigError(f'could not load server certificate file "{cert}" or private key file "{key}": '
                             f"{getattr(e, 'reason', None) or e}") from None
    if cfg["ssl_ca_file"]:
        ca = _resolve(datadir, cfg["ssl_ca_file"])
        try:
            ctx.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as e:
            raise TLSConfigError(f'could not load root certificate file "{ca}": {e}') from None
        ctx.verify_mode = ssl.CERT_OPTIONAL        # pg_hba.conf's clientcert decides what is required
    return ctx


def tls_server_end_point(cert_pem_or_der: bytes) -> bytes:
    """RFC 5929 tls-server-end-point: the certificate hashed with its signature's hash (SHA-256 for MD5,
    SHA-1 and SHA-256 signatures), as PostgreSQL's be_tls_get_certificate_hash."""
    if cert_pem_or_der.startswith(b"-----"):
        cert = x509.load_pem_x509_certificate(cert_pem_or_der)
    else:
        cert = x509.load_der_x509_certificate(cert_pem_or_der)
    algo = cert.signature_hash_algorithm
    name = algo.name if algo is not None and not isinstance(algo, (hashes.MD5, hashes.SHA1)) else "sha256"
    return hashlib.new(name, cert.public_bytes(Encoding.DER)).digest()


class TLSChannel:
    """One server-side TLS session over memory BIOs (no socket I/O of its own)."""

    def __init__(self, ctx: ssl.SSLContext):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False

    def receive(self, cipher: bytes) -> bytes:
        """Feed bytes from the socket; returns the plaintext they completed (may be empty).

        Raises ssl.SSLError on a bad handshake or record; the caller closes the connection."""
        self.incoming.write(cipher)
        if not self.handshaken:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshaken = True
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(256 * 1024)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def send(self, plain: bytes) -> None:
        if plain:
            self.obj.write(plain)

    def take_output(self) -> bytes:
        """Ciphertext waiting for the socket."""
        return self.outgoing.read()

    def peer_common_name(self) -> str | None:
        cert = self.obj.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None
