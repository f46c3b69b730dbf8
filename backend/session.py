"""One client connection inside the backend's event loop: the protocol state machine.

States::

    STARTUP ──StartupMessage──> READY ──'Q'──> RUNNING ──query done──> READY
       │  └─ replication=... ──> handed to the postmaster (HANDED_OFF)
       │  └─ CancelRequest / too many clients / shutting down ──> CLOSED
    RUNNING ──yields CommitWait──> WAITING (output held back) ──flushed+applied──> RUNNING
    any ──'X' / EOF / error / FATAL──> CLOSED

Who wakes it: the backend's selector (socket readable / writable) and the
backend's group commit (resumes WAITING sessions).  It owns its socket, its
input and output buffers and its ``sql.Session``; it never touches WAL
directly (the SQL session asks the backend, its ``Engine``).

Output written while a commit is in flight is held until the commit is
durable: a client never sees CommandComplete for a commit whose WAL is not
fsynced.  Input is not read while a query runs, nor while more than
``MAX_PENDING_OUTPUT`` bytes wait to be sent (back-pressure).
"""
from __future__ import annotations

import contextlib
import json
import secrets
import socket
import ssl
import threading
import time
from enum import Enum
from typing import Any, Protocol

from backend.activity import Activity, new_session_pid
from backend.clientauth import AuthOutcome, ClientAuth
from backend.extended import Extended
from backend.nodes import Stmt
from backend.parse import parse
from backend.sql import Session
from backend.startup_options import startup_settings
from backend.tlsrelay import Relay
from backend.waits import CommitWait, Panic, Terminate, ThreadJob, Until, Wait
from libpq import protocol as P
from libpq.protocol import ProtocolError, SQLError
from libpq.tls import TLSChannel
from storage.roles import RoleInfo
from utils import config as cfgmod
from utils import elog


class ConnectionOwner(Protocol):
    """What a connection needs of the loop that owns it (backend/backend.py's Backend)."""
    sleepers: list["Connection"]
    auth_waiters: list["Connection"]

    def queue_commit(self, conn: "Connection", wait: CommitWait) -> None: ...

    def forget(self, conn: "Connection") -> None: ...

    def wake(self) -> None: ...

log = elog.logger()

MAX_PENDING_OUTPUT = 4 << 20
AUTHENTICATION_TIMEOUT = 60.0          # PostgreSQL's authentication_timeout default
RECV_SIZE = 256 * 1024
MAX_AUTH_MESSAGE = 65535 + 5           # an authentication message, with its type and length
EXTENDED_MESSAGES = {b"P", b"B", b"D", b"E", b"C", b"S", b"H"}
# A Query longer than this is decoded and parsed in a thread, so that the loop goes on serving
# the other sessions meanwhile (bench/isolation.py: a 16 MiB statement and others' commits).
BIG_STATEMENT = 1 << 20


class ConnState(Enum):
    STARTUP = 1
    READY = 2
    CLOSED = 3
    RELAY = 4          # a replication connection over TLS: bytes relayed to a walsender (tlsrelay.py)


