"""PostgreSQL frontend/backend protocol version 3, server side.

Framing only: the startup phase (SSLRequest/GSSENCRequest answered 'N',
CancelRequest, StartupMessage), and encoders/decoders for the messages the
backend and walsenders exchange with libpq clients (psql, psycopg2, pgbench,
pg_receivewal).  Message layouts are PostgreSQL's (protocol-message-formats);
the code is ours.

Everything here works on a blocking socket or on bytes; the event loops live
in backend.py and walsender.py.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

PROTOCOL_3 = 196608          # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Type OIDs used in RowDescription
TEXTOID = 25
INT4OID = 23
INT8OID = 20
BOOLOID = 16
PG_LSNOID = 3220
TIMESTAMPTZOID = 1184
BYTEAOID = 17

MAX_STARTUP_PACKET = 10000


class ProtocolError(Exception):
    """The client broke the protocol; the connection is closed."""


@dataclass
class StartupPacket:
    params: dict[str, str] = field(default_factory=dict)
    cancel: tuple[int, int] | None = None   # (pid, key) for CancelRequest

    @property
    def replication(self) -> str | None:
        """None, 'physical' (replication=true) or 'database' (replication=database)."""
        v = self.params.get("replication")
        if v is None:
            return None
        v = v.lower()
        if v in ("true", "on", "yes", "1"):
            return "physical"
        if v == "database":
            return "database"
        return None

    @property
    def user(self) -> str:
        return self.params.get("user", "postgres")

    @property
    def database(self) -> str:
        return self.params.get("database", self.user)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("unexpected EOF on client connection")
        buf += chunk
    return bytes(buf)


def parse_startup_body(body: bytes) -> StartupPacket:
    """Body of a StartupMessage (after length and version)."""
    parts = body.split(b"\x00")
    params: dict[str, str] = {}
    it = iter(parts)
    for k in it:
        if not k:
            break
        v = next(it, b"")
        params[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return StartupPacket(params)


def read_startup(sock: socket.socket) -> StartupPacket:
    """Blocking startup phase: refuse SSL/GSS encryption, return the packet."""
    while True:
        (length,) = struct.unpack("!I", recv_exact(sock, 4))
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError("invalid length of startup packet")
        body = recv_exact(sock, length - 4)
        (code,) = struct.unpack_from("!I", body)
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            sock.sendall(b"N")
            continue
        if code == CANCEL_REQUEST:
            pid, key = struct.unpack_from("!II", body, 4)
            return StartupPacket({}, cancel=(pid, key))
        if code >> 16 != 3:
            raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                                "server supports 3.0 to 3.0")
        return parse_startup_body(body[4:])


class StartupParser:
    """Incremental startup phase for a non-blocking event loop.

    Feed bytes; ``replies`` holds bytes to send (the 'N' to SSLRequest);
    ``packet`` is set once the StartupMessage (or CancelRequest) is complete.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.replies = bytearray()
        self.packet: StartupPacket | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.packet is None and len(self.buf) >= 4:
            (length,) = struct.unpack_from("!I", self.buf)
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise ProtocolError("invalid length of startup packet")
            if len(self.buf) < length:
                return
            body = bytes(self.buf[4:length])
            del self.buf[:length]
            (code,) = struct.unpack_from("!I", body)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                self.replies += b"N"
            elif code == CANCEL_REQUEST:
                pid, key = struct.unpack_from("!II", body, 4)
                self.packet = StartupPacket({}, cancel=(pid, key))
            elif code >> 16 != 3:
                raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                                    "server supports 3.0 to 3.0")
            else:
                self.packet = parse_startup_body(body[4:])


class MessageReader:
    """Split a byte stream of regular messages (type byte + int32 length)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[bytes, bytes] | None:
        if len(self.buf) < 5:
            return None
        (length,) = struct.unpack_from("!I", self.buf, 1)
        if length < 4 or length > 1 << 30:
            raise ProtocolError("invalid message length")
        if len(self.buf) < 1 + length:
            return None
        mtype = bytes(self.buf[0:1])
        body = bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        return mtype, body


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    """Blocking read of one regular message."""
    head = recv_exact(sock, 5)
    (length,) = struct.unpack_from("!I", head, 1)
    if length < 4 or length > 1 << 30:
        raise ProtocolError("invalid message length")
    return head[0:1], recv_exact(sock, length - 4)


# ---- encoders ------------------------------------------------------------

def msg(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


def authentication_ok() -> bytes:
    return msg(b"R", struct.pack("!I", 0))


def parameter_status(name: str, value: str) -> bytes:
    return msg(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return msg(b"K", struct.pack("!II", pid & 0xFFFFFFFF, key & 0xFFFFFFFF))


def ready_for_query(status: bytes = b"I") -> bytes:
    """status: b'I' idle, b'T' in a transaction block, b'E' failed transaction."""
    return msg(b"Z", status)


def row_description(columns: list[tuple[str, int]], formats: list[int] | None = None) -> bytes:
    """RowDescription; ``formats`` gives each column's format code (0 text, 1 binary), default text."""
    body = struct.pack("!H", len(columns))
    for i, (name, typoid) in enumerate(columns):
        size = {INT4OID: 4, INT8OID: 8, BOOLOID: 1, PG_LSNOID: 8, TIMESTAMPTZOID: 8}.get(typoid, -1)
        body += cstr(name) + struct.pack("!IhIhih", 0, 0, typoid, size, -1, formats[i] if formats else 0)
    return msg(b"T", body)


