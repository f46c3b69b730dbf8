"""Client authentication in the backend's startup phase (PostgreSQL's ClientAuthentication).

Between the StartupMessage and AuthenticationOk a connection is checked against
pg_hba.conf (libpq/hba.py, first match), then asked for a password by the
line's method (libpq/auth.py: cleartext, md5 or SCRAM-SHA-256[-PLUS], sans-IO),
then its role must exist and have LOGIN.  All of it runs inside the backend's
non-blocking selector loop: ``begin`` sends the first request, ``feed`` takes
each PasswordMessage/SASL message, and both return an ``AuthOutcome`` once the
connection is authenticated or refused.

Replication connections are authenticated here too, BEFORE the hand-off to the
postmaster, and must have REPLICATION or SUPERUSER (42501): the walsender the
postmaster forks only ever receives authenticated sockets, so it needs no
password code, no role store and no pg_hba.conf of its own; the role's name
and attributes travel in the hand-off payload.

Never logged: a password or anything derived from it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libpq.auth import Authenticator
from libpq.hba import HbaLine, HbaRules, no_match_message
from libpq.protocol import StartupPacket
from storage.roles import RoleInfo, lookup_role
from utils import elog

log = elog.logger()


@dataclass
class AuthOutcome:
    role: RoleInfo | None = None           # set when authenticated
    sqlstate: str = ""                     # set when refused (FATAL to the client)
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.role is not None


class ClientAuth:
    """One connection's authentication; ``out`` collects bytes for the client."""

    def __init__(self, pkt: StartupPacket, address: str | None, ssl_in_use: bool,
                 channel_binding: bytes | None, hba: HbaRules | None, store_conn: Any,
                 password_encryption: str, peer_cert_cn: str | None = None):
        self.pkt = pkt
        self.user = pkt.user
        self.database = pkt.database
        self.replication = pkt.replication is not None
        self.address = address
        self.ssl = ssl_in_use
        self.channel_binding = channel_binding if ssl_in_use else None
        self.hba = hba
        self.store_conn = store_conn
        self.password_encryption = password_encryption
        self.peer_cert_cn = peer_cert_cn       # CN of a client certificate the TLS handshake verified
        self.authenticator: Authenticator | None = None
        self.line: HbaLine | None = None        # the pg_hba.conf line that matched
        self.role: RoleInfo | None = None
        self.out = bytearray()

    def _refuse(self, sqlstate: str, message: str, detail: str = "") -> AuthOutcome:
        # As PostgreSQL's server log: FATAL, the reason in DETAIL (never sent to the client).
        if self.line is not None:
            matched = f'Connection matched pg_hba.conf line {self.line.line_no}: "{self.line.raw}"'
            detail = f"{detail}  {matched}" if detail else matched
        log.critical("%s%s", message, f"\nDETAIL:  {detail}" if detail else "")
        return AuthOutcome(sqlstate=sqlstate, message=message)

    def begin(self) -> AuthOutcome | None:
        line = self.hba.match(self.address, self.ssl, self.database, self.user, self.replication) \
            if self.hba is not None else None
        if line is None:
            return self._refuse("28000", no_match_message(self.address, self.user, self.database,
                                                          self.ssl, self.replication))
        self.line = line
        ssl = "on" if self.ssl else "off"
        if line.method == "reject":
            if self.replication:
                msg = f'pg_hba.conf rejects replication connection for host "{self.address}", ' \
                      f'user "{self.user}", SSL {ssl}'
            else:
                msg = f'pg_hba.conf rejects connection for host "{self.address}", user "{self.user}", ' \
                      f'database "{self.database}", SSL {ssl}'
            return self._refuse("28000", msg)
        clientcert = line.options.get("clientcert")
        if clientcert is not None and self.peer_cert_cn is None:
            return self._refuse("28000", "connection requires a valid client certificate")
        if clientcert == "verify-full" and self.peer_cert_cn != self.user:
            return self._refuse("28000", "certificate validation (clientcert=verify-full) failed for user "
                                         f'"{self.user}": CN mismatch')
        self.role = lookup_role(self.store_conn, self.user) if self.store_conn is not None else None
        self.authenticator = Authenticator(line.method, self.user, self.role, self.channel_binding,
                                           self.password_encryption)
        self.out += self.authenticator.start()
        return self._check()

    def feed(self, mtype: bytes, body: bytes) -> AuthOutcome | None:
        a = self.authenticator
        if a is None:
            return self._refuse("08P01", "unexpected message during authentication")
        if mtype != b"p":
            return self._refuse("08P01", f"expected password response, got message type {mtype[0]}")
        self.out += a.feed(body)
        return self._check()

    @property
    def deferred(self) -> "Callable[[], bool] | None":
        """A slow password check for the caller to run off its loop, then pass to ``complete``."""
        return self.authenticator.deferred if self.authenticator is not None else None

    def complete(self, ok: bool) -> AuthOutcome | None:
        assert self.authenticator is not None
        self.out += self.authenticator.complete(ok)
        return self._check()

    def _check(self) -> AuthOutcome | None:
        a = self.authenticator
        assert a is not None
        if a.deferred is not None:
            return None
        if a.error is not None:
            return self._refuse(a.error.sqlstate, a.error.message, a.error.log_detail)
        if not a.done:
            return None
        role = self.role
        if role is None:
            return self._refuse("28000", f'role "{self.user}" does not exist')
        if not role.login:
            return self._refuse("28000", f'role "{self.user}" is not permitted to log in')
        if self.replication and not (role.superuser or role.replication):
            return self._refuse("42501", "must be superuser or replication role to start walsender")
        return AuthOutcome(role=role)
