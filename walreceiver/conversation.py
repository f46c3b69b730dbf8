"""The walreceiver's commands to the primary before and after a stream (walrcv_connect,
walrcv_identify_system, walrcv_readtimelinehistoryfile, walrcv_endstreaming in PostgreSQL's
walreceiver.c), mixed into WalReceiver, which owns the attributes below.

Every failure is a ``Fatal`` with PostgreSQL's wording ("could not connect to the primary server:
...", "invalid response from primary server", ...) and ``stream_failure=True``: what that leads to
(exit, reconnect, restore from the archive) is the coordination mode's business (walreceiver.py).
``wal_receiver_timeout`` bounds the connection and each command round trip.  The conninfo goes to
shared memory masked (no password in pg_stat_wal_receiver).
"""
from __future__ import annotations

import os
import time
from typing import Any

from utils import elog
from utils.proc import ChildContext, set_title
from walreceiver.errors import Fatal
from walreceiver.libpqwalreceiver import ConnectionLost, TimeoutExpired, WalRcvConn, WalRcvError, masked_conninfo
from xlog.durable import write_durably
from xlog.lsn import history_file_name

log = elog.logger()


class PrimaryCommands:
    ctx: ChildContext
    cfg: Any
    conn: WalRcvConn | None
    wr: Any                 # shared.walrcv
    rcv_timeout: float
    sig_r: int
    sysid: int
    tli: int
    mode: str
    pg_wal: str
    check_interrupts: Any
    mark_archive_status: Any

    def deadline(self) -> float | None:
        return time.monotonic() + self.rcv_timeout if self.rcv_timeout > 0 else None

    def connect(self) -> None:
        conninfo = self.cfg["primary_conninfo"]
        appname = self.cfg["cluster_name"] or "walreceiver"
        set_title("walreceiver connecting")
        try:
            self.conn = WalRcvConn.connect(conninfo, appname, deadline=self.deadline(),
                                           interrupt_fds=[self.ctx.death_fd, self.sig_r],
                                           check_interrupts=self.check_interrupts)
        except WalRcvError as e:
            self.ctx.events.emit("walreceiver_connect_failed", error=str(e).split("\n", 1)[0])
            raise Fatal(f"could not connect to the primary server: {e}", reason="connect failed",
                        stream_failure=True) from None
        t = self.conn.target
        with self.wr.locked():
            self.wr.set(conninfo=_fit(masked_conninfo(self.conn.opts), 511),
                        sender_host=_fit(t.host, 63), sender_port=t.port)

    def command(self, sql: str, what: str):
        """Run a replication command; errors become PostgreSQL's "<what>: <libpq message>"."""
        assert self.conn is not None
        try:
            return self.conn.query(sql, self.deadline())
        except TimeoutExpired:
            raise Fatal("terminating walreceiver due to timeout", reason="timeout", stream_failure=True) from None
        except ConnectionLost as e:
            raise Fatal(f"{what}: {e}", reason="connection lost", stream_failure=True) from None
        except WalRcvError as e:
            raise Fatal(f"{what}: {e}", stream_failure=True) from None

    def identify_system(self) -> int:
        """IDENTIFY_SYSTEM: same system as ours, and the primary's timeline not behind ours."""
        res = self.command("IDENTIFY_SYSTEM",
                           "could not receive database system identifier and timeline ID from the primary server")
        tup = next((r for r in res if r.status == "tuples"), None)
        nrows, nfields = (len(tup.rows), len(tup.columns)) if tup else (0, 0)
        if nrows != 1 or nfields < 3:
            raise Fatal("invalid response from primary server",
                        f"Could not identify system: got {nrows} rows and {nfields} fields, "
                        f"expected 1 rows and 3 or more fields.", stream_failure=True)
        row = tup.rows[0]
        primary_sysid = (row[0] or b"").decode()
        try:
            primary_tli = int(row[1] or b"0")
        except ValueError:
            raise Fatal("invalid response from primary server", "Could not identify system: invalid timeline.",
                        stream_failure=True) from None
        if primary_sysid != str(self.sysid):
            # Nothing to reconnect to: FATAL.  Under walreceiver_restores, though, we are the only
            # fetcher and the archive still serves: the stream counts as impossible, not our end.
            raise Fatal("database system identifier differs between the primary and standby",
                        f"The primary's identifier is {primary_sysid}, the standby's identifier is {self.sysid}.",
                        reason="foreign primary", stream_failure=self.mode == "walreceiver_restores")
        if primary_tli < self.tli:
            raise Fatal(f"highest timeline {primary_tli} of the primary is behind recovery timeline {self.tli}",
                        stream_failure=True)
        return primary_tli

    def fetch_history_files(self, first: int, last: int) -> None:
        """WalRcvFetchTimeLineHistoryFiles: history files we lack for timelines first..last."""
        for tli in range(max(first, 2), last + 1):
            fname = history_file_name(tli)
            if os.path.exists(os.path.join(self.pg_wal, fname)):
                continue
            log.info("fetching timeline history file for timeline %d from primary server", tli)
            res = self.command(f"TIMELINE_HISTORY {tli}",
                               "could not receive timeline history file from the primary server")
            tup = next((r for r in res if r.status == "tuples"), None)
            ntup, nfields = (len(tup.rows), len(tup.columns)) if tup else (0, 0)
            if ntup != 1 or nfields != 2:
                raise Fatal("invalid response from primary server",
                            f"Expected 1 tuple with 2 fields, got {ntup} tuples with {nfields} fields.",
                            stream_failure=True)
            name = (tup.rows[0][0] or b"").decode()
            content = tup.rows[0][1] or b""
            if name != fname:
                raise Fatal(f"primary reported unexpected file name for timeline history file of timeline {tli}",
                            stream_failure=True)
            write_history_raw(self.pg_wal, fname, content)
            self.mark_archive_status(fname)
            self.ctx.events.emit("history_fetched", source="stream", file=fname, bytes=len(content))

    def end_streaming(self) -> int:
        assert self.conn is not None
        try:
            return self.conn.end_streaming(self.deadline())
        except ConnectionLost as e:
            raise Fatal(str(e), reason="connection lost", stream_failure=True) from None
        except WalRcvError as e:
            raise Fatal(str(e), stream_failure=True) from None


def _fit(text: str, nbytes: int) -> str:
    """Truncate to nbytes of UTF-8 without splitting a character (fixed-size region fields)."""
    b = text.encode("utf-8")
    if len(b) <= nbytes:
        return text
    return b[:nbytes].decode("utf-8", "ignore")


def write_history_raw(pg_wal: str, fname: str, content: bytes) -> str:
    """writeTimeLineHistoryFile: the primary's bytes, atomically (temp file, fsync, rename, fsync dir)."""
    path = os.path.join(pg_wal, fname)
    write_durably(path, content, tmp=os.path.join(pg_wal, f"xlogtemp.{os.getpid()}"))
    return path
