"""The walreceiver's receive loop (PostgreSQL's WalReceiverMain loop with XLogWalRcvProcessMsg and
XLogWalRcvSendReply), mixed into ``walreceiver.walreceiver.WalReceiver``, which owns the attributes
below and the write side (walreceiver/walwrite.py: ``on_xlogdata``, ``flush``).

Each turn: take everything readable (at most MAX_BATCH_BYTES), flush and publish it, answer a forced
reply the startup asked for, and otherwise sleep on the socket, our latch, the postmaster-death pipe
and the signal pipe until the next status update or timeout check is due.  A status update goes out
at least every ``wal_receiver_status_interval``; after half of ``wal_receiver_timeout`` without a
message the primary is asked for a reply, after all of it the stream counts as lost.
"""
from __future__ import annotations

import select
import time
from typing import Any

from shmem.sync import WaitSet
from utils.proc import ChildContext, set_title
from walreceiver.errors import Fatal
from walreceiver.libpqwalreceiver import ConnectionLost, ProtocolViolation, ServerError, WalRcvConn
from walreceiver.walwrite import PG_EPOCH_OFFSET_US
from xlog.lsn import format_lsn

MAX_BATCH_BYTES = 4 << 20                         # flush at least this often while catching up
TITLE_INTERVAL = 0.25                             # seconds between process-title updates


def now_us() -> int:
    return time.time_ns() // 1000


def pg_now() -> int:
    """GetCurrentTimestamp(): microseconds since 2000-01-01 UTC."""
    return now_us() - PG_EPOCH_OFFSET_US


class ReceiveLoop:
    ctx: ChildContext
    conn: WalRcvConn | None
    latch: Any
    sig_r: int
    wr: Any                     # shared.walrcv
    shared: Any
    trace: Any
    rcv_timeout: float
    status_interval: float
    write_ptr: int
    flush_ptr: int
    last_reply: float
    last_reply_write: int
    last_reply_flush: int
    last_recv_us: int
    last_send_time: int
    latest_end: int
    latest_end_time: int
    times_dirty: bool
    title_at: float
    check_interrupts: Any
    refresh_inject: Any
    on_xlogdata: Any
    flush: Any

    def stream(self) -> None:
        """The receive loop, until the primary ends the copy (returns) or something fails (raises)."""
        conn = self.conn
        assert conn is not None
        ws = WaitSet(self.latch, [conn.fd, self.ctx.death_fd, self.sig_r])
        try:
            last_recv = time.monotonic()
            ping_sent = False
            self.send_reply(force=True, request_reply=False)
            while True:
                self.check_interrupts()
                self.refresh_inject()
                try:
                    nmsg, ended, more = conn.receive(self.on_xlogdata, self.on_keepalive, MAX_BATCH_BYTES)
                except ConnectionLost as e:
                    raise Fatal(f"could not receive data from WAL stream: {e}", reason="connection lost",
                                stream_failure=True) from None
                except ServerError as e:
                    raise Fatal(f"could not receive data from WAL stream: {e}", reason="primary error",
                                stream_failure=True) from None
                except ProtocolViolation as e:
                    raise Fatal(str(e), reason="protocol violation", stream_failure=True) from None
                now = time.monotonic()
                if nmsg:
                    last_recv = now
                    ping_sent = False
                    self.last_recv_us = now_us()
                    self.times_dirty = True
                self.flush()
                if ended:
                    return
                if self.wr.get("force_reply"):
                    # WalRcvForceReply: the startup replayed all it had; tell the primary now.
                    with self.wr.locked():
                        self.wr.set(force_reply=0)
                    self.send_reply(force=True, request_reply=False)
                if more:
                    continue
                request = False
                if self.rcv_timeout > 0:
                    if now >= last_recv + self.rcv_timeout:
                        raise Fatal("terminating walreceiver due to timeout", reason="timeout", stream_failure=True)
                    if not ping_sent and now >= last_recv + self.rcv_timeout / 2:
                        request = ping_sent = True
                self.send_reply(force=request, request_reply=request)
                self.sleep(ws, self.next_wakeup(last_recv, ping_sent) - time.monotonic())
        finally:
            ws.close()

    def next_wakeup(self, last_recv: float, ping_sent: bool) -> float:
        wake = time.monotonic() + 3600.0
        if self.rcv_timeout > 0:
            wake = min(wake, last_recv + (self.rcv_timeout if ping_sent else self.rcv_timeout / 2))
        if self.status_interval > 0:
            wake = min(wake, self.last_reply + self.status_interval)
        return wake

    def sleep(self, ws, timeout: float) -> None:
        """Until input, our latch, a signal, death or timeout; or until the socket takes pending output."""
        if self.trace.on:
            self.trace.idle()
        timeout = max(0.0, timeout)
        assert self.conn is not None
        if self.conn.out:
            try:
                self.conn.flush_out()
            except ConnectionLost as e:
                raise Fatal(f"could not send data to WAL stream: {e}", reason="connection lost",
                            stream_failure=True) from None
        if self.conn.out:
            try:
                select.select([self.conn.fd, self.ctx.death_fd, self.sig_r], [self.conn.fd], [], timeout)
            except (OSError, ValueError):
                pass
            return
        ws.wait(timeout)

    def on_keepalive(self, wal_end: int, send_time: int, reply_requested: bool) -> None:
        self.note_sender(wal_end, send_time)
        if reply_requested:
            self.send_reply(force=True, request_reply=False)

    def note_sender(self, wal_end: int, send_time: int) -> None:
        """ProcessWalSndrMessage (published with the next flush)."""
        self.last_send_time = send_time
        if wal_end > self.latest_end:
            self.latest_end = wal_end
            self.latest_end_time = send_time
        self.times_dirty = True

    def send_reply(self, force: bool, request_reply: bool) -> None:
        """XLogWalRcvSendReply: write, flush, apply positions; skipped when nothing changed and not due."""
        if self.conn is None or self.conn.copy != "both":
            return
        if not force and self.status_interval <= 0:
            return
        now = time.monotonic()
        if (not force and self.write_ptr == self.last_reply_write and self.flush_ptr == self.last_reply_flush
                and now < self.last_reply + self.status_interval):
            return
        self.last_reply = now
        self.last_reply_write = self.write_ptr
        self.last_reply_flush = self.flush_ptr
        apply = self.shared.recovery.get("replay_lsn")
        if self.trace.on:
            self.trace.note("reply_sent", apply)
        try:
            self.conn.send_status(self.write_ptr, self.flush_ptr, apply, pg_now(), request_reply)
        except ConnectionLost as e:
            raise Fatal(f"could not send data to WAL stream: {e}", reason="connection lost",
                        stream_failure=True) from None

    def update_title(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.title_at >= TITLE_INTERVAL:
            self.title_at = now
            set_title(f"walreceiver streaming {format_lsn(self.write_ptr)}")
