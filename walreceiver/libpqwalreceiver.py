"""The walreceiver's client side of PostgreSQL's frontend/backend protocol 3 (libpqwalreceiver.c, our code).

Why not psycopg2's ``PhysicalReplicationConnection`` (DESIGN.md section 6 asks
for it unless it cannot do what is needed).  Reading psycopg2 2.9's
``pq_read_replication_message`` (pqpath.c) shows three things a walreceiver
needs and it cannot do:

1. **End of timeline.**  When the primary ends the copy (CopyDone at the end of
   a historic timeline), psycopg2 clears the ``PGRES_COPY_IN`` result and
   returns ``None``, exactly as when no data has arrived yet: the end is
   invisible.  It has no call to send our CopyDone (``PQputCopyEnd``), so the
   next-timeline result set (``next_tli``, ``next_tli_startpos``) can never be
   read and the connection can never be reused for the next
   ``START_REPLICATION``, as PostgreSQL's walreceiver does.
2. **Keepalives.**  psycopg2 swallows ``k`` messages: their send time (our
   ``last_msg_send_us`` / ``latest_end_time_us``) is lost, and it answers a
   reply request itself with positions of its own.
3. **It moves our flush position by itself.**  On a keepalive it may advance
   the ``flush_lsn`` it reports to the primary up to the keepalive's walEnd
   (meant for logical decoding): a physical standby would report WAL as
   flushed that it never received.

So this module is a small libpq of our own: conninfo strings (``key=value``
and ``postgresql://`` URIs), TCP or Unix-socket connection with a deadline,
trust / cleartext / MD5 / SCRAM-SHA-256 authentication, simple queries, and
CopyBoth streaming on a non-blocking socket with zero-copy access to each
XLogData payload.  Framing helpers of the server side live in
libpq/protocol.py; this is the client side.  No SSL/GSS encryption
(``sslmode=disable`` semantics; ``sslmode=require`` and stricter are refused).

Error texts are libpq's (``PQerrorMessage`` after ``pchomp``), because the
walreceiver's FATAL lines embed them, e.g.
``connection to server at "127.0.0.1", port 55432 failed: Connection refused``
followed by libpq's tab-indented hint line, or ``ERROR:  requested WAL segment
... has already been removed``.

Every blocking step waits with ``select`` on the socket plus the caller's
``interrupt_fds`` (the postmaster-death pipe and a signal self-pipe) and then
calls ``check_interrupts`` (which raises to leave), so a SIGTERM or a dead
postmaster is never stuck behind a silent network.
"""
from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import hmac
import os
import select
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

PROTOCOL_3 = 196608

# What libpq adds to a refused connection / an EOF from the server.
_REFUSED_HINT_TCP = "\n\tIs the server running on that host and accepting TCP/IP connections?"
_REFUSED_HINT_UNIX = "\n\tIs the server running locally and accepting connections on that socket?"
CLOSED_UNEXPECTEDLY = ("server closed the connection unexpectedly\n"
                       "\tThis probably means the server terminated abnormally\n"
                       "\tbefore or while processing the request.")

_HDR = struct.Struct("!cI")
_XLOGDATA = struct.Struct("!QQq")      # after the 'w': dataStart, walEnd, sendTime
_KEEPALIVE = struct.Struct("!QqB")     # after the 'k': walEnd, sendTime, replyRequested
_REPLY = struct.Struct("!cQQQqB")      # 'r', write, flush, apply, sendTime, replyRequested

BUF_INITIAL = 1 << 20
RECV_CHUNK = 256 * 1024


# ---------------------------------------------------------------- errors
class WalRcvError(Exception):
    """Any failure; ``str(e)`` is the libpq-style text (no trailing newline)."""


class ConnInfoError(WalRcvError):
    """A bad conninfo string (libpq's wording)."""


class ConnectError(WalRcvError):
    """The connection could not be established."""


class ConnectionLost(WalRcvError):
    """The socket failed or reached EOF."""


class ProtocolViolation(WalRcvError):
    """The server sent something the protocol does not allow here."""


class TimeoutExpired(WalRcvError):
    """A deadline passed while waiting for the server."""


class ServerError(WalRcvError):
    """An ErrorResponse; ``fields`` maps the field codes (S, C, M, D, H, ...)."""

    def __init__(self, fields: dict[str, str], prefix: str = ""):
        self.fields = fields
        super().__init__(prefix + format_error_fields(fields))

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


