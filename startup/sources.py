"""Where the standby's startup gets a segment: pg_wal (mapped read-only, so the walreceiver's writes
show through), the archive (restore_command, installed into pg_wal unless the concurrent guard keeps
the walreceiver's copy), or a private copy kept out of pg_wal.  PostgreSQL's XLogFileRead /
XLogFileReadAnyTLI / RestoreArchivedFile / KeepFileRestoredFromArchive.  Mixed into
``startup.standby.Standby``, which owns the attributes below and decides, in its state machine, which
source to try when.
"""
from __future__ import annotations

import mmap
import os
import time
from typing import Any, Callable

from shmem.states import WalRcvState
from startup.interrupts import Shutdown
from utils import elog
from utils.inject import inject
from utils.proc import ChildContext, set_title
from xlog import archive_status
from xlog.archive import restore_file
from xlog.control import ControlFile
from xlog.durable import fsync_dir
from xlog.lsn import is_segment_name, parse_segment_name, segment_name, segment_start, segno_of
from xlog.reader import SegmentBytes

log = elog.logger()


class SegmentSources:
    ctx: ChildContext
    cf: ControlFile
    cfg: Any
    policy: Any
    pg_wal: str
    segsize: int
    restore_pid: int | None
    failed_at: dict               # file -> monotonic time of its last failed restore
    restored_for: dict            # file -> (reader position, time) of its last restore
    private_copies: dict          # segno -> restored file kept out of pg_wal
    mapped: tuple | None          # (path, (dev, ino, size), mapping) of the segment being read
    restartpoint_ckpt: int
    tli_for_segment: Any
    walrcv_running: Any
    check_interrupts: Any
    transition: Any

    def open_segment(self, _tli: int, segno: int) -> SegmentBytes:
        """The reader's segment source: a private restored copy, else pg_wal, newest timeline first.

        Concurrent guard: a segment the walreceiver is writing is read only up
        to what it flushed, never beyond (the bytes after may be half written).
        """
        private = self.private_copies.get(segno)
        if private is not None:
            try:
                with open(private, "rb") as f:
                    data = f.read(self.segsize)
                self.reading = (self.tli_for_segment(segno)[0], segno)
                return data
            except FileNotFoundError:
                self.private_copies.pop(segno, None)
        for tli in self.tli_for_segment(segno):
            path = os.path.join(self.pg_wal, segment_name(tli, segno, self.segsize))
            data = self.map_segment(path)
            if data is None:
                continue
            if self.reading != (tli, segno):
                set_title(f"startup recovering {segment_name(tli, segno, self.segsize)}")
            self.reading = (tli, segno)
            if self.cfg["concurrent_guard"]:
                w = self.ctx.shared.walrcv.read("state", "writing_segno", "flushed_lsn")
                if WalRcvState(w["state"]) != WalRcvState.STOPPED and w["writing_segno"] == segno:
                    limit = max(0, w["flushed_lsn"] - segment_start(segno, self.segsize))
                    return data, min(limit, len(data))
            return data
        return None

    def map_segment(self, path: str) -> mmap.mmap | bytes | None:
        """The segment file mapped read-only; the same mapping again while the file stays the same.

        While streaming, the reader asks again each time the walreceiver flushed more.  Reading
        the whole 16 MB file each time cost ~3.5 ms per wake-up (bench.lag's 'decoded' stage);
        a shared mapping shows the walreceiver's writes as they land, so asking again costs one
        stat.  A file replaced by rename (a restored copy) has a new inode and is mapped anew;
        segment files are never truncated in place, so the mapping cannot lose its pages.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_dev, st.st_ino, min(st.st_size, self.segsize))
        cached = self.mapped
        if cached is not None and cached[0] == path and cached[1] == key:
            return cached[2]
        try:
            with open(path, "rb") as f:
                size = min(os.fstat(f.fileno()).st_size, self.segsize)
                data: mmap.mmap | bytes = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            return None
        self.mapped = (path, key, data)
        return data

    def drop_private_copies(self, below_segno: int) -> None:
        for segno in [s for s in self.private_copies if s < below_segno]:
            try:
                os.unlink(self.private_copies.pop(segno))
            except FileNotFoundError:
                pass

    def last_restartpoint_file(self) -> str:
        return segment_name(self.cf.timeline, segno_of(self.cf.redo_lsn, self.segsize), self.segsize)

    def run_restore(self, fname: str, expected_size: int | None,
                    meanwhile: Callable[[], None] | None = None) -> bool:
        """restore_command for fname, unless asked too recently; True once it is in place.

        ``meanwhile`` runs while the command does (xlog.archive.restore_file), if it runs.
        """
        cmd = self.cfg["restore_command"]
        if not cmd:
            return False
        # A file the archive did not have is asked for again no sooner than
        # wal_retrieve_retry_interval later, whatever path leads back here.
        interval = self.cfg["wal_retrieve_retry_interval"] / 1000.0
        failed = self.failed_at.get(fname)
        if failed is not None and time.monotonic() - failed < interval:
            return False
        again = self.restored_for.get(fname)
        if again is not None and again[0] == self.fetch_pos and time.monotonic() - again[1] < interval:
            return False  # restored before for this very position and it did not help
        inject("before_restore", self.ctx, file=fname)
        set_title(f"startup waiting for {fname}")

        def on_child(pid: int | None) -> None:
            self.restore_pid = pid

        try:
            res = restore_file(self.datadir, cmd, fname, expected_size, self.last_restartpoint_file(),
                               timeout=self.cfg["restore_command_timeout"],
                               should_stop=lambda: self.flags.shutdown or not self.ctx.postmaster_alive(),
                               on_child=on_child, install=False, meanwhile=meanwhile)
        except InterruptedError:
            raise Shutdown() from None
        self.ctx.events.emit("restore", file=fname, ok=res.ok, exit=res.exit_code, seconds=round(res.seconds, 4),
                             bytes=res.size, reason=res.reason, by="startup")
        if not res.ok:
            self.failed_at[fname] = min(time.monotonic() - res.seconds, self.last_round)  # from its round's start
            return False
        self.failed_at.pop(fname, None)
        self.restored_for[fname] = (self.fetch_pos, time.monotonic())
        inject("before_install", self.ctx, file=fname)
        self.install_restored(fname, res.path)
        inject("after_restore", self.ctx, file=fname)
        return True

    def install_restored(self, fname: str, tmp: str) -> None:
        """Put a restored file in pg_wal, unless the concurrent guard says the walreceiver's copy wins.

        Guard on, decided under the walreceiver's lock: the first complete copy
        wins.  A segment the walreceiver is writing (``writing_segno``) or a
        complete one already in pg_wal (it has its archive status) is never
        replaced; the archive copy is read privately for this pass.  A partial
        file nobody writes any more (a walreceiver died in it) is replaced, as
        PostgreSQL's KeepFileRestoredFromArchive does, so no torn segment stays
        behind once replay moved past it.  Guard off: always replace, even under
        a live writer: the naive way, for demonstration.
        """
        final = os.path.join(self.pg_wal, fname)
        guard = self.cfg["concurrent_guard"]
        segno = parse_segment_name(fname, self.segsize)[1] if is_segment_name(fname) else None
        wr = self.ctx.shared.walrcv
        with wr.locked():
            busy = False
            if guard and segno is not None and os.path.exists(final):
                writing = WalRcvState(wr.get("state")) != WalRcvState.STOPPED and wr.get("writing_segno") == segno
                complete = archive_status.is_done(self.pg_wal, fname) or archive_status.is_ready(self.pg_wal, fname)
                busy = writing or complete
            if not busy:
                os.replace(tmp, final)
        if busy:
            self.private_copies[segno] = tmp
            self.ctx.events.emit("restore_kept_private", file=fname, reason="the walreceiver is writing it")
            return
        self.private_copies.pop(segno, None)
        fsync_dir(self.pg_wal)
        archive_status.force_done(self.pg_wal, fname)

    def try_archive(self, segno: int, meanwhile: Callable[[], None] | None = None) -> bool:
        """One archive attempt for a segment (newest candidate timeline first).

        ``meanwhile`` runs beside the first restore_command that runs, if any does.
        """
        if not self.policy.startup_restores or not self.cfg["restore_command"]:
            return False
        if meanwhile is not None and self.walrcv_running():
            meanwhile()     # before_restore may wait for the walreceiver to stop: not with it owed
        self.policy.before_restore()
        for tli in self.tli_for_segment(segno):
            fname = segment_name(tli, segno, self.segsize)
            if self.run_restore(fname, self.segsize, meanwhile=meanwhile):
                self.ctx.shared.recovery.update(last_restored_segment=fname)
                self.ctx.events.emit("segment_fetched", source="archive", file=fname, bytes=self.segsize)
                return True
        return False

    def pg_wal_complete(self, segno: int) -> bool:
        """A segment file in pg_wal known to be complete (it has its archive status)."""
        for t in self.tli_for_segment(segno):
            name = segment_name(t, segno, self.segsize)
            if os.path.exists(os.path.join(self.pg_wal, name)) and (
                    archive_status.is_done(self.pg_wal, name) or archive_status.is_ready(self.pg_wal, name)):
                return True
        return False

    def pg_wal_has(self, segno: int) -> bool:
        return any(os.path.exists(os.path.join(self.pg_wal, segment_name(t, segno, self.segsize)))
                   for t in self.tli_for_segment(segno))
