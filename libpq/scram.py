"""SCRAM-SHA-256 (RFC 5802 / RFC 7677), server side, as a sans-IO state machine.

States::

    INIT ──client-first──> CONTINUE ──client-final──> FINISHED (ok) | FAILED

``ScramServer(verifier, channel_binding)`` is fed the SASL payloads the client
sends (``SASLInitialResponse`` then ``SASLResponse``) and returns the payload of
the server's next message (``AuthenticationSASLContinue`` / ``...Final``); it
never touches a socket, so the backend's non-blocking loop and a blocking
walsender drive it alike.  ``mechanisms()`` is what AuthenticationSASL
advertises: ``SCRAM-SHA-256-PLUS`` only when ``channel_binding`` (the
tls-server-end-point hash of the server certificate) is given.

An unknown user or a role without a SCRAM secret runs the same exchange against
a mock verifier derived from a per-process secret and the user name (as
PostgreSQL's scram_mock_salt), so timing and messages do not tell whether the
user exists; it always fails at the proof.

Also here: building and parsing the stored verifier
``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` and the md5 one.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from enum import Enum

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
DEFAULT_ITERATIONS = 4096           # PostgreSQL's scram_iterations
SALT_LEN = 16
NONCE_LEN = 18
CB_TYPE = "tls-server-end-point"

_MOCK_SECRET = secrets.token_bytes(32)   # per process, as PostgreSQL's mock_auth_nonce


class ScramError(Exception):
    """The exchange failed: ``sqlstate`` and a message for the client (never secret)."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class ScramVerifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        b = lambda x: base64.b64encode(x).decode()  # noqa: E731
        return f"{MECHANISM}${self.iterations}:{b(self.salt)}${b(self.stored_key)}:{b(self.server_key)}"


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # PostgreSQL runs SASLprep on the password; for ASCII passwords it is the identity.
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def make_verifier(password: str, salt: bytes | None = None,
                  iterations: int = DEFAULT_ITERATIONS) -> ScramVerifier:
    salt = salt if salt is not None else os.urandom(SALT_LEN)
    sp = salted_password(password, salt, iterations)
    client_key = _hmac(sp, b"Client Key")
    return ScramVerifier(iterations, salt, hashlib.sha256(client_key).digest(), _hmac(sp, b"Server Key"))


def parse_verifier(text: str | None) -> ScramVerifier | None:
    """A stored SCRAM secret, or None if ``text`` is not one."""
    if not text or not text.startswith(MECHANISM + "$"):
        return None
    try:
        _, iter_salt, keys = text.split("$")
        it, salt = iter_salt.split(":")
        stored, server = keys.split(":")
        v = ScramVerifier(int(it), base64.b64decode(salt, validate=True),
                          base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True))
    except ValueError:
        return None
    if v.iterations <= 0 or len(v.stored_key) != 32 or len(v.server_key) != 32:
        return None
    return v


def verify_password(verifier: ScramVerifier, password: str) -> bool:
    """Plain password against a SCRAM secret (for the 'password' method)."""
    mine = make_verifier(password, verifier.salt, verifier.iterations)
    return hmac.compare_digest(mine.stored_key, verifier.stored_key)


def is_md5_verifier(text: str | None) -> bool:
    return bool(text) and len(text) == 35 and text.startswith("md5") and \
        all(c in "0123456789abcdef" for c in text[3:])


def md5_verifier(password: str, user: str) -> str:
    return "md5" + hashlib.md5((password + user).encode("utf-8")).hexdigest()


def md5_response(verifier: str, salt: bytes) -> str:
    """What a client sends for an md5 challenge, given the stored ``md5...`` secret."""
    return "md5" + hashlib.md5(verifier[3:].encode() + salt).hexdigest()


def mock_verifier(user: str) -> ScramVerifier:
    salt = hashlib.sha256(_MOCK_SECRET + user.encode("utf-8")).digest()[:SALT_LEN]
    # Keys no password can produce: the proof check always fails.
    return ScramVerifier(DEFAULT_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32))


class ScramState(Enum):
    INIT = 1
    CONTINUE = 2
    FINISHED = 3
    FAILED = 4


def _attrs(msg: str) -> list[tuple[str, str]]:
    out = []
    for part in msg.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError("08P01", "malformed SCRAM message",
                             f'Attribute expected, but found invalid character "{part[:1]}".')
        out.append((part[0], part[2:]))
    return out


def _malformed(detail: str) -> ScramError:
    return ScramError("08P01", "malformed SCRAM message", detail)