def format_error_fields(fields: dict[str, str]) -> str:
    """pqBuildErrorMessage3 at the default verbosity, pchomp'ed."""
    sev = fields.get("S") or fields.get("V") or "ERROR"
    out = f"{sev}:  {fields.get('M', 'missing error text')}"
    if fields.get("D"):
        out += f"\nDETAIL:  {fields['D']}"
    if fields.get("H"):
        out += f"\nHINT:  {fields['H']}"
    return out


def parse_error_fields(body: bytes | memoryview) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in bytes(body).split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


# ---------------------------------------------------------------- conninfo
KNOWN_OPTIONS = (
    "user", "password", "passfile", "channel_binding", "dbname", "host", "hostaddr", "port",
    "connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "replication", "sslmode", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslrootcert",
    "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "gssencmode", "krbsrvname", "gsslib", "service", "target_session_attrs",
)


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """conninfo_parse / conninfo_uri_parse: ``key=value ...`` or a ``postgresql://`` URI."""
    s = conninfo.strip()
    if s.startswith(("postgresql://", "postgres://")):
        return _parse_uri(s)
    out: dict[str, str] = {}
    i, n = 0, len(s)
    while i < n:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        while i < n and s[i] != "=" and not s[i].isspace():
            i += 1
        key = s[start:i]
        while i < n and s[i].isspace():
            i += 1
        if i >= n or s[i] != "=":
            raise ConnInfoError(f'missing "=" after "{key}" in connection info string')
        i += 1
        while i < n and s[i].isspace():
            i += 1
        val: list[str] = []
        if i < n and s[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConnInfoError("unterminated quoted string in connection info string")
                c = s[i]
                if c == "\\" and i + 1 < n:
                    val.append(s[i + 1])
                    i += 2
                    continue
                if c == "'":
                    i += 1
                    break
                val.append(c)
                i += 1
        else:
            while i < n and not s[i].isspace():
                if s[i] == "\\" and i + 1 < n:
                    val.append(s[i + 1])
                    i += 2
                    continue
                val.append(s[i])
                i += 1
        if key not in KNOWN_OPTIONS:
            raise ConnInfoError(f'invalid connection option "{key}"')
        out[key] = "".join(val)
    return out


def _parse_uri(uri: str) -> dict[str, str]:
    u = urllib.parse.urlsplit(uri)
    out: dict[str, str] = {}
    if u.username:
        out["user"] = urllib.parse.unquote(u.username)
    if u.password is not None:
        out["password"] = urllib.parse.unquote(u.password)
    netloc = u.netloc.rsplit("@", 1)[-1]
    hosts, ports = [], []
    for hp in filter(None, netloc.split(",")):
        if hp.startswith("["):
            h, _, rest = hp[1:].partition("]")
            p = rest[1:] if rest.startswith(":") else ""
        else:
            h, _, p = hp.partition(":")
        hosts.append(urllib.parse.unquote(h))
        ports.append(p)
    if any(hosts):
        out["host"] = ",".join(hosts)
    if any(ports):
        out["port"] = ",".join(ports)
    if u.path and u.path != "/":
        out["dbname"] = urllib.parse.unquote(u.path[1:])
    for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
        if k not in KNOWN_OPTIONS:
            raise ConnInfoError(f'invalid URI query parameter: "{k}"')
        out[k] = v
    return out


def masked_conninfo(opts: dict[str, str]) -> str:
    """What PostgreSQL shows as pg_stat_wal_receiver.conninfo: effective options, password hidden."""
    order = ("user", "password", "dbname", "host", "hostaddr", "port", "application_name",
             "fallback_application_name", "connect_timeout", "keepalives", "keepalives_idle",
             "keepalives_interval", "keepalives_count", "sslmode", "gssencmode", "target_session_attrs")
    parts = []
    for k in order + tuple(k for k in opts if k not in order):
        v = opts.get(k)
        if v is None or v == "" or (parts and any(p.startswith(k + "=") for p in parts)):
            continue
        if k in ("password", "sslpassword"):
            v = "********"
        if v == "" or any(c.isspace() or c in "'\\" for c in v):
            v = "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{k}={v}")
    return " ".join(parts)


