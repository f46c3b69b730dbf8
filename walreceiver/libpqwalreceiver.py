"""The walreceiver's replication connection: real libpq through psycopg 3's ``psycopg.pq`` (libpqwalreceiver.c).

libpq does the connection: conninfo strings and URIs, several hosts, the
password from conninfo, ``PGPASSWORD``, ``passfile`` / ``PGPASSFILE`` /
``~/.pgpass`` (looked up with database ``replication``, as PostgreSQL's
walreceiver does), SCRAM-SHA-256 with ``channel_binding``, MD5, ``sslmode``
disable..verify-full with ``sslrootcert``, ``sslcert``/``sslkey``,
``connect_timeout``, ``keepalives*``, ``application_name`` (falling back to
``cluster_name`` or ``walreceiver``, as ``fallback_application_name``).  Our
code is only the replication messages, decoded and encoded by the shared
codec (libpq/protocol.py), and the waiting.

Entry points, in the order the walreceiver calls them:
  ``WalRcvConn.connect``   PQconnectStart + PQconnectPoll, waiting with select
                           on the socket and the caller's ``interrupt_fds``;
  ``query``                PQsendQuery, then results (IDENTIFY_SYSTEM,
                           TIMELINE_HISTORY, START_REPLICATION up to CopyBoth);
  ``receive``              PQgetCopyData(async) / PQconsumeInput until the
                           socket is drained: XLogData and keepalives to the
                           caller's callbacks, zero-copy (a view of libpq's
                           buffer); the end of the copy is reported;
  ``send_status``          'r' by PQputCopyData + PQflush (non-blocking);
  ``end_streaming``        PQputCopyEnd, the next timeline's result set;
  ``close``                PQfinish.
Every wait is ``select`` on libpq's socket plus ``interrupt_fds`` (the
postmaster-death pipe and the signal self-pipe), then ``check_interrupts``
(which raises to leave): shutdown and postmaster death never wait behind a
silent network.  Error texts are libpq's ``PQerrorMessage`` after pchomp, so
the walreceiver's lines read as PostgreSQL's (``could not connect to the
primary server: connection to server at ... failed: ...``).

Measured against the hand-written socket/SCRAM client this replaced
(``python -m bench.stream_receive``, PostgreSQL 15's walsender, medians of 3,
same machine, old then new): catch-up of 277 MB, 128 kB XLogData messages,
2096 -> 2033 MB/s (within run-to-run noise), 29.6 -> 27.8 µs CPU per message;
small messages under pgbench, 36.5 -> 31.2 µs CPU per message, send-to-receive
latency p50 52 -> 50 µs, p99 296 -> 164 µs; a walswitch standby catching up
400 MB from a walswitch primary, 186 -> 198 MB/s while streaming.  No reason
to keep our own socket code.
"""
from __future__ import annotations

import os
import re
import select
import time
from dataclasses import dataclass, field
from typing import Callable

import psycopg
from psycopg import pq

from libpq import protocol as P
from utils import elog

log = elog.logger()

_OK = pq.ConnStatus.OK
_BAD = pq.ConnStatus.BAD
_POLL_OK = pq.PollingStatus.OK
_POLL_FAILED = pq.PollingStatus.FAILED
_POLL_READING = pq.PollingStatus.READING
_X = P.XLOGDATA_KIND
_K = P.KEEPALIVE_KIND
_PAYLOAD = P.XLOGDATA_PAYLOAD
_decode_xlog_data = P.decode_xlog_data

# libpq's options shown as "********" (dispchar "*") or never shown (dispchar "D").
SECRET_OPTIONS = ("password", "sslpassword", "oauth_client_secret")
MASK = "********"


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
    """An ErrorResponse; ``fields`` maps the field codes (S, C, M, D, H) that libpq kept."""

    def __init__(self, text: str, fields: dict[str, str] | None = None):
        self.fields = fields or {}
        super().__init__(text)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


def _chomp(b: bytes | str | None) -> str:
    s = b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")
    return s[:-1] if s.endswith("\n") else s


_FIELDS = {"S": pq.DiagnosticField.SEVERITY, "C": pq.DiagnosticField.SQLSTATE,
           "M": pq.DiagnosticField.MESSAGE_PRIMARY, "D": pq.DiagnosticField.MESSAGE_DETAIL,
           "H": pq.DiagnosticField.MESSAGE_HINT}


