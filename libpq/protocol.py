"""PostgreSQL frontend/backend protocol version 3: the one codec of the server and the client side.

Framing: the startup phase (SSLRequest/GSSENCRequest answered 'N',
CancelRequest, StartupMessage), and encoders/decoders for the messages the
backend and walsenders exchange with libpq clients (psql, psycopg2, pgbench,
pg_receivewal).  The streaming-replication messages carried inside CopyData
(XLogData 'w', primary keepalive 'k', standby status update 'r', hot standby
feedback 'h') are encoded and decoded here for both ends: the walsender builds
'w'/'k' and reads 'r'/'h', the walreceiver (whose connection is libpq itself)
reads 'w'/'k' and builds 'r'.  Message layouts are PostgreSQL's
(protocol-message-formats, protocol-replication); the code is ours.

Everything here works on a blocking socket or on bytes; the event loops live
in backend.py and walsender.py.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

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


class StartupError(ProtocolError):
    """A bad startup packet.  ``to_client``: PostgreSQL sends it as a FATAL ErrorResponse;
    otherwise (COMMERROR in PostgreSQL) it is only logged and the connection closed."""

    def __init__(self, sqlstate: str, message: str, to_client: bool = True):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.to_client = to_client


def parse_startup_body(body: bytes) -> StartupPacket:
    """Body of a StartupMessage (after length and version): name/value pairs, then one NUL.

    PostgreSQL's layout rule (ProcessStartupPacket): a pair whose value has no terminator, or
    anything after the final NUL, is "invalid startup packet layout".
    """
    params: dict[str, str] = {}
    offset = 0
    n = len(body)
    while offset < n:
        name_end = body.find(b"\x00", offset)
        if name_end == offset:              # the terminating NUL
            break
        if name_end < 0:
            offset = n
            break
        val_end = body.find(b"\x00", name_end + 1)
        if val_end < 0:
            offset = n
            break
        params[body[offset:name_end].decode("utf-8", "replace")] = \
            body[name_end + 1:val_end].decode("utf-8", "replace")
        offset = val_end + 1
    if offset != n - 1:
        raise StartupError("08P01", "invalid startup packet layout: expected terminator as last byte")
    pkt = StartupPacket(params)
    check_startup_params(pkt)
    return pkt


def check_startup_params(pkt: StartupPacket) -> None:
    """The checks PostgreSQL makes on the parameters themselves (FATAL to the client)."""
    v = pkt.params.get("replication")
    if v is not None and v.lower() not in REPLICATION_VALUES:
        raise StartupError("22023", f'invalid value for parameter "replication": "{v}"')
    if not pkt.params.get("user"):
        raise StartupError("28000", "no PostgreSQL user name specified in startup packet")


# parse_bool's spellings, plus "database" (a logical replication connection)
REPLICATION_VALUES = {"true", "on", "yes", "1", "t", "y", "false", "off", "no", "0", "f", "n", "database"}


def unsupported_protocol(code: int) -> StartupError:
    return StartupError("0A000", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                        "server supports 3.0 to 3.0")


def negotiate_protocol_version(minor: int, unrecognized: list[str]) -> bytes:
    """NegotiateProtocolVersion ('v'): the newest minor version we speak (0) and the
    ``_pq_.`` options we do not know, as PostgreSQL sends for 3.x with x > 0."""
    body = struct.pack("!II", 0, len(unrecognized)) + b"".join(cstr(o) for o in unrecognized)
    return msg(b"v", body)


def read_startup(sock: socket.socket) -> StartupPacket:
    """Blocking startup phase (tests' harnesses): refuse SSL/GSS encryption, return the packet."""
    parser = StartupParser()
    while parser.packet is None:
        data = sock.recv(MAX_STARTUP_PACKET)
        if not data:
            raise ProtocolError("unexpected EOF on client connection")
        parser.feed(data)
        if parser.replies:
            sock.sendall(parser.replies)
            parser.replies.clear()
    return parser.packet


class StartupParser:
    """Incremental startup phase for a non-blocking event loop.

    Feed bytes; ``replies`` holds bytes to send (the 'N' to SSLRequest and
    GSSENCRequest, NegotiateProtocolVersion); ``packet`` is set once the
    StartupMessage (or CancelRequest) is complete.  Every malformed packet
    raises StartupError (PostgreSQL's message and SQLSTATE); nothing else
    escapes, whatever the bytes.  Each encryption request is answered once,
    as PostgreSQL does: a second one is an unsupported protocol.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.replies = bytearray()
        self.packet: StartupPacket | None = None
        self.ssl_done = False
        self.gss_done = False
        self.ssl_available = False   # set by the server when ssl = on: SSLRequest is answered 'S'
        self.start_tls = False       # the 'S' is in replies: send it in clear, then the handshake follows

    def wanted(self) -> int:
        """Bytes that complete the current packet: read no further, so that nothing meant for
        whoever takes the connection next (a walsender, the TLS layer) is consumed here."""
        if len(self.buf) < 4:
            return 4 - len(self.buf)
        (length,) = struct.unpack_from("!I", self.buf)
        return max(1, min(length, MAX_STARTUP_PACKET) - len(self.buf))

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.packet is None and not self.start_tls and len(self.buf) >= 4:
            (length,) = struct.unpack_from("!I", self.buf)
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise StartupError("08P01", "invalid length of startup packet", to_client=False)
            if len(self.buf) < length:
                return
            body = bytes(self.buf[4:length])
            del self.buf[:length]
            self.packet_body(body)

    def packet_body(self, body: bytes) -> None:
        (code,) = struct.unpack_from("!I", body)
        if code == SSL_REQUEST and not self.ssl_done:
            self.ssl_done = True
            self.replies += b"S" if self.ssl_available else b"N"
            self.start_tls = self.ssl_available
        elif code == GSSENC_REQUEST and not self.gss_done:
            self.gss_done = True
            self.replies += b"N"
        elif code == CANCEL_REQUEST:
            if len(body) != 12:
                raise StartupError("08P01", "invalid length of startup packet", to_client=False)
            pid, key = struct.unpack_from("!II", body, 4)
            self.packet = StartupPacket({}, cancel=(pid, key))
        elif code >> 16 != 3:
            raise unsupported_protocol(code)
        else:
            pkt = parse_startup_body(body[4:])
            unknown = [k for k in pkt.params if k.startswith("_pq_.")]
            for k in unknown:
                del pkt.params[k]
            if code & 0xFFFF or unknown:
                self.replies += negotiate_protocol_version(code & 0xFFFF, unknown)
            self.packet = pkt


# Longest body PostgreSQL accepts per message type after startup (SocketBackend in
# postgres.c): the query and COPY messages may be large, everything else is small.
LARGE_MESSAGE_LIMIT = (1 << 30) - 1
SMALL_MESSAGE_LIMIT = 10000
FRONTEND_LIMITS = {t: LARGE_MESSAGE_LIMIT for t in b"QPBdF"}
FRONTEND_LIMITS.update({t: SMALL_MESSAGE_LIMIT for t in b"XCDEHScfp"})


class MessageReader:
    """Split a byte stream of regular messages (type byte + int32 length).

    ``limits`` (server side: FRONTEND_LIMITS) maps each accepted type byte to its
    longest length; an unknown type is refused as soon as its type byte arrives,
    before its body is waited for, as PostgreSQL does.
    """

    def __init__(self, limits: dict[int, int] | None = None) -> None:
        self.buf = bytearray()
        self.limits = limits

    def feed(self, data: bytes) -> None:
        self.buf += data

    def pending(self) -> tuple[int, int] | None:
        """(bytes buffered, bytes the current message needs), once its header is in."""
        if len(self.buf) < 5:
            return None
        return len(self.buf), 1 + struct.unpack_from("!I", self.buf, 1)[0]

    def next(self) -> tuple[bytes, bytes] | None:
        if not self.buf:
            return None
        maxlen = 1 << 30
        if self.limits is not None:
            t = self.buf[0]
            if t not in self.limits:
                raise ProtocolError(f"invalid frontend message type {t}")
            maxlen = self.limits[t]
        if len(self.buf) < 5:
            return None
        (length,) = struct.unpack_from("!I", self.buf, 1)
        if length < 4 or length > maxlen:
            raise ProtocolError("invalid message length")
        if len(self.buf) < 1 + length:
            return None
        mtype = bytes(self.buf[0:1])
        with memoryview(self.buf) as view:      # one copy of a large body, not two
            body = bytes(view[5:1 + length])
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
    """Body of a 'Q' message: one NUL-terminated string and nothing after it.

    PostgreSQL's errors (pq_getmsgstring, pq_getmsgend, the encoding check) as SQLError:
    the statement fails, the connection stays.
    """
    end = body.find(b"\x00")
    if end < 0:
        raise SQLError("08P01", "invalid string in message")
    if end != len(body) - 1:
        raise SQLError("08P01", "invalid message format")
    return decode_client_text(body[:end])


def decode_client_text(raw: bytes) -> str:
    """UTF-8 from the client, or PostgreSQL's 22021 naming the first bad bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = " ".join(f"0x{b:02x}" for b in raw[e.start:e.end])
        raise SQLError("22021", f'invalid byte sequence for encoding "UTF8": {bad}') from None


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


# ---- streaming replication messages (the payload of a CopyData 'd') --------
# Every position is a uint64 LSN, every time an int64 of microseconds since
# 2000-01-01 UTC.  The struct layouts leave out the leading kind byte.
XLOGDATA_KIND = ord("w")
KEEPALIVE_KIND = ord("k")
STANDBY_STATUS_KIND = ord("r")
HOT_STANDBY_FEEDBACK_KIND = ord("h")

XLOGDATA_HEADER = struct.Struct("!QQq")        # dataStart, walEnd, sendTime; the WAL bytes follow
XLOGDATA_PAYLOAD = 1 + XLOGDATA_HEADER.size    # offset of the WAL bytes in the CopyData payload (25)
KEEPALIVE = struct.Struct("!QqB")              # walEnd, sendTime, replyRequested
STANDBY_STATUS = struct.Struct("!QQQqB")       # write, flush, apply, sendTime, replyRequested
HOT_STANDBY_FEEDBACK = struct.Struct("!qIIII")  # sendTime, xmin, xmin epoch, catalog_xmin, its epoch

_xlogdata_unpack = XLOGDATA_HEADER.unpack_from


class Keepalive(NamedTuple):
    wal_end: int
    send_time: int
    reply_requested: bool


class StandbyStatus(NamedTuple):
    write: int
    flush: int
    apply: int
    send_time: int
    reply_requested: bool


class HotStandbyFeedback(NamedTuple):
    send_time: int
    xmin: int
    xmin_epoch: int
    catalog_xmin: int
    catalog_xmin_epoch: int


def xlog_data_header(data_start: int, wal_end: int, send_time: int) -> bytes:
    """'w' and its header; the caller appends the WAL bytes from data_start on."""
    return b"w" + XLOGDATA_HEADER.pack(data_start, wal_end, send_time)


def keepalive(wal_end: int, send_time: int, reply_requested: bool) -> bytes:
    return b"k" + KEEPALIVE.pack(wal_end, send_time, 1 if reply_requested else 0)


def standby_status(write: int, flush: int, apply: int, send_time: int, reply_requested: bool) -> bytes:
    return b"r" + STANDBY_STATUS.pack(write, flush, apply, send_time, 1 if reply_requested else 0)


def hot_standby_feedback(send_time: int, xmin: int, xmin_epoch: int, catalog_xmin: int,
                         catalog_xmin_epoch: int) -> bytes:
    return b"h" + HOT_STANDBY_FEEDBACK.pack(send_time, xmin, xmin_epoch, catalog_xmin, catalog_xmin_epoch)


def decode_xlog_data(buf) -> tuple[int, int, int]:
    """(data_start, wal_end, send_time) of a 'w' payload (bytes or a buffer); the WAL is buf[XLOGDATA_PAYLOAD:].

    A plain tuple: this runs once per message on the walreceiver's hot path.
    """
    if len(buf) < XLOGDATA_PAYLOAD:
        raise ProtocolError("invalid WAL message received from primary")
    return _xlogdata_unpack(buf, 1)


def decode_keepalive(buf) -> Keepalive:
    if len(buf) < 1 + KEEPALIVE.size:
        raise ProtocolError("invalid keepalive message received from primary")
    wal_end, send_time, reply = KEEPALIVE.unpack_from(buf, 1)
    return Keepalive(wal_end, send_time, bool(reply))


def decode_standby_status(buf) -> StandbyStatus:
    """The fields of an 'r' message as sent; judging their values is the caller's business."""
    if len(buf) < 1 + STANDBY_STATUS.size:
        raise ProtocolError("invalid standby status message")
    write, flush, apply, send_time, reply = STANDBY_STATUS.unpack_from(buf, 1)
    return StandbyStatus(write, flush, apply, send_time, bool(reply))


def decode_hot_standby_feedback(buf) -> HotStandbyFeedback:
    if len(buf) < 1 + HOT_STANDBY_FEEDBACK.size:
        raise ProtocolError("invalid hot standby feedback message")
    return HotStandbyFeedback(*HOT_STANDBY_FEEDBACK.unpack_from(buf, 1))
