"""The walreceiver's write side (PostgreSQL's XLogWalRcvWrite / XLogWalRcvFlush), mixed into WalReceiver.

Received XLogData goes straight from the receive buffer into its segment
file (``on_xlogdata``: one pwrite per message part); ``flush`` fdatasyncs
every touched file once, publishes ``written_lsn`` / ``flushed_lsn`` (and
the message times) under the region's lock, sets the startup's and the
cascading walsenders' latches, closes and marks (``.done`` / ``.ready``)
each completed segment, and sends a status update.  Before a segment file
is created or opened, ``writing_segno`` is published (the concurrent
guard: the startup never replaces that file and reads it only up to
``flushed_lsn``); ``concurrent_guard = off`` creates each one the naive way,
renamed over whatever is there, for demonstrations.
"""
from __future__ import annotations

import os
from typing import Any

from shmem.states import WalRcvState as S
from walreceiver.errors import Fatal, Panic
from xlog import archive_status
from xlog.durable import fsync_dir
from xlog.lsn import format_lsn, segment_name
from xlog.writer import init_segment_file

PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000      # 2000-01-01 in Unix microseconds


class WalWrite:
    """Mixed into WalReceiver, which owns these attributes (see its __init__)."""

    ctx: Any
    shared: Any
    wr: Any                      # shared.walrcv
    startup_latch: Any
    trace: Any
    pg_wal: str
    segsize: int
    tli: int
    guard: bool
    do_fsync: bool
    archive_always: bool
    armed: bool
    taken: Any
    files: dict[int, int]        # segno -> descriptor of a segment being written
    dirty: set[int]
    seg_bytes: dict[int, int]    # segno -> bytes written this run
    completed: list[int]
    write_ptr: int
    flush_ptr: int
    last_send_time: int
    last_recv_us: int
    latest_end: int
    latest_end_time: int
    times_dirty: bool
    hook: Any
    update_title: Any
    send_reply: Any

    def on_xlogdata(self, start: int, wal_end: int, send_time: int, buf: bytearray, off: int, end: int) -> None:
        """XLogWalRcvWrite: the payload buf[off:end] goes to pg_wal at start, one pwrite per segment part."""
        self.last_send_time = send_time
        if wal_end > self.latest_end:
            self.latest_end = wal_end
            self.latest_end_time = send_time
        n = end - off
        pos = start
        segsize = self.segsize
        if self.trace.on:
            self.trace.note("received", start + n)
        while n > 0:
            segno = pos // segsize
            seg_off = pos % segsize
            chunk = min(n, segsize - seg_off)
            fd = self.files.get(segno)
            if fd is None:
                fd = self.open_segment(segno)
            if self.armed:
                self.hook("before_write", lsn=format_lsn(pos), nbytes=chunk)
            try:
                with memoryview(buf) as mv:
                    done = os.pwrite(fd, mv[off:off + chunk], seg_off)
                    while done < chunk:   # a short write (rare): finish it
                        done += os.pwrite(fd, mv[off + done:off + chunk], seg_off + done)
            except OSError as e:
                raise Panic(f"could not write to log segment {segment_name(self.tli, segno, segsize)} at offset "
                            f"{seg_off}, length {chunk}: {e.strerror}", reason="write failed") from None
            self.dirty.add(segno)
            self.seg_bytes[segno] += chunk
            pos += chunk
            off += chunk
            n -= chunk
            self.write_ptr = pos
            if self.armed:
                self.hook("after_write", lsn=format_lsn(pos))
            if seg_off + chunk == segsize:
                self.completed.append(segno)
        if self.trace.on:
            self.trace.note("written", pos)

    def open_segment(self, segno: int) -> int:
        """The segment file to write segno into; ``writing_segno`` is published first (concurrent guard)."""
        name = segment_name(self.tli, segno, self.segsize)
        with self.wr.locked():
            self.wr.set(writing_segno=segno)
        try:
            if self.guard:
                path = init_segment_file(self.pg_wal, self.tli, segno, self.segsize)
            else:
                path = self.replace_segment_file(name)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise Fatal(f'could not create file "pg_wal/{name}": {e.strerror}', reason="file error") from None
        self.files[segno] = fd
        self.seg_bytes[segno] = 0
        return fd

    def replace_segment_file(self, name: str) -> str:
        """concurrent_guard = off: the naive way, a fresh zero-filled file renamed over whatever is there."""
        path = os.path.join(self.pg_wal, name)
        existed = os.path.exists(path)
        tmp = os.path.join(self.pg_wal, f"xlogtemp.{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.segsize)
            if self.do_fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.do_fsync:
            fsync_dir(self.pg_wal)
        if existed:
            self.ctx.events.emit("segment_replaced", file=name, by="walreceiver", guard=False)
        return path

    def flush(self, dying: bool = False) -> None:
        """XLogWalRcvFlush: fdatasync what was written, publish, wake the startup, report."""
        if not self.dirty:
            if self.times_dirty:
                self.publish_times()
            return
        with self.wr.locked():
            self.wr.set(written_lsn=max(self.wr.get("written_lsn"), self.write_ptr))
        if self.armed:
            self.hook("before_flush", written=format_lsn(self.write_ptr))
        for segno in sorted(self.dirty):
            if self.do_fsync:
                try:
                    os.fdatasync(self.files[segno])
                except OSError as e:
                    raise Panic(f"could not fdatasync file \"{segment_name(self.tli, segno, self.segsize)}\": "
                                f"{e.strerror}", reason="fsync failed") from None
        self.dirty.clear()
        if self.trace.on:
            self.trace.note("flushed", self.write_ptr)
        if self.armed:
            self.hook("after_flush", flushed=format_lsn(self.write_ptr))
        self.flush_ptr = self.write_ptr
        if self.trace.on:
            self.trace.note("published", self.flush_ptr)
        with self.wr.locked():
            cur = self.wr.get("flushed_lsn")
            # A refetch request not yet taken moved flushed_lsn back: leave it there.
            pending = self.wr.get("state") == int(S.RESTARTING) and self.taken is None
            if cur < self.flush_ptr and not pending:
                self.wr.set(latest_chunk_start=cur, flushed_lsn=self.flush_ptr, received_tli=self.tli)
            self.set_times()
        self.wake_readers()
        while self.completed:
            self.close_segment(self.completed.pop(0), complete=True)
        self.update_title()
        if not dying:
            self.send_reply(force=False, request_reply=False)

    def wake_readers(self) -> None:
        """The startup and every cascading walsender: new WAL is flushed."""
        self.startup_latch.set()
        for i, slot in enumerate(self.shared.walsnd):
            if slot.get("pid"):
                self.shared.walsnd_latches[i].set()

    def set_times(self) -> None:
        """Message times into the region (caller holds the lock)."""
        self.wr.set(last_msg_send_us=self.last_send_time + PG_EPOCH_OFFSET_US if self.last_send_time else 0,
                    last_msg_recv_us=self.last_recv_us, latest_end_lsn=self.latest_end,
                    latest_end_time_us=self.latest_end_time + PG_EPOCH_OFFSET_US if self.latest_end_time else 0)
        self.times_dirty = False

    def publish_times(self) -> None:
        with self.wr.locked():
            self.set_times()

    def close_segment(self, segno: int, complete: bool) -> None:
        fd = self.files.pop(segno, None)
        if fd is not None:
            os.close(fd)
        name = segment_name(self.tli, segno, self.segsize)
        self.mark_archive_status(name)
        nbytes = self.seg_bytes.pop(segno, 0)
        if complete:
            self.ctx.events.emit("segment_completed", source="stream", file=name, bytes=nbytes, tli=self.tli)
        else:
            self.ctx.events.emit("segment_closed", source="stream", file=name, bytes=nbytes, tli=self.tli,
                                 partial=True)

    def close_open_segments(self) -> None:
        """End of streaming: flush, then close the last (partial) segment and mark it, as PostgreSQL."""
        self.flush()
        for segno in sorted(self.files):
            self.close_segment(segno, complete=False)
        with self.wr.locked():
            self.wr.set(writing_segno=-1)

    def release_segments(self, sync: bool = True) -> None:
        """A stream we leave (lost, or a restart): close the files unmarked, as WalRcvDie; we write none now."""
        for segno, fd in sorted(self.files.items()):
            if sync and segno in self.dirty and self.do_fsync:
                try:
                    os.fdatasync(fd)
                except OSError:
                    pass
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()
        self.seg_bytes.clear()
        self.dirty.clear()
        self.completed.clear()
        with self.wr.locked():
            self.wr.set(writing_segno=-1)

    def mark_archive_status(self, name: str) -> None:
        """.done, so it is never archived from here; .ready under archive_mode = always (PostgreSQL's rule)."""
        if self.archive_always:
            archive_status.mark_ready(self.pg_wal, name)
        else:
            archive_status.force_done(self.pg_wal, name)