class ScramServer:
    """One SCRAM exchange.  ``verifier`` None means: unknown user or no SCRAM secret (mock)."""

    def __init__(self, user: str, verifier: ScramVerifier | None, channel_binding: bytes | None = None):
        self.user = user
        self.real = verifier is not None
        self.verifier = verifier if verifier is not None else mock_verifier(user)
        self.channel_binding = channel_binding
        self.state = ScramState.INIT
        self.mechanism = ""
        self.gs2_header = ""
        self.client_first_bare = ""
        self.server_first = ""
        self.nonce = ""

    def mechanisms(self) -> list[str]:
        return ([MECHANISM_PLUS] if self.channel_binding is not None else []) + [MECHANISM]

    def start(self, mechanism: str, data: bytes) -> bytes:
        """The SASLInitialResponse: returns the server-first-message."""
        if self.state != ScramState.INIT:
            raise _malformed("Unexpected SCRAM message.")
        if mechanism not in self.mechanisms():
            self.state = ScramState.FAILED
            raise ScramError("08P01", "client selected an invalid SASL authentication mechanism")
        self.mechanism = mechanism
        try:
            msg = data.decode("utf-8")
        except UnicodeDecodeError:
            self.state = ScramState.FAILED
            raise _malformed("Message is not valid UTF-8.") from None
        try:
            return self._client_first(msg).encode()
        except ScramError:
            self.state = ScramState.FAILED
            raise

    def _client_first(self, msg: str) -> str:
        parts = msg.split(",", 2)
        if len(parts) != 3:
            raise _malformed("Comma expected.")
        flag, authzid, bare = parts
        plus = self.mechanism == MECHANISM_PLUS
        if flag == "n":
            if plus:
                raise _malformed("The client selected SCRAM-SHA-256-PLUS, but the SCRAM message "
                                 "does not include channel binding data.")
        elif flag == "y":
            if self.channel_binding is not None:
                raise ScramError("08P01", "SCRAM channel binding negotiation error",
                                 "The client supports SCRAM channel binding but thinks the server does "
                                 "not.  However, this server does support channel binding.")
        elif flag.startswith("p="):
            if not plus:
                raise ScramError("08P01", "malformed SCRAM message",
                                 "The client selected SCRAM-SHA-256 without channel binding, but the "
                                 "SCRAM message includes channel binding data.")
            if flag[2:] != CB_TYPE:
                raise ScramError("08P01", "unsupported SCRAM channel-binding type \"%s\"" % flag[2:])
        else:
            raise _malformed(f'Unexpected channel-binding flag "{flag[:1]}".')
        if authzid:
            raise ScramError("0A000", "client uses authorization identity, but it is not supported")
        attrs = _attrs(bare)
        if not attrs or attrs[0][0] == "m":
            raise ScramError("0A000", "client requires an unsupported SCRAM extension")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise _malformed("Could not parse the client's nonce.")
        client_nonce = attrs[1][1]
        if any(not (0x21 <= ord(c) <= 0x7E) or c == "," for c in client_nonce):
            raise _malformed("Could not parse the client's nonce.")
        self.gs2_header = f"{flag},{authzid},"
        self.client_first_bare = bare
        self.nonce = client_nonce + base64.b64encode(os.urandom(NONCE_LEN)).decode()
        v = self.verifier
        self.server_first = f"r={self.nonce},s={base64.b64encode(v.salt).decode()},i={v.iterations}"
        self.state = ScramState.CONTINUE
        return self.server_first

    def finish(self, data: bytes) -> bytes:
        """The client-final-message: returns the server-final-message, or raises ScramError."""
        if self.state != ScramState.CONTINUE:
            raise _malformed("Unexpected SCRAM message.")
        self.state = ScramState.FAILED
        try:
            msg = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("Message is not valid UTF-8.") from None
        attrs = _attrs(msg)
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise _malformed("Malformed SCRAM final message.")
        try:
            cbind = base64.b64decode(attrs[0][1], validate=True)
            proof = base64.b64decode(attrs[-1][1], validate=True)
        except ValueError:
            raise _malformed("Invalid base64 in SCRAM message.") from None
        expected = self.gs2_header.encode()
        if self.gs2_header.startswith("p="):
            assert self.channel_binding is not None
            expected += self.channel_binding
        if not hmac.compare_digest(cbind, expected):
            raise ScramError("28000", "SCRAM channel binding check failed")
        if attrs[1][1] != self.nonce:
            raise _malformed("Nonce does not match.")
        if len(proof) != 32:
            raise _malformed("Malformed proof in client-final-message.")
        without_proof = msg[:msg.rfind(",p=")]
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        v = self.verifier
        signature = _hmac(v.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not self.real or not hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
            raise ScramError("28P01", f'password authentication failed for user "{self.user}"')
        self.state = ScramState.FINISHED
        return ("v=" + base64.b64encode(_hmac(v.server_key, auth_message)).decode()).encode()