def _fields(res: pq.abc.PGresult) -> dict[str, str]:
    out = {}
    for code, f in _FIELDS.items():
        v = res.error_field(f)
        if v is not None:
            out[code] = v.decode("utf-8", "replace")
    return out


# ---------------------------------------------------------------- conninfo
def parse_conninfo(conninfo: str) -> dict[str, str]:
    """PQconninfoParse: ``key=value ...`` or a ``postgresql://`` URI; the options given, nothing defaulted."""
    try:
        opts = pq.Conninfo.parse(conninfo.encode("utf-8"))
    except psycopg.Error as e:
        raise ConnInfoError(scrub(_chomp(str(e)), conninfo)) from None
    return {o.keyword.decode(): o.val.decode("utf-8", "replace") for o in opts if o.val is not None}


def scrub(text: str, conninfo: str) -> str:
    """text without any secret of conninfo (libpq may quote a URI's bad token, password included)."""
    secrets = set(re.findall(r"(?:password|sslpassword|oauth_client_secret)\s*=\s*'((?:[^'\\]|\\.)*)'", conninfo))
    secrets |= set(re.findall(r"(?:password|sslpassword|oauth_client_secret)\s*=\s*([^'\s]\S*)", conninfo))
    secrets |= set(re.findall(r"^\w+://[^:/@]*:([^@/]*)@", conninfo.strip()))
    for s in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


