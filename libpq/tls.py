"""TLS for the server side of the protocol, with Python's ``ssl``: the context built from the settings,
a sans-IO channel for a non-blocking loop, and the channel-binding data of SCRAM-SHA-256-PLUS.

Settings (PostgreSQL's names and defaults): ``ssl`` (off), ``ssl_cert_file`` (server.crt),
``ssl_key_file`` (server.key), ``ssl_ca_file`` (empty: no client certificates asked for),
``ssl_min_protocol_version`` (TLSv1.2).  As PostgreSQL, the server refuses a key file that group or
others may read (``server_context`` raises TLSConfigError with PostgreSQL's message and DETAIL).

``TLSChannel`` wraps an ``ssl.SSLObject`` over two memory BIOs: the backend's selector loop feeds it
what the socket received and sends what it produced, so one process serves many TLS sessions without
blocking (the handshake included).  ``tls_server_end_point`` is RFC 5929's channel binding type.

Where TLS ends, and why there.  The backend is one process serving every normal connection in a
non-blocking selector loop; a replication connection is recognised only from its StartupMessage, which
arrives *after* the handshake, and its socket is then passed (SCM_RIGHTS) to the postmaster, which forks
a walsender.  An OpenSSL session is process memory: it cannot follow the socket.  Two designs keep TLS
for both kinds of connection:

  (a) chosen: the backend terminates every TLS session in its loop (this module).  A normal connection
      never leaves it; for a replication connection the walsender gets one end of a socketpair instead
      of the client's socket, and the backend relays plaintext <-> TLS records between them
      (backend/tlsrelay.py).  The walsender, the postmaster and the hand-off stay as they are for
      plain connections; authentication (SCRAM-PLUS with this module's channel binding, clientcert)
      runs in one place for both kinds.
  (b) rejected: on SSLRequest the postmaster forks a connection process that does the handshake and
      reads the StartupMessage, becoming the walsender or relaying plaintext to the backend.  It costs
      a fork per TLS connection and a relay on *every* TLS query instead of on
      the few replication connections, and moves authentication out of the backend.

The relay's cost (bench/tls_relay.py, figures in the README's TLS section): one extra local hop and one
pass through the backend's loop per walsender write; the backend's CPU is shared with the sessions.

What a connection knows (backend/session.py Connection, read by backend/clientauth.py): ``ssl_in_use``,
``peer_cert_cn`` and ``peer_cert_verified`` (a client certificate is asked for only when
``ssl_ca_file`` is set, and OpenSSL verifies any it gets against it, failing the
handshake otherwise), ``channel_binding_data`` (``tls_server_end_point`` of the server certificate).
"""
from __future__ import annotations

import hashlib
import os
import ssl
import stat
from typing import Any

PROTOCOL_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                     "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(RuntimeError):
    """The server's TLS files or settings are unusable; str() is the FATAL message (and DETAIL)."""


def _resolve(datadir: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(datadir, name)


def check_key_file_mode(path: str) -> None:
    """PostgreSQL's check_ssl_key_file_permissions (be-secure-common.c)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise TLSConfigError(f'private key file "{path}" is not a regular file')
    if st.st_uid not in (os.geteuid(), 0):
        raise TLSConfigError(f'private key file "{path}" must be owned by the database user or root')
    # Owned by us: no access for group or others.  Owned by root (and we are not root): group read only.
    forbidden = stat.S_IRWXG | stat.S_IRWXO if st.st_uid == os.geteuid() else \
        stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO
    if st.st_mode & forbidden:
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
    # cryptography is imported here, not at the top: ~30 ms off the postmaster's start-up path
    # (it reaches this module through server_context); preload_child_modules loads it for the backends.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
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

    def peer_cert_verified(self) -> bool:
        """A client certificate was presented and OpenSSL verified it against ssl_ca_file (with
        CERT_OPTIONAL a certificate that does not verify fails the handshake; without ssl_ca_file none
        is asked for)."""
        return (self.handshaken and self.obj.context.verify_mode != ssl.CERT_NONE
                and self.obj.getpeercert(binary_form=True) is not None)

    def peer_common_name(self) -> str | None:
        cert = self.obj.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None
