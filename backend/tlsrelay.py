"""Replication over TLS: the backend relays a walsender's plaintext through the client's TLS session.

Why: the backend serves every connection in one process and hands a replication connection's socket
to the postmaster, which forks a walsender (backend.py ``hand_off``).  A TLS session lives in the
process that did the handshake and cannot follow its socket, so for a TLS replication connection the
walsender gets one end of a socketpair instead, and the backend moves bytes between the other end and
the TLS session: client -> decrypt -> socketpair, socketpair -> encrypt -> client.  The walsender does
not know; its wakeups and flushes are unchanged, the relay adds one local hop per message (see the
closing note of the session that added it for the measured cost).

States: RELAYING until either side closes; then the other side is closed as well.  Who wakes it: the
backend's selector, for the client socket (on the Connection) and the relay socket (this object).
"""
from __future__ import annotations

import socket
import ssl
from typing import Protocol

from libpq.tls import TLSChannel

RECV_SIZE = 256 * 1024
MAX_BUFFERED = 8 << 20        # stop reading a side while this much waits for the other


class RelayedConnection(Protocol):
    tls: TLSChannel | None
    raw_out: bytearray

    def flush_out(self) -> None: ...
    def close(self) -> None: ...


class Relay:
    """The backend's end of the socketpair of one TLS replication connection."""

    def __init__(self, conn: RelayedConnection, sock: socket.socket, early: bytes):
        self.conn = conn
        self.sock = sock
        self.sock.setblocking(False)
        self.to_walsender = bytearray(early)   # plaintext from the client, not yet written to the pair
        self.closed = False
        self.registered_mask = 0

    def wants_read(self) -> bool:
        return not self.closed and len(self.conn.raw_out) < MAX_BUFFERED

    def client_wants_read(self) -> bool:
        return not self.closed and len(self.to_walsender) < MAX_BUFFERED

    def from_client(self, plain: bytes) -> None:
        self.to_walsender += plain
        self.flush()

    def on_readable(self) -> None:
        """The walsender wrote: encrypt it for the client."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        tls = self.conn.tls
        assert tls is not None
        try:
            tls.send(data)
        except ssl.SSLError:
            self.close()
            return
        self.conn.raw_out += tls.take_output()
        self.conn.flush_out()

    def flush(self) -> None:
        while self.to_walsender and not self.closed:
            try:
                n = self.sock.send(self.to_walsender)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            del self.to_walsender[:n]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.conn.close()          # unregisters both sockets from the loop while they are still open
        try:
            self.sock.close()
        except OSError:
            pass

