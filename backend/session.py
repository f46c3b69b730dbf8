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

import json
import os
import random
import socket
import time
from enum import Enum
from typing import Any, Protocol

from backend.clientauth import AuthOutcome, ClientAuth
from backend.sql import CommitWait, Panic, Session, Until, Wait
from libpq import protocol as P
from libpq.protocol import ProtocolError, SQLError
from storage.roles import RoleInfo
from utils import elog


class ConnectionOwner(Protocol):
    """What a connection needs of the loop that owns it (backend/backend.py's Backend)."""
    sleepers: list["Connection"]

    def queue_commit(self, conn: "Connection", wait: CommitWait) -> None: ...

    def forget(self, conn: "Connection") -> None: ...

log = elog.logger()

MAX_PENDING_OUTPUT = 4 << 20
AUTHENTICATION_TIMEOUT = 60.0          # PostgreSQL's authentication_timeout default
RECV_SIZE = 256 * 1024
MAX_AUTH_MESSAGE = 65535 + 5           # an authentication message, with its type and length
EXTENDED_MESSAGES = {b"P", b"B", b"E", b"D", b"C", b"F"}


class ConnState(Enum):
    STARTUP = 1
    READY = 2
    CLOSED = 3


class Connection:
    def __init__(self, backend: ConnectionOwner, sock: socket.socket, addr: Any):
        self.backend = backend
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.state = ConnState.STARTUP
        self.startup = P.StartupParser()
        self.reader = P.MessageReader()
        self.out = bytearray()
        self.session: Session | None = None
        self.gen = None                       # the running query (a generator)
        self.wait: Wait | None = None
        self.discard_until_sync = False
        self.close_after_flush = False
        self.cancel_key = random.getrandbits(31)
        self.born = time.monotonic()
        self.registered_mask = 0
        self.ssl_in_use = False               # set by TLS (helper tls)
        self.channel_binding_data: bytes | None = None   # tls-server-end-point hash
        self.auth: ClientAuth | None = None   # between StartupMessage and AuthenticationOk
        self.role: RoleInfo | None = None     # the authenticated role

    # ------------------------------------------------------------ helpers
    @property
    def closed(self) -> bool:
        return self.state == ConnState.CLOSED

    @property
    def busy(self) -> bool:
        return self.gen is not None

    def wants_read(self) -> bool:
        return (not self.closed and not self.close_after_flush and self.gen is None
                and len(self.out) < MAX_PENDING_OUTPUT)

    def fatal(self, sqlstate: str, message: str) -> None:
        """FATAL to the client, then close once it is sent."""
        self.out += P.error_response(sqlstate, message, severity="FATAL")
        self.close_after_flush = True

    # ------------------------------------------------------------ input
    def on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        try:
            if self.state == ConnState.STARTUP and self.auth is not None:
                self.reader.feed(data)
                self.process_auth()
                return
            if self.state == ConnState.STARTUP:
                self.startup.feed(data)
                if self.startup.replies:
                    self.out += self.startup.replies
                    self.startup.replies = bytearray()
                if self.startup.packet is not None:
                    leftover = bytes(self.startup.buf)
                    self.on_startup(self.startup.packet)
                    if self.state == ConnState.READY and leftover:
                        self.reader.feed(leftover)
                    elif self.auth is not None and leftover:
                        self.reader.feed(leftover)
                        self.process_auth()
            else:
                self.reader.feed(data)
            self.process_messages()
        except ProtocolError as e:
            if self.state == ConnState.STARTUP:
                log.info("%s", e)
                self.close()
            else:
                self.fatal("08P01", str(e))

    def on_startup(self, pkt: P.StartupPacket) -> None:
        b = self.backend
        if pkt.cancel is not None:
            # We serve every session in one process; a cancel cannot interrupt anything.
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
                               b.config["password_encryption"])
        self.auth_step(self.auth.begin())

    def process_auth(self) -> None:
        if len(self.reader.buf) > MAX_AUTH_MESSAGE:
            # PostgreSQL reads authentication messages with a 64 kB limit (PG_MAX_AUTH_TOKEN_LENGTH).
            self.auth = None
            self.fatal("08P01", "invalid message length")
            return
        while self.auth is not None and not self.close_after_flush:
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
            return
        pkt = a.pkt
        self.auth = None
        if not outcome.ok:
            self.fatal(outcome.sqlstate, outcome.message)
            return
        self.role = outcome.role
        if pkt.replication is not None:
            self.backend.hand_off(self, pkt)
            return
        self.finish_startup(pkt)

    def finish_startup(self, pkt: P.StartupPacket) -> None:
        b = self.backend
        role = self.role
        assert role is not None
        self.session = Session(b, os.getpid(), pkt.params)
        self.session.role = role
        self.state = ConnState.READY
        params = P.default_server_params(pkt.params.get("application_name", ""), in_hot_standby=b.in_recovery())
        params["is_superuser"] = "on" if role.superuser else "off"
        params["session_authorization"] = role.name
        self.out += P.startup_greeting(params, os.getpid(), self.cancel_key)

    def process_messages(self) -> None:
        while self.state == ConnState.READY and self.gen is None and not self.close_after_flush \
                and len(self.out) < MAX_PENDING_OUTPUT:
            m = self.reader.next()
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
        if mtype == b"Q":
            self.gen = s.run(P.parse_query(body))
            self.resume()
        elif mtype == b"S":
            self.out += P.ready_for_query(s.status)
        elif mtype in EXTENDED_MESSAGES:
            s._fail(SQLError("0A000", "extended query protocol is not supported",
                             hint="Use the simple query protocol (e.g. pgbench -M simple)."))
            self.out += s.out
            s.out.clear()
            self.discard_until_sync = True
        elif mtype in (b"H", b"d", b"c", b"f", b"p"):
            pass   # Flush; stray COPY data; a password message after authentication
        else:
            self.fatal("08P01", f"invalid frontend message type {mtype[0]}")

    # ------------------------------------------------------------ running a query
    def resume(self) -> None:
        """Advance the running query until it waits or ends."""
        s = self.session
        assert s is not None and self.gen is not None
        self.wait = None
        try:
            w = self.gen.send(None)
        except StopIteration:
            self.gen = None
            self.out += s.out
            s.out.clear()
            self.out += P.ready_for_query(s.status)
            return
        except Panic:
            raise
        except Exception as e:  # noqa: BLE001 - a bug in one query must not take the others down
            log.error("internal error while executing query: %s", e, exc_info=True)
            self.gen = None
            s._fail(e if isinstance(e, SQLError) else SQLError("XX000", f"internal error: {e}"))
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
        if self.closed:
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
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            del self.out[:n]
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


ROLE_KEYS = ("walswitch.role", "walswitch.role_superuser", "walswitch.role_replication")


def handoff_payload(pkt: P.StartupPacket, role: RoleInfo | None = None) -> bytes:
    """The startup parameters and the authenticated role for the walsender (first line, JSON).

    The role keys are always set here, never taken from the client: a client-sent
    ``walswitch.role*`` option is dropped so that it cannot claim a role.
    """
    params = {k: v for k, v in pkt.params.items() if not k.startswith("walswitch.role")}
    if role is not None:
        params.update(dict(zip(ROLE_KEYS, (role.name, "on" if role.superuser else "off",
                                           "on" if role.replication else "off"))))
    return json.dumps(params).encode() + b"\n"
