"""The backend's descriptor budget: client sockets never take the descriptors WAL and data need.

The backend serves every client connection in one process, so its client
sockets and its WAL segment, SQLite files, control file and archive_status
files share one RLIMIT_NOFILE.  PostgreSQL's fd.c keeps a reserve of
descriptors for its own files (NUM_RESERVED_FDS); here the same reserve is
kept by capping client sockets: a connection accepted when fewer than
``RESERVED_FDS`` descriptors would stay free is refused with FATAL 53300
("sorry, too many clients already") and closed at once.

Two spare descriptors opened on /dev/null are the last line: if accept()
itself fails with EMFILE/ENFILE (something else used the reserve), one spare
is closed so that the waiting client can be accepted and refused instead of
left in the backlog, and the accept loop backs off for ``ACCEPT_BACKOFF``
seconds instead of spinning.  Refusals and accept failures are logged once
per ``LOG_INTERVAL`` with a count, not once per attempt.

Who calls it: only backend/backend.py's accept path, in the backend process.
"""
from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from dataclasses import dataclass, field

from libpq import protocol as P
from utils import elog

log = elog.logger()

RESERVED_FDS = 24          # WAL segment, SQLite db/-wal/-shm/journal, control file + temp, dirs, pipes
SPARE_FDS = 2
ACCEPT_BACKOFF = 0.5       # seconds without accept() after EMFILE/ENFILE
LOG_INTERVAL = 10.0        # seconds between two summary lines
TOO_MANY = P.error_response("53300", "sorry, too many clients already", severity="FATAL")


def nofile_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def fds_in_use() -> int:
    """Open descriptors of this process (one more is open while /proc/self/fd is read)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return 0


@dataclass
class FdBudget:
    limit: int = field(default_factory=nofile_limit)
    spares: list[int] = field(default_factory=list)
    refused: int = 0                 # refusals since the last summary line
    accept_errors: int = 0
    last_error: str = ""
    next_log: float = 0.0
    paused_until: float = 0.0        # accept() is not called before this monotonic time

    def __post_init__(self) -> None:
        self.restore_spares()

    def restore_spares(self) -> None:
        while len(self.spares) < SPARE_FDS:
            try:
                self.spares.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def release_spare(self) -> bool:
        if not self.spares:
            return False
        os.close(self.spares.pop())
        return True

    def room_for_client(self) -> bool:
        """True when one more client socket still leaves the reserve free."""
        return fds_in_use() + RESERVED_FDS <= self.limit

    def refuse(self, sock: socket.socket) -> None:
        """53300 to a client we cannot keep, then close it; counted for the summary line."""
        self.refused += 1
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(TOO_MANY)
            # Let the FATAL reach the client before the close: no RST for its startup packet.
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.close()
        self.maybe_log()

    def accept_failed(self, err: OSError) -> None:
        """accept() failed: back off, and try to refuse the waiting client with a spare descriptor."""
        self.accept_errors += 1
        self.last_error = err.strerror or str(err)
        self.paused_until = time.monotonic() + ACCEPT_BACKOFF
        self.maybe_log()

    def close(self) -> None:
        while self.spares:
            with contextlib.suppress(OSError):
                os.close(self.spares.pop())

    def maybe_log(self) -> None:
        now = time.monotonic()
        if now < self.next_log:
            return
        self.next_log = now + LOG_INTERVAL
        if self.accept_errors:
            log.warning("could not accept new connection: %s (%d times in the last %g s)",
                        self.last_error, self.accept_errors, LOG_INTERVAL)
        if self.refused:
            log.warning("%d connection(s) refused: too many clients for %d file descriptors "
                        "(%d reserved for WAL and data files)", self.refused, self.limit, RESERVED_FDS)
        self.accept_errors = self.refused = 0