class Connection:
    def __init__(self, backend: ConnectionOwner, sock: socket.socket, addr: Any):
        self.backend = backend
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.state = ConnState.STARTUP
        self.startup = P.StartupParser()
        self.reader = P.MessageReader(P.FRONTEND_LIMITS)
        self.out = bytearray()
        self.session: Session | None = None
        self.gen = None                       # the running query (a generator)
        self.gen_ends_with_ready = True       # False for an Execute: ReadyForQuery comes at Sync
        self.extended: Extended | None = None
        self.wait: Wait | None = None
        self.discard_until_sync = False
        self.close_after_flush = False
        self.pid = new_session_pid()          # the session's pid (backend/activity.py), in BackendKeyData
        self.cancel_key = secrets.randbits(32)
        self.backend_start_us = time.time_ns() // 1000
        self.die_pending = False              # pg_terminate_backend while this session runs or commits
        self.born = time.monotonic()
        self.tls: TLSChannel | None = None      # after an SSLRequest answered 'S' (libpq/tls.py)
        self.raw_out = bytearray()              # bytes for the socket once TLS is on (self.out is plaintext)
        self.channel_binding_data: bytes | None = None   # tls-server-end-point, for SCRAM-SHA-256-PLUS
        self.relay: Relay | None = None         # a TLS replication connection's walsender side
        # Cancel and statement_timeout: the monotonic deadline of the running statement, and the
        # error to throw into it at its next wait (a single-process backend cannot interrupt code
        # that is running, only a statement that waits).
        self.statement_deadline: float | None = None
        self.interrupt: SQLError | None = None
        self.registered_mask = 0
        self.auth: ClientAuth | None = None   # between StartupMessage and AuthenticationOk
        self.auth_job: ThreadJob | None = None   # its password check (PBKDF2) running in a thread
        self.role: RoleInfo | None = None     # the authenticated role

    # ------------------------------------------------------------ helpers
    @property
    def closed(self) -> bool:
        return self.state == ConnState.CLOSED

    @property
    def busy(self) -> bool:
        return self.gen is not None

    def wants_read(self) -> bool:
        if self.relay is not None:
            return self.relay.client_wants_read()
        return (not self.closed and not self.close_after_flush and self.gen is None
                and self.auth_job is None and len(self.out) < MAX_PENDING_OUTPUT)

    def fatal(self, sqlstate: str, message: str) -> None:
        """FATAL to the client, then close once it is sent."""
        self.out += P.error_response(sqlstate, message, severity="FATAL")
        self.close_after_flush = True

    # ------------------------------------------------------------ input
    def on_readable(self) -> None:
        try:
            data = self.sock.recv(self.startup.wanted() if self.state == ConnState.STARTUP and self.tls is None
                                  else RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.tls is not None:
            try:
                data = self.tls.receive(data)
            except ssl.SSLError as e:
                log.info("could not accept SSL connection: %s", e.reason or e)
                # The alert OpenSSL wrote (protocol version, unknown CA, ...) goes out before the close, as
                # from PostgreSQL's backend, so the client says why rather than "unexpected eof".
                with contextlib.suppress(OSError):
                    self.sock.send(self.tls.take_output())
                self.close()
                return
            self.raw_out += self.tls.take_output()     # handshake records
            if self.relay is not None:
                self.relay.from_client(data)
                return
            if not data:
                return
        try:
            if self.state == ConnState.STARTUP and self.auth is not None:
                self.reader.feed(data)
                self.process_auth()
                return
            if self.state == ConnState.STARTUP:
                self.startup.ssl_available = self.backend.tls is not None and not self.startup.ssl_done
                self.startup.feed(data)
                if self.startup.start_tls:
                    self.begin_tls()
                    return
                if self.startup.replies:
                    self.out += self.startup.replies
                    self.startup.replies = bytearray()
                if self.startup.packet is not None:
                    leftover = bytes(self.startup.buf)
                    self.on_startup(self.startup.packet)
                    if self.state == ConnState.READY and leftover:
                        self.reader.feed(leftover)
                    elif self.auth is not None and leftover:
                        self.startup.buf.clear()          # now the reader's
                        self.reader.feed(leftover)
                        self.process_auth()
            else:
                self.reader.feed(data)
            self.process_messages()
        except P.StartupError as e:
            log.info("%s", e.message)
            self.out += self.startup.replies          # the 'N' to an SSLRequest before the bad packet
            self.startup.replies.clear()
            if e.to_client:
                self.fatal(e.sqlstate, e.message)
            else:
                self.close()
        except ProtocolError as e:
            if self.state == ConnState.STARTUP:
                log.info("%s", e)
                self.close()
            else:
                self.fatal("08P01", str(e))

    def begin_tls(self) -> None:
        """The 'S' to an SSLRequest goes out in clear; everything after it is TLS."""
        assert self.backend.tls is not None
        self.raw_out += self.startup.replies
        self.startup.replies = bytearray()
        self.startup.start_tls = False
        self.tls = TLSChannel(self.backend.tls[0])
        self.channel_binding_data = self.backend.tls[1]
        early, self.startup.buf = bytes(self.startup.buf), bytearray()
        if early:                    # a client that did not wait for the 'S'
            self.raw_out += self.tls.take_output() if not self.tls.receive(early) else b""

    @property
    def ssl_in_use(self) -> bool:
        return self.tls is not None and self.tls.handshaken

    @property
    def peer_cert_cn(self) -> str | None:
        return self.tls.peer_common_name() if self.ssl_in_use and self.tls is not None else None

    @property
    def peer_cert_verified(self) -> bool:
        return self.tls is not None and self.tls.peer_cert_verified()

    def on_startup(self, pkt: P.StartupPacket) -> None:
        b = self.backend
        if pkt.cancel is not None:
            # As PostgreSQL: no answer either way, the requester learns nothing.
            b.cancel_request(*pkt.cancel)
            self.close()
            return
        if b.shutdown_mode is not None:
            self.fatal("57P03", "the database system is shutting down")
            return
        if pkt.replication is None and b.session_count() >= b.config["max_connections"]:
            self.fatal("53300", "sorry, too many clients already")
            return
        store = getattr(b, "store", None)
        self.auth = ClientAuth(pkt, self.addr[0] if isinstance(self.addr, tuple) else None, self.ssl_in_use,
                               self.channel_binding_data, getattr(b, "hba", None),
                               store.conn if store is not None else None,
                               b.config["password_encryption"], self.peer_cert_cn)
        self.auth_step(self.auth.begin())

    def auth_check_done(self) -> bool:
        """The loop's poll of a password check in its thread; True once handled."""
        job = self.auth_job
        if job is None or self.closed:
            self.auth_job = None
            return True
        if not job.done.is_set():
            return False
        self.auth_job = None
        if self.auth is None:
            return True
        try:
            ok = bool(job.value())
        except Exception as e:  # noqa: BLE001 - a failed check is a failed login
            log.error("password check failed: %s", e)
            ok = False
        self.auth_step(self.auth.complete(ok))
        if self.state == ConnState.READY:
            self.process_messages()
        return True

    def process_auth(self) -> None:
        if len(self.reader.buf) > MAX_AUTH_MESSAGE:
            # PostgreSQL reads authentication messages with a 64 kB limit (PG_MAX_AUTH_TOKEN_LENGTH).
            self.auth = None
            self.fatal("08P01", "invalid message length")
            return
        while self.auth is not None and self.auth_job is None and not self.close_after_flush:
            m = self.reader.next()
            if m is None:
                return
            self.auth_step(self.auth.feed(*m))

    def auth_step(self, outcome: AuthOutcome | None) -> None:
        """Send what authentication produced; on its outcome refuse or finish the startup."""
        a = self.auth
        assert a is not None
        self.out += a.out
        a.out.clear()
        if outcome is None:
            check = a.deferred
            if check is not None and self.auth_job is None:
                # PBKDF2 releases the GIL: the loop serves the others meanwhile (auth_check_done).
                self.auth_job = ThreadJob(check, self.backend.wake, "password")
                self.backend.auth_waiters.append(self)
            return
        pkt = a.pkt
        self.auth = None
        if not outcome.ok:
            self.fatal(outcome.sqlstate, outcome.message)
            return
        self.role = outcome.role
        if pkt.replication is not None:
            if self.tls is not None:
                # A TLS session cannot follow the socket into the walsender process: relay it.
                early = bytes(self.startup.buf) + bytes(self.reader.buf)
                self.startup.buf.clear()
                self.reader.buf.clear()
                self.backend.hand_off_relayed(self, pkt, early)
            else:
                self.backend.hand_off(self, pkt)
            return
        self.finish_startup(pkt)

    def finish_startup(self, pkt: P.StartupPacket) -> None:
        b = self.backend
        role = self.role
        assert role is not None
        # superuser_reserved_connections needs the role: checked after authentication, as InitPostgres.
        refusal = slot_refusal(b.session_count(), b.config["max_connections"],
                               b.config.get("superuser_reserved_connections", 0), role.superuser)
        if refusal is not None:
            self.fatal("53300", refusal)
            return
        try:
            settings = startup_settings(pkt.params, role.superuser)
        except SQLError as e:
            log.info("%s", e.message)
            self.fatal(e.sqlstate, e.message)
            return
        self.session = Session(b, self.pid, pkt.params)
        self.session.gucs.update(settings)
        self.session.role = role
        self.session.check_interrupts = self.check_interrupts
        self.extended = Extended(self.session)
        self.state = ConnState.READY
        params = P.default_server_params(pkt.params.get("application_name", ""), in_hot_standby=b.in_recovery())
        params["is_superuser"] = "on" if role.superuser else "off"
        params["session_authorization"] = role.name
        self.out += P.startup_greeting(params, self.pid, self.cancel_key)

    def process_messages(self) -> None:
        while self.state == ConnState.READY and self.gen is None and not self.close_after_flush \
                and len(self.out) < MAX_PENDING_OUTPUT:
            # Called from the socket's readable event and also after a commit, a sleep or a
            # drained output buffer: a bad message must end this connection on every path,
            # never escape into the backend's loop.
            try:
                m = self.reader.next()
            except ProtocolError as e:
                self.fatal("08P01", str(e))
                return
            if m is None:
                return
            self.handle_message(*m)

    def handle_message(self, mtype: bytes, body: bytes) -> None:
        s = self.session
        assert s is not None
        if mtype == b"X":
            self.close()
            return
        if self.discard_until_sync:
            if mtype == b"S":
                self.discard_until_sync = False
                self.out += P.ready_for_query(s.status)
            return
        if mtype == b"Q" and len(body) > BIG_STATEMENT:
            self.start(self.big_query(body), ready=True)
        elif mtype == b"Q":
            try:
                text = P.parse_query(body)
            except SQLError as e:
                s._fail(e)
                self.out += s.out
                s.out.clear()
                self.out += P.ready_for_query(s.status)
                return
            self.start(s.run(text), ready=True)
        elif mtype in EXTENDED_MESSAGES:
            self.extended_message(mtype, body)
        elif mtype == b"F":
            s._fail(SQLError("0A000", "fastpath function calls are not supported"))
            self.out += s.out + P.ready_for_query(s.status)
            s.out.clear()
        elif mtype in (b"d", b"c", b"f", b"p"):
            pass   # stray COPY data; a password message after authentication
        else:
            self.fatal("08P01", f"invalid frontend message type {mtype[0]}")

    def extended_message(self, mtype: bytes, body: bytes) -> None:
        s, ext = self.session, self.extended
        assert s is not None and ext is not None
        try:
            gen = ext.handle(mtype, body)
        except SQLError as e:
            self.extended_error(e)
            return
        if gen is not None:
            self.start(gen, ready=mtype == b"S")
        else:
            self.out += s.out
            s.out.clear()

    def extended_error(self, e: SQLError) -> None:
        """An error in the extended protocol: report it, roll back, skip to the next Sync."""
        s, ext = self.session, self.extended
        assert s is not None and ext is not None
        s._fail(e)
        ext.after_error()
        self.out += s.out
        s.out.clear()
        self.discard_until_sync = True

    def start(self, gen: Any, ready: bool) -> None:
        self.start_statement()
        self.gen = gen
        self.gen_ends_with_ready = ready
        self.resume()

    # ------------------------------------------------------------ running a query
    def start_statement(self) -> None:
        timeout_ms = statement_timeout_ms(self.session, self.backend.config)
        self.statement_deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else None
        self.interrupt = None

    def big_query(self, body: bytes):
        """A very large Query: decode and parse in a thread (waiting as a sleeping statement,
        so cancel and statement_timeout apply), then run it on the loop as any other."""
        job = ParseJob(body, self.backend.wake)
        yield Until(job.done.is_set, float("inf"))
        if job.error is not None:
            raise job.error
        assert self.session is not None
        yield from self.session.run(job.text, job.stmts)

    def request_interrupt(self, sqlstate: str, message: str) -> None:
        """Cancel (57014) the running statement: at once if it waits (pg_sleep, pg_promote, a large
        statement being parsed, a long statement's pause), at its next ``check_interrupts`` if it is
        the one running now (its own pg_cancel_backend).  A statement waiting for its commit to be
        flushed is left alone: the commit record is already in WAL, as PostgreSQL's commit cannot be
        cancelled.
        """
        if self.gen is not None and self.wait is None and not self.closed:
            self.interrupt = SQLError(sqlstate, message)
            return
        if self.gen is None or self.closed or not isinstance(self.wait, Until):
            return
        self.interrupt = SQLError(sqlstate, message)
        if self in self.backend.sleepers:
            self.backend.sleepers.remove(self)
        self.resume()
        if self.gen is None:
            self.process_messages()

    def check_interrupts(self) -> None:
        """The session's CHECK_FOR_INTERRUPTS (sql.Session calls it): terminate, cancel, timeout."""
        if self.die_pending:
            raise Terminate()
        if self.interrupt is not None:
            err, self.interrupt = self.interrupt, None
            raise err
        if self.statement_deadline is not None and time.monotonic() >= self.statement_deadline:
            self.statement_deadline = None
            raise SQLError("57014", "canceling statement due to statement timeout")

    def terminate(self) -> None:
        """pg_terminate_backend: FATAL 57P01 and close; a session that runs now (it terminates
        itself) or waits for its commit's flush dies at its next check or once the commit is done."""
        if self.closed or self.close_after_flush:
            return
        if self.gen is not None and (self.wait is None or isinstance(self.wait, CommitWait)):
            self.die_pending = True
            return
        self.die()

    def die(self) -> None:
        """End the session as PostgreSQL's ProcessInterrupts on ProcDiePending: drop the running
        statement, roll back, FATAL 57P01; the connection closes once that is sent."""
        self.die_pending = False
        if self.gen is not None:
            gen, self.gen, self.wait = self.gen, None, None
            with contextlib.suppress(Exception):
                gen.close()
        if self in self.backend.sleepers:
            self.backend.sleepers.remove(self)
        self.statement_deadline = None
        if self.session is not None:
            self.session.out.clear()
            self.session.abort_all()
        log.info("terminating connection due to administrator command")
        self.fatal("57P01", "terminating connection due to administrator command")

    def activity(self) -> Activity | None:
        """This session's pg_stat_activity row (None before authentication ends)."""
        s = self.session
        if s is None or self.state != ConnState.READY or self.close_after_flush:
            return None
        role = self.role
        if self.gen is not None:
            state = "active"
        elif s.failed:
            state = "idle in transaction (aborted)"
        elif s.block:
            state = "idle in transaction"
        else:
            state = "idle"
        addr = self.addr if isinstance(self.addr, tuple) else (None, None)
        txn = s.txn
        return Activity(
            pid=self.pid, usename=role.name if role else None, superuser=bool(role and role.superuser),
            datname=s.params.get("database") or s.params.get("user"),
            application_name=s.gucs.get("application_name", ""), client_addr=addr[0], client_port=addr[1],
            backend_start_us=self.backend_start_us,
            xact_start_us=s.xact_start_us if (self.gen is not None or s.block) else None,
            query_start_us=s.query_start_us, state_change_us=s.state_change_us, state=state, query=s.query,
            usesysid=role.oid if role else None, backend_xid=txn.xid if txn is not None and txn.xid else None)

    def resume(self) -> None:
        """Advance the running query until it waits or ends."""
        s = self.session
        assert s is not None and self.gen is not None
        self.wait = None
        try:
            if self.interrupt is not None:
                err, self.interrupt = self.interrupt, None
                w = self.gen.throw(err)
            else:
                w = self.gen.send(None)
        except StopIteration:
            self.gen = None
            self.statement_deadline = None
            s.state_change_us = time.time_ns() // 1000
            if self.die_pending:
                self.die()
                return
            self.out += s.out
            s.out.clear()
            if self.gen_ends_with_ready:
                self.out += P.ready_for_query(s.status)
            return
        except Terminate:
            self.gen = None
            self.die()
            return
        except Panic:
            raise
        except Exception as e:  # noqa: BLE001 - a bug in one query must not take the others down
            self.gen = None
            self.statement_deadline = None
            s.state_change_us = time.time_ns() // 1000
            if not isinstance(e, SQLError):
                log.error("internal error while executing query: %s", e, exc_info=True)
                e = SQLError("XX000", f"internal error: {e}")
            if not self.gen_ends_with_ready:
                self.extended_error(e)
                return
            s._fail(e)
            self.out += s.out
            s.out.clear()
            self.out += P.ready_for_query(s.status)
            return
        self.wait = w
        if isinstance(w, CommitWait):
            # Hold the output back until the commit is durable.
            self.backend.queue_commit(self, w)
        else:
            self.out += s.out
            s.out.clear()
            if isinstance(w, Until):
                self.backend.sleepers.append(self)

    def after_commit(self) -> None:
        """The backend flushed and applied our commit: go on with the query."""
        if self.closed or self.gen is None:
            return
        if self.die_pending:
            self.die()
            return
        self.resume()
        if self.gen is None:
            self.process_messages()

    def check_until(self, now: float) -> bool:
        """Resume a sleeping query if its condition holds; True if it no longer sleeps."""
        w = self.wait
        if self.closed or not isinstance(w, Until):
            return True
        try:
            ready = now >= w.deadline or w.pred()
        except Exception:  # noqa: BLE001 - a broken predicate must not stop the loop
            ready = True
        if not ready:
            return False
        self.resume()
        if self.gen is None:
            self.process_messages()
        return not isinstance(self.wait, Until)

    # ------------------------------------------------------------ output
    def flush_out(self) -> None:
        if self.closed:
            return
        if self.tls is not None and self.tls.handshaken and self.out:
            self.tls.send(bytes(self.out))
            self.out.clear()
            self.raw_out += self.tls.take_output()
        pending = self.raw_out if self.tls is not None else self.out
        while pending:
            try:
                n = self.sock.send(pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            del pending[:n]
        if self.close_after_flush:
            self.close()
        elif self.gen is None and self.state == ConnState.READY and self.reader.buf:
            # Back-pressure released: go on with pipelined messages.
            self.process_messages()

    # ------------------------------------------------------------ end
    def close(self) -> None:
        if self.closed:
            return
        self.state = ConnState.CLOSED
        if self.gen is not None:
            try:
                self.gen.close()
            except Exception:  # noqa: BLE001
                pass
            self.gen = None
        if self.session is not None:
            try:
                self.session.abort_all()
            except Exception as e:  # noqa: BLE001 - WAL trouble surfaces at the next flush
                log.warning("could not abort transaction at disconnect: %s", e)
        self.backend.forget(self)
        if self.relay is not None:
            self.relay.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def detach(self) -> None:
        """Hand-off: forget the socket without touching the connection itself."""
        self.state = ConnState.CLOSED
        self.backend.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass


class ParseJob:
    """Decode and parse one Query body in a daemon thread; ``done`` is set and the owner's loop
    woken when ``text``/``stmts`` or ``error`` are ready.  Parsing touches no shared state."""

    def __init__(self, body: bytes, wake: Any):
        self.body = body
        self.wake = wake
        self.text = ""
        self.stmts: list[Stmt] | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        threading.Thread(target=self.work, name="parse", daemon=True).start()

    def work(self) -> None:
        try:
            self.text = P.parse_query(self.body)
            self.stmts = parse(self.text)
        except Exception as e:  # noqa: BLE001 - reported to the client by the statement
            self.error = e
        finally:
            self.body = b""
            self.done.set()
            with contextlib.suppress(Exception):
                self.wake()


def slot_refusal(sessions: int, max_connections: int, reserved: int, superuser: bool) -> str | None:
    """PostgreSQL's two connection-slot checks (InitPostgres, InitProcess); None = admitted."""
    if sessions >= max_connections:
        return "sorry, too many clients already"
    if not superuser and reserved > 0 and sessions >= max_connections - reserved:
        return "remaining connection slots are reserved for non-replication superuser connections"
    return None


def statement_timeout_ms(session: Session | None, config: Any) -> int:
    """The session's SET statement_timeout, else the server's; 0 = none."""
    raw = getattr(session, "gucs", {}).get("statement_timeout") if session is not None else None
    if raw is not None:
        try:
            return int(cfgmod.convert(cfgmod.SETTINGS["statement_timeout"], str(raw)))
        except (cfgmod.ConfigError, KeyError):
            pass
    return int(config.get("statement_timeout", 0) or 0)


ROLE_KEYS = ("walswitch.role", "walswitch.role_superuser", "walswitch.role_replication")


def handoff_payload(pkt: P.StartupPacket, role: RoleInfo | None = None,
                    peer: tuple[str, int] | None = None) -> bytes:
    """The startup parameters and the authenticated role for the walsender (first line, JSON); for a
    relayed (TLS) connection also the client's address on a second line, since the walsender's socket
    is then one end of a socketpair.

    The role keys are always set here, never taken from the client: a client-sent
    ``walswitch.role*`` option is dropped so that it cannot claim a role.
    """
    params = {k: v for k, v in pkt.params.items() if not k.startswith("walswitch.role")}
    if role is not None:
        params.update(dict(zip(ROLE_KEYS, (role.name, "on" if role.superuser else "off",
                                           "on" if role.replication else "off"))))
    out = json.dumps(params).encode() + b"\n"
    if peer is not None:
        out += json.dumps({"peer": [str(peer[0]), int(peer[1])], "ssl": True}).encode() + b"\n"
    return out