# Extended query protocol (backend side).
def parse_complete() -> bytes:
    return msg(b"1")


def bind_complete() -> bytes:
    return msg(b"2")


def close_complete() -> bytes:
    return msg(b"3")


def no_data() -> bytes:
    return msg(b"n")


def portal_suspended() -> bytes:
    return msg(b"s")


def parameter_description(oids: list[int]) -> bytes:
    return msg(b"t", struct.pack(f"!H{len(oids)}I", len(oids), *oids))


class BodyReader:
    """Fields of one message body, in order; a short or malformed body raises ProtocolError."""

    def __init__(self, body: bytes):
        self.body = body
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise ProtocolError("insufficient data left in message")
        b = self.body[self.pos:self.pos + n]
        self.pos += n
        return b

    def int16(self) -> int:
        return struct.unpack("!h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack("!i", self._take(4))[0]

    def uint32(self) -> int:
        return struct.unpack("!I", self._take(4))[0]

    def byte(self) -> bytes:
        return self._take(1)

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def cstr(self) -> str:
        end = self.body.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("invalid string in message")
        s = self.body[self.pos:end]
        self.pos = end + 1
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid byte sequence for encoding \"UTF8\"") from None

    def end(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolError("invalid message format")


def data_row(values: list[str | bytes | None]) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            body += struct.pack("!i", len(b)) + b
    return msg(b"D", body)


def command_complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def empty_query_response() -> bytes:
    return msg(b"I")


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None,
            position: int | None = None) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(message)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    if position:
        body += b"P" + cstr(str(position))     # 1-based character index into the query string
    return body + b"\x00"


def error_response(sqlstate: str, message: str, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None, position: int | None = None) -> bytes:
    return msg(b"E", _fields(severity, sqlstate, message, detail, hint, position))


def notice_response(message: str, severity: str = "NOTICE", sqlstate: str = "00000") -> bytes:
    return msg(b"N", _fields(severity, sqlstate, message, None, None))


def copy_both_response() -> bytes:
    return msg(b"W", struct.pack("!bH", 0, 0))


def copy_out_response(ncols: int = 0) -> bytes:
    return msg(b"H", struct.pack("!bH", 0, ncols) + struct.pack("!h", 0) * ncols)


def copy_data(payload: bytes) -> bytes:
    return msg(b"d", payload)


def copy_done() -> bytes:
    return msg(b"c")


def parse_query(body: bytes) -> str:
    """Body of a 'Q' message."""
    return body.rstrip(b"\x00").decode("utf-8", "replace")


class SQLError(Exception):
    """An error to report to the client with a SQLSTATE; the connection stays up."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None,
                 position: int | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.position = position

    def encode(self) -> bytes:
        return error_response(self.sqlstate, self.message, detail=self.detail, hint=self.hint,
                              position=self.position)


def startup_greeting(server_params: dict[str, str], pid: int, key: int) -> bytes:
    """AuthenticationOk, ParameterStatus..., BackendKeyData, ReadyForQuery."""
    out = authentication_ok()
    for k, v in server_params.items():
        out += parameter_status(k, v)
    return out + backend_key_data(pid, key) + ready_for_query(b"I")


def default_server_params(application_name: str = "", in_hot_standby: bool = False) -> dict[str, str]:
    """What PostgreSQL 15 reports at startup; libpq clients read several of these."""
    return {
        "application_name": application_name,
        "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "default_transaction_read_only": "off",
        "in_hot_standby": "on" if in_hot_standby else "off",
        "integer_datetimes": "on",
        "IntervalStyle": "postgres",
        "is_superuser": "on",
        "server_encoding": "UTF8",
        "server_version": "15.0 (walswitch)",
        "session_authorization": "postgres",
        "standard_conforming_strings": "on",
        "TimeZone": "UTC",
    }