@dataclass
class Target:
    """One host to try: as named, the address actually used, and the port."""
    host: str            # as given (name, IP or socket directory)
    addr: str | None     # hostaddr or resolved IP; None for a Unix socket
    port: int
    unix: bool = False

    def identity(self) -> str:
        """libpq's emitHostIdentityInfo prefix."""
        if self.unix:
            return f'connection to server on socket "{self.socket_path()}" failed: '
        if self.addr and self.addr != self.host:
            return f'connection to server at "{self.host}" ({self.addr}), port {self.port} failed: '
        return f'connection to server at "{self.host}", port {self.port} failed: '

    def socket_path(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}")


def connection_targets(opts: dict[str, str]) -> list[tuple[str, str | None, int]]:
    """(host, hostaddr, port) per listed host, with libpq's defaults."""
    hosts = (opts.get("host") or os.environ.get("PGHOST") or "localhost").split(",")
    addrs = (opts.get("hostaddr") or "").split(",") if opts.get("hostaddr") else [""] * len(hosts)
    if opts.get("hostaddr") and not opts.get("host"):
        hosts = [a for a in addrs]
    ports_s = (opts.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    if len(ports_s) == 1:
        ports_s = ports_s * len(hosts)
    if len(ports_s) != len(hosts) or len(addrs) != len(hosts):
        raise ConnInfoError(f"could not match {len(ports_s)} port numbers to {len(hosts)} hosts")
    out = []
    for h, a, p in zip(hosts, addrs, ports_s):
        p = p.strip() or "5432"
        try:
            port = int(p)
            if not 1 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise ConnInfoError(f'invalid port number: "{p}"') from None
        out.append((h.strip() or "localhost", a.strip() or None, port))
    return out


# ---------------------------------------------------------------- SCRAM-SHA-256
class _Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) without channel binding."""

    def __init__(self, password: str):
        self.password = password.encode("utf-8")
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.client_first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        sf = server_first.decode()
        attrs = dict(a.split("=", 1) for a in sf.split(","))
        r, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not r.startswith(self.nonce):
            raise ProtocolViolation("invalid SCRAM response (nonce mismatch)")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={r}"
        auth_msg = f"{self.client_first_bare},{sf},{without_proof}".encode()
        client_sig = hmac.new(stored_key, auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth_msg, "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = dict(a.split("=", 1) for a in server_final.decode().split(",") if "=" in a)
        if "e" in attrs:
            raise ConnectError(f"error received from server in SCRAM exchange: {attrs['e']}")
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise ConnectError("incorrect server signature")


# ---------------------------------------------------------------- results
@dataclass
class Result:
    """One result of a simple query: tuples (with columns/rows), a command, or CopyBoth."""
    status: str                                   # "tuples", "command", "copy_both", "empty"
    columns: list[str] = field(default_factory=list)
    rows: list[list[bytes | None]] = field(default_factory=list)
    tag: str = ""


# ---------------------------------------------------------------- the connection
class WalRcvConn:
    """One replication connection.  Not thread-safe; one owner."""

    def __init__(self, sock: socket.socket, target: Target, opts: dict[str, str],
                 interrupt_fds: list[int], check_interrupts: Callable[[], None]):
        self.sock = sock
        self.fd = sock.fileno()
        self.target = target
        self.opts = opts
        self.interrupt_fds = list(interrupt_fds)
        self.check_interrupts = check_interrupts
        self.server_params: dict[str, str] = {}
        self.backend_pid = 0
        self.buf = bytearray(BUF_INITIAL)
        self.rpos = 0          # start of unread bytes in buf
        self.wpos = 0          # end of received bytes in buf
        self.out = bytearray()
        self.eof = False
        self.copy = "none"     # none | both | server_done (CopyDone) | ended (CommandComplete/error)
        self.closed = False

    # ------------------------------------------------------------ connecting
    @classmethod
    def connect(cls, conninfo: str, appname: str, *, deadline: float | None,
                interrupt_fds: list[int], check_interrupts: Callable[[], None]) -> "WalRcvConn":
        """libpqrcv_connect: a physical replication connection (dbname=replication, replication=true)."""
        opts = parse_conninfo(conninfo)
        for k in ("sslmode",):
            if opts.get(k, "disable") in ("require", "verify-ca", "verify-full"):
                raise ConnectError(f'sslmode value "{opts[k]}" invalid: SSL is not supported by walswitch')
        if opts.get("gssencmode") == "require":
            raise ConnectError('gssencmode value "require" invalid: GSSAPI encryption is not supported by walswitch')
        if opts.get("connect_timeout"):
            try:
                ct = int(opts["connect_timeout"])
            except ValueError:
                raise ConnInfoError(f'invalid integer value "{opts["connect_timeout"]}" for connection '
                                    'option "connect_timeout"') from None
            if ct > 0:
                ct = max(ct, 2)   # as libpq: at least 2 seconds
                d = time.monotonic() + ct
                deadline = d if deadline is None else min(deadline, d)
        user = opts.get("user") or os.environ.get("PGUSER") or _os_user()
        password = opts.get("password") or os.environ.get("PGPASSWORD")
        eff = dict(opts)
        eff["user"] = user
        eff["dbname"] = "replication"
        eff["fallback_application_name"] = appname
        errors: list[str] = []
        for host, hostaddr, port in connection_targets(opts):
            for target in _resolve(host, hostaddr, port, errors):
                try:
                    sock = _open_socket(target, deadline, interrupt_fds, check_interrupts)
                except ConnectError as e:
                    errors.append(target.identity() + str(e))
                    continue
                conn = cls(sock, target, eff, interrupt_fds, check_interrupts)
                try:
                    conn._startup(user, password, opts.get("application_name") or appname,
                                  opts.get("options"), deadline)
                except (ConnectError, ServerError, ConnectionLost, ProtocolViolation, TimeoutExpired) as e:
                    conn.close(terminate=False)
                    errors.append(target.identity() + str(e))
                    continue
                eff["host"] = host
                eff["port"] = str(port)
                if hostaddr:
                    eff["hostaddr"] = hostaddr
                return conn
        raise ConnectError("\n".join(errors) if errors else "no host to connect to")

    def _startup(self, user: str, password: str | None, appname: str, options: str | None,
                 deadline: float | None) -> None:
        params = {"user": user, "database": "replication", "replication": "true",
                  "application_name": appname}
        if options:
            params["options"] = options
        body = struct.pack("!I", PROTOCOL_3) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        self.send_raw(struct.pack("!I", len(body) + 4) + body, deadline)
        scram: _Scram | None = None
        while True:
            mtype, body = self.read_message(deadline)
            if mtype == b"R":
                (code,) = struct.unpack_from("!I", body)
                if code == 0:
                    continue
                if code in (3, 5, 10) and not password:
                    raise ConnectError("fe_sendauth: no password supplied")
                assert password is not None
                if code == 3:
                    self.send_raw(_msg(b"p", password.encode() + b"\0"), deadline)
                elif code == 5:
                    salt = bytes(body[4:8])
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send_raw(_msg(b"p", outer.encode() + b"\0"), deadline)
                elif code == 10:
                    mechs = [m.decode() for m in bytes(body[4:]).split(b"\0") if m]
                    if "SCRAM-SHA-256" not in mechs:
                        raise ConnectError("none of the server's SASL authentication mechanisms are supported")
                    scram = _Scram(password)
                    first = scram.first()
                    self.send_raw(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first),
                                  deadline)
                elif code == 11 and scram is not None:
                    self.send_raw(_msg(b"p", scram.final(bytes(body[4:]))), deadline)
                elif code == 12 and scram is not None:
                    scram.verify(bytes(body[4:]))
                else:
                    raise ConnectError(f"authentication method {code} not supported")
            elif mtype == b"E":
                raise ServerError(parse_error_fields(body))
            elif mtype == b"S":
                self._param_status(body)
            elif mtype == b"K":
                self.backend_pid = struct.unpack_from("!I", body)[0]
            elif mtype == b"N":
                continue
            elif mtype == b"Z":
                return
            else:
                raise ProtocolViolation("expected authentication request from server, but received "
                                        + mtype.decode("latin-1"))

    def _param_status(self, body: bytes) -> None:
        parts = bytes(body).split(b"\0")
        if len(parts) >= 2:
            self.server_params[parts[0].decode("utf-8", "replace")] = parts[1].decode("utf-8", "replace")

    # ------------------------------------------------------------ low-level I/O
    def wait(self, want_write: bool, deadline: float | None) -> bool:
        """Sleep until the socket is ready (or an interrupt fd fires); False on deadline."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            r, w, _ = select.select([self.fd, *self.interrupt_fds], [self.fd] if want_write else [], [], timeout)
        except (OSError, ValueError):
            r, w = [self.fd], []
        self.check_interrupts()
        if not r and not w and deadline is not None and time.monotonic() >= deadline:
            return False
        return True

    def recv_some(self) -> int:
        """Read what the socket has without blocking; 0 if nothing.  EOF raises ConnectionLost."""
        if self.eof:
            raise ConnectionLost(CLOSED_UNEXPECTEDLY)
        free = len(self.buf) - self.wpos
        if free < RECV_CHUNK // 4:
            self._make_room(RECV_CHUNK)
            free = len(self.buf) - self.wpos
        try:
            with memoryview(self.buf) as mv:
                n = self.sock.recv_into(mv[self.wpos:], free)
        except (BlockingIOError, InterruptedError):
            return 0
        except ConnectionResetError:
            self.eof = True
            raise ConnectionLost(CLOSED_UNEXPECTEDLY) from None
        except OSError as e:
            self.eof = True
            raise ConnectionLost(f"could not receive data from server: {e.strerror}") from None
        if n == 0:
            self.eof = True
            raise ConnectionLost(CLOSED_UNEXPECTEDLY)
        self.wpos += n
        return n

    def _make_room(self, need: int) -> None:
        """Move unread bytes to the front; grow when one message needs more room."""
        live = self.wpos - self.rpos
        if self.rpos:
            self.buf[0:live] = self.buf[self.rpos:self.wpos]
            self.rpos, self.wpos = 0, live
        if len(self.buf) - self.wpos < need:
            self.buf.extend(bytes(max(need, len(self.buf))))

    def message_at(self) -> tuple[int, int] | None:
        """(type byte, total length incl. header) of the next complete message, or None."""
        avail = self.wpos - self.rpos
        if avail < 5:
            return None
        mtype, length = _HDR.unpack_from(self.buf, self.rpos)
        if length < 4 or length > 1 << 30:
            raise ProtocolViolation("invalid message length")
        total = 1 + length
        if avail < total:
            if len(self.buf) - self.rpos < total:
                self._make_room(total - (self.wpos - self.rpos))
            return None
        return mtype[0], total

    def read_message(self, deadline: float | None) -> tuple[bytes, bytes]:
        """Blocking (interruptible) read of one whole message: (type, body)."""
        while True:
            m = self.message_at()
            if m is not None:
                mtype, total = m
                body = bytes(self.buf[self.rpos + 5:self.rpos + total])
                self.rpos += total
                if self.rpos == self.wpos:
                    self.rpos = self.wpos = 0
                return bytes((mtype,)), body
            if self.recv_some():
                continue
            if not self.wait(False, deadline):
                raise TimeoutExpired("timeout expired")

    def send_raw(self, data: bytes, deadline: float | None) -> None:
        """Queue data and push everything out (interruptible, bounded by deadline)."""
        self.out += data
        while self.out:
            if self.flush_out():
                return
            if not self.wait(True, deadline):
                raise TimeoutExpired("timeout expired")

    def flush_out(self) -> bool:
        """Send what the socket takes now; True when nothing is left."""
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return False
            except (BrokenPipeError, ConnectionResetError):
                self.eof = True
                raise ConnectionLost(CLOSED_UNEXPECTEDLY) from None
            except OSError as e:
                raise ConnectionLost(f"could not send data to server: {e.strerror}") from None
            del self.out[:n]
        return True

    # ------------------------------------------------------------ queries
    def query(self, sql: str, deadline: float | None) -> list[Result]:
        """Simple query; results up to ReadyForQuery, or up to CopyBothResponse.

        An ErrorResponse raises ServerError once ReadyForQuery arrived (the
        connection stays usable), or at once if it came after CopyBoth.
        """
        if self.copy != "none":
            raise ProtocolViolation("another command is already in progress")
        self.send_raw(_msg(b"Q", sql.encode("utf-8") + b"\0"), deadline)
        return self.read_results(deadline)

    def read_results(self, deadline: float | None) -> list[Result]:
        results: list[Result] = []
        cur: Result | None = None
        error: dict[str, str] | None = None
        while True:
            mtype, body = self.read_message(deadline)
            if mtype == b"T":
                (n,) = struct.unpack_from("!H", body)
                pos, cols = 2, []
                for _ in range(n):
                    end = body.index(b"\0", pos)
                    cols.append(body[pos:end].decode("utf-8", "replace"))
                    pos = end + 1 + 18
                cur = Result("tuples", cols)
            elif mtype == b"D":
                if cur is None:
                    raise ProtocolViolation("server sent data (\"D\" message) without prior row description")
                cur.rows.append(_data_row(body))
            elif mtype == b"C":
                tag = body.rstrip(b"\0").decode("utf-8", "replace")
                if cur is None:
                    cur = Result("command")
                cur.tag = tag
                results.append(cur)
                cur = None
            elif mtype == b"I":
                results.append(Result("empty"))
            elif mtype == b"E":
                error = parse_error_fields(body)
                cur = None
            elif mtype == b"W":
                self.copy = "both"
                results.append(Result("copy_both"))
                return results
            elif mtype == b"Z":
                if error is not None:
                    raise ServerError(error)
                return results
            elif mtype == b"S":
                self._param_status(body)
            elif mtype in (b"N", b"A"):
                continue
            elif mtype in (b"d", b"c"):
                continue   # stray copy messages after a copy we left: ignore
            else:
                raise ProtocolViolation("unexpected response from server; first received character was "
                                        f'"{mtype.decode("latin-1")}"')

    # ------------------------------------------------------------ streaming
    def receive(self, on_xlogdata: Callable[[int, int, int, bytearray, int, int], None],
                on_keepalive: Callable[[int, int, bool], None], max_bytes: int) -> tuple[int, bool, bool]:
        """Process the CopyBoth messages that arrive without blocking (libpqrcv_receive, in a loop).

        on_xlogdata(data_start, wal_end, send_time, buf, offset, end) gets the
        payload as buf[offset:end] (valid only during the call); on_keepalive
        (wal_end, send_time, reply_requested).  Returns (messages, ended,
        more): ended when the server finished the copy (CopyDone, or
        CommandComplete such as a walsender's "COPY 0" at shutdown), more when
        it stopped at max_bytes with input possibly still waiting.
        """
        nmsg = 0
        nbytes = 0
        buf = self.buf
        while True:
            while True:
                m = self.message_at()
                if m is None:
                    break
                mtype, total = m
                buf = self.buf
                pos = self.rpos
                if mtype == 0x64:   # 'd' CopyData
                    kind = buf[pos + 5] if total > 5 else -1
                    if kind == 0x77:     # 'w' XLogData
                        if total < 5 + 1 + 24:
                            raise ProtocolViolation("invalid WAL message received from primary")
                        start, end, t = _XLOGDATA.unpack_from(buf, pos + 6)
                        on_xlogdata(start, end, t, buf, pos + 30, pos + total)
                        nbytes += total
                    elif kind == 0x6B:   # 'k' keepalive
                        if total < 5 + 1 + 17:
                            raise ProtocolViolation("invalid keepalive message received from primary")
                        wal_end, t, reply = _KEEPALIVE.unpack_from(buf, pos + 6)
                        on_keepalive(wal_end, t, bool(reply))
                    else:
                        raise ProtocolViolation(f"invalid replication message type {kind}")
                    nmsg += 1
                    self.rpos += total
                elif mtype == 0x63:  # 'c' CopyDone: the server has no more WAL for us
                    self.rpos += total
                    self.copy = "server_done"
                    return nmsg + 1, True, False
                elif mtype == 0x43:  # 'C' CommandComplete: the server left copy mode
                    self.rpos += total
                    self.copy = "ended"
                    return nmsg + 1, True, False
                elif mtype == 0x45:  # 'E'
                    fields = parse_error_fields(buf[pos + 5:pos + total])
                    self.rpos += total
                    self.copy = "ended"
                    raise ServerError(fields)
                elif mtype in (0x4E, 0x53, 0x41):   # N, S, A
                    if mtype == 0x53:
                        self._param_status(bytes(buf[pos + 5:pos + total]))
                    self.rpos += total
                else:
                    raise ProtocolViolation(f'unexpected message type "{chr(mtype)}" during COPY')
                if nbytes >= max_bytes:
                    return nmsg, False, True
            if self.rpos == self.wpos:
                self.rpos = self.wpos = 0
            if not self.recv_some():
                return nmsg, False, False

    def send_status(self, write: int, flush: int, apply: int, send_time: int, reply_requested: bool) -> None:
        """'r' standby status update (non-blocking; the rest goes out with later flushes)."""
        self.out += _msg(b"d", _REPLY.pack(b"r", write, flush, apply, send_time, 1 if reply_requested else 0))
        self.flush_out()

    def end_streaming(self, deadline: float | None) -> int:
        """libpqrcv_endstreaming: send CopyDone, read the next timeline (0 if none) and the end of the command.

        Errors carry PostgreSQL's full message ("could not send end-of-streaming
        message to primary: ...", "error reading result of streaming command: ...").
        """
        if self.copy == "ended":
            # The server left copy mode by itself (CommandComplete "COPY 0" when
            # its walsender shuts down): there is no COPY for our CopyDone.  As
            # libpq, first learn whether the server went away (EOF) or is idle.
            closed = ""
            try:
                while True:
                    mtype, _body = self.read_message(deadline)
                    if mtype == b"Z":
                        break
            except ConnectionLost:
                closed = CLOSED_UNEXPECTEDLY + "\n"
            except TimeoutExpired:
                pass
            self.copy = "none"
            raise ConnectionLost(f"could not send end-of-streaming message to primary: {closed}no COPY in progress")
        try:
            self.send_raw(_msg(b"c"), deadline)
        except (ConnectionLost, TimeoutExpired) as e:
            raise ConnectionLost(f"could not send end-of-streaming message to primary: {e}") from None
        self.copy = "none"
        next_tli = 0
        try:
            results = self.read_results(deadline)
        except (ServerError, ConnectionLost, TimeoutExpired) as e:
            raise WalRcvError(f"error reading result of streaming command: {e}") from None
        for r in results:
            if r.status == "tuples":
                if len(r.columns) < 2 or len(r.rows) != 1:
                    raise ProtocolViolation("unexpected result set after end-of-streaming")
                try:
                    next_tli = int(r.rows[0][0] or b"0")
                except ValueError:
                    raise ProtocolViolation("unexpected result set after end-of-streaming") from None
        return next_tli

    def _alive(self) -> bool:
        """Is the connection still usable (no EOF, nothing unexpected waiting)?"""
        if self.eof or self.closed:
            return False
        try:
            r, _, _ = select.select([self.fd], [], [], 0)
        except (OSError, ValueError):
            return False
        if r:
            self.recv_some()   # raises on EOF
        return True

    def usable(self) -> bool:
        """For reuse after the copy ended: alive, idle, and no unread input."""
        try:
            return self._alive() and self.copy == "none" and self.rpos == self.wpos
        except ConnectionLost:
            return False

    def close(self, terminate: bool = True) -> None:
        """libpqrcv_disconnect: Terminate ('X') if possible, then close."""
        if self.closed:
            return
        self.closed = True
        if terminate and not self.eof:
            try:
                self.sock.send(_msg(b"X"))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- helpers
