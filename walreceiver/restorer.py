"""The walreceiver as restorer (``standby_wal_coordination = walreceiver_restores``).

``walreceiver_restores``: the walreceiver is the only process that fetches
WAL.  It starts as PostgreSQL's initial archive recovery does (the archive
until it runs dry), then alternates between the two sources: stream while
it can; when it cannot (connect failure, WAL removed on the primary, stream
lost, no ``primary_conninfo``) it restores with restore_command, in order,
the segments from the one holding its flushed position on, until one is
missing; then it tries the stream again (a primary of another system, too,
only makes the stream impossible: the archive still serves).  A source that
failed is tried again no sooner than ``wal_retrieve_retry_interval`` after
its failure; after a round that restored something the stream is tried at
once.  Each restored
segment is renamed into pg_wal by ``xlog.archive.restore_file``, marked
``.done`` (``.ready`` under ``archive_mode = always``), reported as a
``restore`` event with ``by = "walreceiver"``, and published as flushed
(``flushed_lsn`` = its end, ``written_lsn``, ``received_tli``), with the
startup's latch set.  Restores follow the startup: a segment is fetched
once the startup is in it or waits for it (the position it waits for,
``startup_wait_lsn``, or a replay position that stopped moving for
STARTUP_STALL), so with ``walreceiver_restore_prefetch = 0`` the restore of
the next segment does not overlap the replay of the current one, as in
PostgreSQL.  ``walreceiver_restore_prefetch = N`` fetches up to N segments
beyond the one the startup is at, running up to 1 + N restore_command
processes at once for consecutive segments; each is installed when done,
and flushed_lsn moves over the contiguous prefix only, in order.  With
``recovery_target_timeline = latest`` it also restores the next timeline's
history file (at once, then every RESCAN_EVERY intervals), so the startup
can follow.  A
restore failure PostgreSQL treats as fatal (signal, exit 126, 127, > 128)
is FATAL here (exit 1), with ``restore_fatal`` set in shared memory for the
startup, which in PostgreSQL would be the process dying of it.

Who wakes it: the restore threads (their results are polled with the startup's latch and the
walreceiver's own WaitSet), the startup's latch when it moves.  What it owns: the restore jobs and
the segments they install.  ``ArchiveRestorer`` is a part of ``WalReceiver`` (walreceiver.py): its
methods use the walreceiver's shared-memory region, settings and segment bookkeeping.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from shmem.states import WalRcvState, WalSource
from shmem.sync import WaitSet
from utils import elog
from utils.proc import set_title
from walreceiver.errors import Fatal, RestoreFailed, StopRequested
from xlog.archive import RestoreFatal, RestoreResult, describe_status, restore_file
from xlog.control import ControlFileError, read_control
from xlog.history import RESCAN_EVERY
from xlog.lsn import format_lsn, history_file_name, segment_name, segment_start, segno_of

LAUNCH_POLL = 0.01                 # re-check the startup's position while a restore waits on it
STARTUP_STALL = 0.25               # replay position unchanged this long after a hand-over: it waits

log = elog.logger()
S = WalRcvState


@dataclass
class RestoreJob:
    """One segment being restored by a thread (walreceiver_restores): candidates newest timeline first."""
    segno: int
    names: list[str]
    started: float
    replay_at_launch: int = 0         # the startup's replay_lsn when the restore was launched
    thread: threading.Thread | None = None
    results: list[RestoreResult] = field(default_factory=list)
    child: int | None = None          # the restore_command's pid (its process group) while it runs
    cancel: bool = False
    cancelled: bool = False
    fatal: str | None = None
    error: str | None = None
    done: bool = False

    @property
    def ok(self) -> RestoreResult | None:
        return next((r for r in self.results if r.ok), None)


class ArchiveRestorer:
    """restore_command rounds, prefetch and history files; mixed into WalReceiver."""
    ctx: Any

    def last_restartpoint_file(self) -> str:
        """%r: the segment of the last restartpoint's redo position."""
        try:
            cf = read_control(self.ctx.datadir)
            return segment_name(cf.timeline, segno_of(cf.redo_lsn, self.segsize), self.segsize)
        except ControlFileError:
            return segment_name(self.tli, segno_of(self.request[0], self.segsize), self.segsize)

    def archive_round(self) -> int:
        """Restore from the segment holding our flushed position on, until one is missing; how many were published.

        Up to 1 + walreceiver_restore_prefetch segments are restored at once
        (after the round's first success); each is in pg_wal when its
        restore_command is done, but flushed_lsn moves over the contiguous
        prefix only, in order.  A missing segment ends the round (restores of
        the segments after it are cancelled).
        """
        command = self.cfg["restore_command"]
        self.set_state(S.STARTING, "restoring from archive", fetch_source=int(WalSource.ARCHIVE))
        lrp = self.last_restartpoint_file()
        self.remove_stale_restore_files()
        next_segno = segno_of(self.flush_ptr, self.segsize)
        limit = math.inf                 # the first segment found missing this round
        width = 1                        # restores at once: 1 until the round's first success
        published = 0
        ws = WaitSet(self.latch, [self.ctx.death_fd, self.sig_r])
        try:
            while True:
                self.check_interrupts()
                for segno, job in sorted(self.jobs.items()):
                    if not job.done:
                        continue
                    del self.jobs[segno]
                    if not self.finish_job(job, command):
                        limit = min(limit, segno)
                for segno, job in self.jobs.items():
                    if segno > limit:
                        job.cancel = True
                while next_segno in self.restored_ahead:
                    if not self.publish_restored(next_segno):
                        break
                    next_segno += 1
                    published += 1
                    width = 1 + self.prefetch
                    # The startup has new WAL to replay: it is not stalled before it had time to move.
                    self.replay_seen_at = time.monotonic()
                if next_segno >= limit and not self.jobs:
                    return published
                # Launch consecutive segments, no further than prefetch past where the startup is.
                horizon = self.startup_segment(next_segno) + self.prefetch
                held_back = False
                k = next_segno
                while k < limit and k <= next_segno + width - 1 and len(self.jobs) < width:
                    if k > horizon:
                        held_back = True
                        break
                    if k not in self.jobs and k not in self.restored_ahead:
                        self.start_job(k, command, lrp)
                    k += 1
                if self.jobs:
                    set_title(f"walreceiver restoring {self.jobs[min(self.jobs)].names[0]}")
                elif held_back:
                    set_title(f"walreceiver holding {segment_name(self.tli, k, self.segsize)} until the startup "
                              f"needs it")
                ws.wait(LAUNCH_POLL if held_back else 1.0)
        finally:
            ws.close()
            self.cancel_jobs(wait=True)

    def startup_segment(self, next_segno: int) -> int:
        """The segment the startup is at: the one its reader waits for, else the one it replays.

        The startup publishes the position it waits for (``startup_wait_lsn``).
        Besides, a replay position that stayed the same for STARTUP_STALL
        seconds since we last handed it a segment is taken to mean it waits
        for our next segment, so that a startup that does not publish (or
        published long ago) is never left waiting; a transaction still open
        across segments also keeps the replay position still: then one
        segment is fetched early, never none.  It counts from the hand-over
        so that prefetch 0 means what it says while the startup replays.
        """
        now = time.monotonic()
        replay = self.shared.recovery.get("replay_lsn")
        if replay != self.replay_seen:
            self.replay_seen, self.replay_seen_at = replay, now
        pos = max(segno_of(replay, self.segsize), segno_of(self.request[0], self.segsize))
        wait_lsn = self.wr.get("startup_wait_lsn")
        if wait_lsn:
            pos = max(pos, segno_of(wait_lsn, self.segsize))
        if now - self.replay_seen_at >= STARTUP_STALL:
            pos = max(pos, next_segno)
        return pos

    def remove_stale_restore_files(self) -> None:
        """Temporary files of restores cut short by a crash (their restore_command outlived a killed walreceiver).

        Under walreceiver_restores nobody but this process restores, so any
        RECOVERYXLOG file that is not ours is stale.
        """
        mine = f"RECOVERYXLOG.{os.getpid()}."
        try:
            names = os.listdir(self.pg_wal)
        except OSError:
            return
        for name in names:
            if name.startswith("RECOVERYXLOG.") and not name.startswith(mine):
                try:
                    os.unlink(os.path.join(self.pg_wal, name))
                except OSError:
                    pass

    def start_job(self, segno: int, command: str, lrp: str) -> RestoreJob:
        names = [segment_name(t, segno, self.segsize) for t in self.candidates(segno)]
        self.hook("before_restore", refresh=True, file=names[0])
        job = RestoreJob(segno, names, time.monotonic(), replay_at_launch=self.shared.recovery.get("replay_lsn"))
        timeout = float(self.cfg["restore_command_timeout"])

        def should_stop() -> bool:
            return job.cancel or self.got_sigterm or not self.ctx.postmaster_alive()

        def on_child(pid: int | None) -> None:
            job.child = pid

        def run() -> None:
            try:
                for fname in names:
                    res = restore_file(self.ctx.datadir, command, fname, self.segsize, lrp, timeout=timeout,
                                       should_stop=should_stop, on_child=on_child)
                    job.results.append(res)
                    if res.ok:
                        break
            except RestoreFatal as e:
                job.fatal = str(e)
            except InterruptedError:
                job.cancelled = True
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                job.error = f"{type(e).__name__}: {e}"
            finally:
                job.done = True
                self.latch.set()

        job.thread = threading.Thread(target=run, name=f"restore-{names[0]}", daemon=True)
        self.jobs[segno] = job
        job.thread.start()
        return job

    def finish_job(self, job: RestoreJob, command: str) -> bool:
        """A restore thread is done: report each restore_command call; True if the segment is in pg_wal."""
        if job.thread is not None:
            job.thread.join()
        for res in job.results:
            # Where the startup's replay stood when this restore was launched (how far ahead it ran).
            self.emit_restore(res.fname, res.ok, res.exit_code, res.seconds, res.size, res.reason,
                              startup_replay=format_lsn(job.replay_at_launch))
        tried = len(job.results)
        if job.cancelled or job.fatal or job.error:
            fname = job.names[min(tried, len(job.names) - 1)]
            reason = "cancelled" if job.cancelled else ("fatal" if job.fatal else "error")
            self.emit_restore(fname, False, None, time.monotonic() - job.started, 0, reason)
        if job.fatal:
            raise RestoreFailed(job.fatal)
        if job.error:
            raise Fatal(f'could not restore file "{job.names[0]}" from archive: {job.error}', reason="restore failed")
        ok = job.ok
        if ok is None:
            return False
        self.mark_archive_status(ok.fname)
        tli = int(ok.fname[:8], 16)
        self.restored_ahead[job.segno] = (tli, ok.fname, ok.size)
        end = segment_start(job.segno + 1, self.segsize)
        with self.wr.locked():
            if self.wr.get("restore_ahead_lsn") < end:
                self.wr.set(restore_ahead_lsn=end)
        self.hook("after_restore", refresh=True, file=ok.fname)
        return True

    def emit_restore(self, fname: str, ok: bool, code: int | None, seconds: float, size: int, reason: str,
                     **extra: object) -> None:
        self.ctx.events.emit("restore", file=fname, ok=ok, exit=code, seconds=round(seconds, 4), bytes=size,
                             reason=reason, by="walreceiver", **extra)
        if not ok and code is not None and code != 0 and reason == "not found":
            log.debug('could not restore file "%s" from archive: %s', fname, describe_status(code))

    def publish_restored(self, segno: int) -> bool:
        """The next segment is in pg_wal: flushed up to its end (False while a refetch request is pending)."""
        tli, fname, size = self.restored_ahead[segno]
        end = segment_start(segno + 1, self.segsize)
        with self.wr.locked():
            if self.wr.get("state") == int(S.RESTARTING) and self.taken is None:
                return False
            cur = self.wr.get("flushed_lsn")
            fields: dict[str, int] = {"written_lsn": max(self.wr.get("written_lsn"), end)}
            if cur < end:
                fields.update(latest_chunk_start=cur, flushed_lsn=end, received_tli=tli)
            self.wr.set(**fields)
        del self.restored_ahead[segno]
        self.tli = tli
        self.write_ptr = self.flush_ptr = end
        self.wake_readers()
        self.ctx.events.emit("segment_fetched", source="archive", file=fname, bytes=size, by="walreceiver")
        return True

    def cancel_jobs(self, wait: bool) -> None:
        """Cancel every restore in flight (each kills its restore_command's process group)."""
        for job in self.jobs.values():
            job.cancel = True
        if not wait:
            return
        deadline = time.monotonic() + 10
        for segno, job in sorted(self.jobs.items()):
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
            if job.done:
                for res in job.results:
                    if res.ok:
                        # In pg_wal but never published: reported, and kept for a later round.
                        self.emit_restore(res.fname, True, 0, res.seconds, res.size, "")
                        self.mark_archive_status(res.fname)
                        self.restored_ahead.setdefault(segno, (int(res.fname[:8], 16), res.fname, res.size))
                    else:
                        self.emit_restore(res.fname, False, res.exit_code, res.seconds, res.size, res.reason)
                if job.cancelled:
                    self.emit_restore(job.names[min(len(job.results), len(job.names) - 1)], False, None,
                                      time.monotonic() - job.started, 0, "cancelled")
        self.jobs.clear()

    def maybe_restore_history(self) -> None:
        """recovery_target_timeline = latest: the next timeline's history file from the archive.

        At once when this walreceiver first needs the archive, then every
        RESCAN_EVERY retry intervals (shmem/states.py), as the startup does
        under the other approaches, not at every round as PostgreSQL: most of
        those calls ask for a file that is not there.
        """
        command = self.cfg["restore_command"]
        if self.cfg["recovery_target_timeline"] != "latest" or not command:
            return
        if time.monotonic() - self.history_tried_at < RESCAN_EVERY * self.retry_interval:
            return
        self.history_tried_at = time.monotonic()
        tli = max(self.shared.recovery.get("timeline") or 0, self.tli) + 1
        while True:
            fname = history_file_name(tli)
            if os.path.exists(os.path.join(self.pg_wal, fname)):
                tli += 1
                continue
            self.hook("before_restore", refresh=True, file=fname)
            try:
                res = restore_file(self.ctx.datadir, command, fname, None, self.last_restartpoint_file(),
                                   timeout=float(self.cfg["restore_command_timeout"]),
                                   should_stop=lambda: self.got_sigterm or not self.ctx.postmaster_alive())
            except RestoreFatal as e:
                self.emit_restore(fname, False, None, 0.0, 0, "fatal")
                raise RestoreFailed(str(e)) from None
            except InterruptedError:
                self.check_interrupts()
                raise StopRequested() from None
            self.emit_restore(fname, res.ok, res.exit_code, res.seconds, res.size, res.reason)
            if not res.ok:
                return
            self.mark_archive_status(fname)
            self.ctx.events.emit("history_fetched", source="archive", file=fname, bytes=res.size, by="walreceiver")
            self.hook("after_restore", refresh=True, file=fname)
            self.startup_latch.set()
            tli += 1
