"""Client authentication (PostgreSQL's auth.c), server side, sans-IO.

States::

    (start) ──trust──> OK
       ├──reject / no hba line──> FAILED (28000)
       └──password / md5 / scram──> WAIT_PASSWORD ──'p'──> OK | FAILED (28P01) | (SCRAM: more rounds)

``Authenticator(line_method, user, role, channel_binding)`` gives the first
bytes to send (``start()``), is fed each PasswordMessage/SASL body (``feed``) and
says ``done``/``error``.  It never reads a socket: the backend's non-blocking
startup phase drives it (backend/session.py).  ``md5`` with a SCRAM secret runs
SCRAM (as PostgreSQL).  An unknown role, a role without a password or an
unusable secret gets the same exchange and the same 28P01 as a wrong password,
so a client cannot learn which roles exist; the reason goes to the server log
only (never the password).
"""
from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from libpq import scram
from libpq.protocol import cstr, msg

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


class RoleLike(Protocol):
    """What authentication needs of a role (storage.roles.RoleInfo)."""
    name: str
    password: str | None


@dataclass
class AuthFailure:
    sqlstate: str
    message: str
    log_detail: str = ""           # server log only


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return msg(b"R", struct.pack("!I", code) + payload)


class Authenticator:
    def __init__(self, method: str, user: str, role: RoleLike | None,
                 channel_binding: bytes | None = None, password_encryption: str = "scram-sha-256"):
        self.method = method
        self.user = user
        self.role = role
        self.channel_binding = channel_binding
        self.password_encryption = password_encryption
        self.done = False
        self.error: AuthFailure | None = None
        self.secret = role.password if role is not None else None
        self.scram: scram.ScramServer | None = None
        self.md5_salt = b""
        self.log_detail = ""
        # A password check too slow for an event loop (PBKDF2 of a SCRAM secret, ~4096 HMACs): the
        # caller runs it (in a thread) and hands the answer to ``complete``.
        self.deferred: Callable[[], bool] | None = None
        if role is None:
            self.log_detail = f'Role "{user}" does not exist.'
        elif self.secret is None:
            self.log_detail = f'User "{user}" has no password assigned.'

    def _fail(self, sqlstate: str = "28P01", message: str | None = None) -> bytes:
        self.error = AuthFailure(sqlstate, message or f'password authentication failed for user "{self.user}"',
                                 self.log_detail)
        return b""

    def start(self) -> bytes:
        m = self.method
        if m == "trust":
            self.done = True
            return b""
        if m == "reject":
            return self._fail("28000", "")   # the caller words it with the hba line
        if m == "password":
            return auth_request(AUTH_CLEARTEXT)
        use_scram = m == "scram-sha-256" or scram.parse_verifier(self.secret) is not None
        if m == "md5" and not use_scram and (self.secret is None and self.password_encryption == "md5"
                                             or scram.is_md5_verifier(self.secret)):
            self.md5_salt = os.urandom(4)
            return auth_request(AUTH_MD5, self.md5_salt)
        if m == "md5" and self.secret is None:
            use_scram = True
        if m == "scram-sha-256" and self.secret is not None and scram.parse_verifier(self.secret) is None:
            self.log_detail = f'User "{self.user}" does not have a valid SCRAM secret.'
        self.scram = scram.ScramServer(self.user, scram.parse_verifier(self.secret), self.channel_binding)
        payload = b"".join(cstr(x) for x in self.scram.mechanisms()) + b"\x00"
        return auth_request(AUTH_SASL, payload)

    def feed(self, body: bytes) -> bytes:
        """A 'p' message body; returns what to send next (empty when done or failed)."""
        if self.scram is not None:
            return self._feed_scram(body)
        text = body.rstrip(b"\x00").decode("utf-8", "replace")
        if self.md5_salt:
            ok = scram.is_md5_verifier(self.secret) and \
                hmac.compare_digest(text, scram.md5_response(self.secret or "", self.md5_salt))
        else:
            v = scram.parse_verifier(self.secret)
            if v is not None:
                self.deferred = lambda: scram.verify_password(v, text)
                return b""
            elif scram.is_md5_verifier(self.secret):
                ok = hmac.compare_digest(scram.md5_verifier(text, self.user), self.secret or "")
            else:
                ok = False
        return self.complete(ok)

    def complete(self, ok: bool) -> bytes:
        """The answer of a password check (``deferred``'s, or one made inline)."""
        self.deferred = None
        if ok:
            self.done = True
            return b""
        if not self.log_detail:
            self.log_detail = "Password does not match for user \"%s\"." % self.user
        return self._fail()

    def _feed_scram(self, body: bytes) -> bytes:
        s = self.scram
        assert s is not None
        try:
            if s.state == scram.ScramState.INIT:
                end = body.find(b"\x00")
                if end < 0 or len(body) < end + 5:
                    raise scram.ScramError("08P01", "malformed SCRAM message", "Invalid SASLInitialResponse.")
                mech = body[:end].decode("utf-8", "replace")
                (n,) = struct.unpack_from("!i", body, end + 1)
                data = body[end + 5:] if n >= 0 else b""
                return auth_request(AUTH_SASL_CONTINUE, s.start(mech, data))
            final = s.finish(body)
        except scram.ScramError as e:
            if e.sqlstate == "28P01" and not self.log_detail:
                self.log_detail = f'Password does not match for user "{self.user}".'
            self.error = AuthFailure(e.sqlstate, e.message, self.log_detail or (e.detail or ""))
            return b""
        self.done = True
        return auth_request(AUTH_SASL_FINAL, final)