def _quote(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replication_conninfo(conninfo: str, appname: str) -> str:
    """libpqrcv_connect's keywords: the user's options, then replication=true, dbname=replication (which is
    also the database a passfile line must name) and fallback_application_name."""
    opts = parse_conninfo(conninfo)
    opts.update(replication="true", dbname="replication", fallback_application_name=appname)
    return " ".join(f"{k}={_quote(v)}" for k, v in opts.items())


def masked_conninfo(opts: dict[str, str]) -> str:
    """What PostgreSQL shows as pg_stat_wal_receiver.conninfo: effective options, secrets hidden."""
    order = ("user", "password", "dbname", "host", "hostaddr", "port", "application_name",
             "fallback_application_name", "connect_timeout", "keepalives", "keepalives_idle",
             "keepalives_interval", "keepalives_count", "sslmode", "gssencmode", "target_session_attrs")
    parts = []
    for k in order + tuple(k for k in opts if k not in order):
        v = opts.get(k)
        if v is None or v == "" or (parts and any(p.startswith(k + "=") for p in parts)):
            continue
        if k in SECRET_OPTIONS:
            v = MASK
        if any(c.isspace() or c in "'\\" for c in v):
            v = _quote(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


def _effective_options(pgconn: pq.PGconn) -> dict[str, str]:
    """PQconninfo of the live connection, libpq's order; debug options left out, secrets masked."""
    out = {}
    for o in pgconn.info:
        if o.val is None or not o.val or b"D" in o.dispchar:
            continue
        k = o.keyword.decode()
        out[k] = MASK if (b"*" in o.dispchar or k in SECRET_OPTIONS) else o.val.decode("utf-8", "replace")
    return out


@dataclass
class Target:
    """The server we are connected to: PQhost / PQport (pg_stat_wal_receiver's sender_host/port)."""
    host: str
    port: int


# ---------------------------------------------------------------- results
@dataclass
class Result:
    """One result of a query: tuples (with columns/rows), a command, or CopyBoth."""
    status: str                                   # "tuples", "command", "copy_both", "empty"
    columns: list[str] = field(default_factory=list)
    rows: list[list[bytes | None]] = field(default_factory=list)
    tag: str = ""


def _result(res: pq.abc.PGresult, status: str) -> Result:
    cols = [(res.fname(i) or b"").decode("utf-8", "replace") for i in range(res.nfields)]
    rows = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
    return Result(status, cols, rows, (res.command_status or b"").decode("utf-8", "replace"))


# ---------------------------------------------------------------- the connection
class WalRcvConn:
    """One replication connection.  Not thread-safe; one owner."""

    def __init__(self, pgconn: pq.PGconn, interrupt_fds: list[int], check_interrupts: Callable[[], None]):
        self.pgconn = pgconn
        self.fd = pgconn.socket                 # fixed once connected
        self.interrupt_fds = list(interrupt_fds)
        self.check_interrupts = check_interrupts
        self.target = Target(_chomp(pgconn.host), int(pgconn.port or 0))
        self.opts = _effective_options(pgconn)  # masked: never holds a secret
        self.copy = "none"     # none | both | server_done (CopyDone) | ended (CommandComplete/error)
        self.closed = False
        self.pending_out = False                # libpq holds output the socket has not taken yet
        # Over TLS, one PQconsumeInput may leave part of a record that is larger than libpq's free
        # buffer space inside OpenSSL, where select on the socket cannot see it (PostgreSQL's own
        # server writes 8 kB records, other servers up to 16 kB): ask again before sleeping.
        self.consume_tries = 3 if pgconn.ssl_in_use else 1
        pgconn.notice_handler = self._notice
        pgconn.nonblocking = 1

    @property
    def out(self) -> bool:
        """True while libpq still holds output for the socket (the walreceiver then waits for writability)."""
        return self.pending_out

    @property
    def backend_pid(self) -> int:
        return self.pgconn.backend_pid

    @staticmethod
    def _notice(res: pq.abc.PGresult) -> None:
        log.info("received message via replication: %s", _chomp(res.error_message))

    # ------------------------------------------------------------ connecting
    @classmethod
    def connect(cls, conninfo: str, appname: str, *, deadline: float | None,
                interrupt_fds: list[int], check_interrupts: Callable[[], None]) -> "WalRcvConn":
        """libpqrcv_connect: a physical replication connection, non-blocking and interruptible."""
        full = replication_conninfo(conninfo, appname)
        deadline = _connect_deadline(parse_conninfo(conninfo), deadline)
        pgconn = pq.PGconn.connect_start(full.encode("utf-8"))
        try:
            status = _POLL_FAILED if pgconn.status == _BAD else pq.PollingStatus.WRITING
            while status not in (_POLL_OK, _POLL_FAILED):
                fd = pgconn.socket
                want_read = status == _POLL_READING
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    r, w, _ = select.select([fd, *interrupt_fds] if want_read else list(interrupt_fds),
                                            [] if want_read else [fd], [], timeout)
                except InterruptedError:
                    r, w = [], []
                check_interrupts()
                if fd in r or fd in w:
                    status = pgconn.connect_poll()
                elif deadline is not None and time.monotonic() >= deadline:
                    raise ConnectError(scrub(_timeout_text(pgconn), conninfo))
            if status == _POLL_FAILED:
                raise ConnectError(scrub(_chomp(pgconn.error_message), conninfo))
            return cls(pgconn, interrupt_fds, check_interrupts)
        except BaseException:
            pgconn.finish()
            raise

    # ------------------------------------------------------------ waiting
    def wait(self, want_write: bool, deadline: float | None) -> None:
        """Sleep until the socket is ready (or an interrupt fd fires); TimeoutExpired at the deadline."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            r, w, _ = select.select([self.fd, *self.interrupt_fds], [self.fd] if want_write else [], [], timeout)
        except InterruptedError:
            r, w = [], []
        self.check_interrupts()
        if not r and not w and deadline is not None and time.monotonic() >= deadline:
            raise TimeoutExpired("timeout expired")

    def _lost(self, prefix: str = "") -> ConnectionLost:
        return ConnectionLost(prefix + _chomp(self.pgconn.error_message))

    def flush_out(self) -> bool:
        """PQflush: send what the socket takes now; True when nothing is left."""
        try:
            self.pending_out = self.pgconn.flush() == 1
        except psycopg.OperationalError:
            raise self._lost() from None
        return not self.pending_out

    def _flush_all(self, deadline: float | None) -> None:
        while not self.flush_out():
            self.wait(True, deadline)

    def get_result(self, deadline: float | None) -> pq.abc.PGresult | None:
        """libpqrcv_PQgetResult: PQgetResult without blocking in libpq (we wait, interruptibly)."""
        pg = self.pgconn
        while True:
            try:
                pg.consume_input()
            except psycopg.OperationalError:
                if pg.status == _BAD:
                    return pg.get_result()     # libpq's FATAL_ERROR result for the lost connection
                raise self._lost() from None
            if not pg.is_busy():
                return pg.get_result()
            self.wait(False, deadline)

    # ------------------------------------------------------------ queries
    def query(self, sql: str, deadline: float | None) -> list[Result]:
        """A simple query; results until the end, or up to CopyBoth.

        An ErrorResponse raises ServerError once the command ended (the
        connection stays usable); a lost connection raises ConnectionLost.
        """
        if self.copy != "none":
            raise ProtocolViolation("another command is already in progress")
        try:
            self.pgconn.send_query(sql.encode("utf-8"))
        except psycopg.OperationalError:
            raise self._lost() from None
        self._flush_all(deadline)
        results: list[Result] = []
        error: ServerError | None = None
        while True:
            res = self.get_result(deadline)
            if res is None:
                break
            st = res.status
            if st == pq.ExecStatus.TUPLES_OK:
                results.append(_result(res, "tuples"))
            elif st == pq.ExecStatus.COMMAND_OK:
                results.append(_result(res, "command"))
            elif st == pq.ExecStatus.EMPTY_QUERY:
                results.append(Result("empty"))
            elif st == pq.ExecStatus.COPY_BOTH:
                self.copy = "both"
                results.append(Result("copy_both"))
                return results
            elif self.pgconn.status == _BAD:
                raise ConnectionLost(_chomp(res.error_message) or _chomp(self.pgconn.error_message))
            elif st == pq.ExecStatus.FATAL_ERROR:
                error = error or ServerError(_chomp(res.error_message), _fields(res))
            else:
                raise ProtocolViolation(f"unexpected result status {pq.ExecStatus(st).name}")
        if error is not None:
            raise error
        return results

    # ------------------------------------------------------------ streaming
    def receive(self, on_xlogdata: Callable[[int, int, int, memoryview, int, int], None],
                on_keepalive: Callable[[int, int, bool], None], max_bytes: int) -> tuple[int, bool, bool]:
        """libpqrcv_receive, in a loop: process what arrived without blocking.

        on_xlogdata(data_start, wal_end, send_time, buf, offset, end) gets the
        payload as buf[offset:end] (a view of libpq's buffer, valid only during
        the call); on_keepalive(wal_end, send_time, reply_requested).  Returns
        (messages, ended, more): ended when the server finished the copy
        (CopyDone, or CommandComplete such as a walsender's "COPY 0" at
        shutdown), more when it stopped at max_bytes with input possibly waiting.
        """
        pg = self.pgconn
        get = pg.get_copy_data
        nmsg = nbytes = 0
        consumed = 0
        while True:
            try:
                n, buf = get(1)
            except psycopg.OperationalError:
                raise self._lost() from None
            if n > 0:
                consumed = 0
                kind = buf[0]
                if kind == _X:
                    try:
                        start, wal_end, send_time = _decode_xlog_data(buf)
                    except P.ProtocolError as e:
                        raise ProtocolViolation(str(e)) from None
                    on_xlogdata(start, wal_end, send_time, buf, _PAYLOAD, n)
                    nbytes += n
                elif kind == _K:
                    try:
                        k = P.decode_keepalive(buf)
                    except P.ProtocolError as e:
                        raise ProtocolViolation(str(e)) from None
                    on_keepalive(k.wal_end, k.send_time, k.reply_requested)
                else:
                    raise ProtocolViolation(f"invalid replication message type {kind}")
                nmsg += 1
                if nbytes >= max_bytes:
                    return nmsg, False, True
            elif n == 0:
                if consumed >= self.consume_tries:
                    return nmsg, False, False
                try:
                    pg.consume_input()
                except psycopg.OperationalError:
                    raise self._lost() from None
                consumed += 1
            else:
                self._copy_ended()
                return nmsg + 1, True, False

    def _copy_ended(self) -> None:
        """PQgetCopyData said -1: the server ended the copy.  Which way, as libpqrcv_receive tells it."""
        deadline = time.monotonic() + 60.0
        try:
            res = self.get_result(deadline)
        except TimeoutExpired:
            raise ConnectionLost("timeout expired reading the end of the WAL stream") from None
        st = res.status if res is not None else pq.ExecStatus.FATAL_ERROR
        if st == pq.ExecStatus.COPY_IN:
            self.copy = "server_done"        # CopyDone: the server has no more WAL for us
            return
        self.copy = "ended"
        if st == pq.ExecStatus.COMMAND_OK:
            try:
                extra = self.get_result(deadline)
            except TimeoutExpired:
                extra = None
            if extra is not None and self.pgconn.status != _BAD:
                raise ProtocolViolation("unexpected result after CommandComplete: "
                                        + _chomp(self.pgconn.error_message))
            return
        if self.pgconn.status == _BAD or res is None:
            raise self._lost()
        raise ServerError(_chomp(res.error_message), _fields(res))

    def send_status(self, write: int, flush: int, apply: int, send_time: int, reply_requested: bool) -> None:
        """'r' standby status update (non-blocking; what the socket does not take goes with later flushes)."""
        data = P.standby_status(write, flush, apply, send_time, reply_requested)
        try:
            if self.pgconn.put_copy_data(data) == 0:     # libpq's buffer full: push, then queue again
                self.flush_out()
                self.pgconn.put_copy_data(data)
        except psycopg.OperationalError:
            raise self._lost() from None
        self.flush_out()

    def end_streaming(self, deadline: float | None) -> int:
        """libpqrcv_endstreaming: CopyDone, then the next timeline (0 if none) and the end of the command.

        Errors carry PostgreSQL's full message ("could not send end-of-streaming
        message to primary: ...", "error reading result of streaming command: ...").
        """
        sent = self.copy != "ended"
        if sent:
            try:
                self.pgconn.put_copy_end()
                self._flush_all(deadline)
            except psycopg.OperationalError:
                sent = False
            except (ConnectionLost, TimeoutExpired):
                sent = False
        else:
            try:
                self.pgconn.put_copy_end()       # libpq says why not: "no COPY in progress"
            except psycopg.OperationalError:
                pass
        if not sent:
            self.copy = "none"
            raise self._lost("could not send end-of-streaming message to primary: ")
        self.copy = "none"
        next_tli = 0
        try:
            res = self.get_result(deadline)
            if res is not None and res.status == pq.ExecStatus.TUPLES_OK:
                if res.nfields < 2 or res.ntuples != 1:
                    raise ProtocolViolation("unexpected result set after end-of-streaming")
                try:
                    next_tli = int(res.get_value(0, 0) or b"0")
                except ValueError:
                    raise ProtocolViolation("unexpected result set after end-of-streaming") from None
                res = self.get_result(deadline)
            if res is None or res.status != pq.ExecStatus.COMMAND_OK:
                text = _chomp(res.error_message) if res is not None else ""
                raise WalRcvError("error reading result of streaming command: "
                                  + (text or _chomp(self.pgconn.error_message)))
            if self.get_result(deadline) is not None:
                raise ProtocolViolation("unexpected result after CommandComplete: "
                                        + _chomp(self.pgconn.error_message))
        except (ConnectionLost, TimeoutExpired) as e:
            raise WalRcvError(f"error reading result of streaming command: {e}") from None
        return next_tli

    def usable(self) -> bool:
        """For reuse after the copy ended: alive, idle, and no unread input."""
        if self.closed or self.copy != "none":
            return False
        try:
            self.pgconn.consume_input()
        except psycopg.OperationalError:
            return False
        return (self.pgconn.status == _OK and not self.pgconn.is_busy()
                and self.pgconn.transaction_status == pq.TransactionStatus.IDLE)

    def close(self, terminate: bool = True) -> None:
        """libpqrcv_disconnect: PQfinish (a Terminate message if the socket still takes it, then close)."""
        if self.closed:
            return
        self.closed = True
        self.pgconn.finish()


# ---------------------------------------------------------------- helpers
def _connect_deadline(opts: dict[str, str], deadline: float | None) -> float | None:
    """connect_timeout (or PGCONNECT_TIMEOUT, at least 2 s as libpq) bounds the whole attempt: libpq's
    non-blocking connect leaves the timing to its caller."""
    raw = opts.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT") or ""
    try:
        ct = int(raw)
    except ValueError:
        return deadline
    if ct <= 0:
        return deadline
    d = time.monotonic() + max(ct, 2)
    return d if deadline is None else min(deadline, d)


def _timeout_text(pgconn: pq.PGconn) -> str:
    """libpq's words for an attempt that ran out of time: its text so far (which already names the host
    being tried, "connection to server at ... failed: ") and "timeout expired", as connectDBComplete says."""
    so_far = pgconn.error_message.decode("utf-8", "replace")
    if so_far.endswith("failed: "):
        return so_far + "timeout expired"
    try:
        here = f'connection to server at "{_chomp(pgconn.host)}", port {_chomp(pgconn.port)} failed: timeout expired'
    except psycopg.Error:
        here = "timeout expired"
    return f"{_chomp(so_far)}\n{here}" if so_far.strip() else here