def _msg(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


def _data_row(body: bytes) -> list[bytes | None]:
    (n,) = struct.unpack_from("!H", body)
    pos = 2
    row: list[bytes | None] = []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(bytes(body[pos:pos + ln]))
            pos += ln
    return row


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry
        return "postgres"


def _resolve(host: str, hostaddr: str | None, port: int, errors: list[str]) -> list[Target]:
    if host.startswith("/") and not hostaddr:
        return [Target(host, None, port, unix=True)]
    if hostaddr:
        return [Target(host, hostaddr, port)]
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as e:
        errors.append(f'could not translate host name "{host}" to address: {e.strerror}')
        return []
    out, seen = [], set()
    for fam, _t, _p, _c, sa in infos:
        if fam not in (socket.AF_INET, socket.AF_INET6) or sa[0] in seen:
            continue
        seen.add(sa[0])
        out.append(Target(host, sa[0], port))
    return out


def _open_socket(t: Target, deadline: float | None, interrupt_fds: list[int],
                 check_interrupts: Callable[[], None]) -> socket.socket:
    """Non-blocking connect, interruptible; ConnectError carries libpq's text after the identity prefix."""
    if t.unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr: object = t.socket_path()
        hint = _REFUSED_HINT_UNIX
    else:
        fam = socket.AF_INET6 if ":" in (t.addr or "") else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        addr = (t.addr, t.port)
        hint = _REFUSED_HINT_TCP
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setblocking(False)
    try:
        err = sock.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    _r, w, _ = select.select(list(interrupt_fds), [sock], [], timeout)
                except InterruptedError:
                    w = []
                check_interrupts()
                if w:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise ConnectError("timeout expired")
        if err:
            text = os.strerror(err)
            if err in (errno.ECONNREFUSED, errno.ENOENT):
                text += hint
            raise ConnectError(text)
    except BaseException:
        sock.close()
        raise
    return sock
