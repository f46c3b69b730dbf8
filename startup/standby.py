"""The standby's startup process: the WAL-source state machine, replay, restartpoints, promotion.

States (``RecoveryState``; the allowed transitions are ``TRANSITIONS`` below and
``set_state`` is the only function that changes the state)::

    ARCHIVE_RECOVERY --archive (and pg_wal) has no next segment--> RETRY_ARCHIVE   (walreceiver requested)
                     --no primary_conninfo--------------------> WAIT_RETRY
    RETRY_ARCHIVE    --one round of archive/pg_wal attempts found nothing--> WAIT_RETRY
                     --walreceiver streams the WAL we need--> STREAMING
    WAIT_RETRY       --wal_retrieve_retry_interval passed since the last round--> RETRY_ARCHIVE
                     --walreceiver streams the WAL we need--> STREAMING
    STREAMING        --walreceiver gone, or its WAL fails validation--> RETRY_ARCHIVE / WAIT_RETRY
    any of these     --promote request--> PROMOTING --> DONE (the process exits 0)
    (CRASH_RECOVERY --> DONE is the primary's crash recovery, startup/startup.py)

``wal_source`` (archive / pg_wal / stream) says where the segment being read
came from; it changes with every successful fetch and is stored with the
state.

This file is the machine (``wait_for_wal``), replay and promotion.  Beside it:
``startup/sources.py`` (pg_wal, the archive, private copies: how one segment
is obtained), ``startup/timelines.py`` (the history followed, rescans for a
newer timeline), ``startup/interrupts.py`` (what the signal handlers ask).

The three ``standby_wal_coordination`` approaches are policies
(``startup/policy.py``) consulted at the same points of this one machine:
before an archive attempt (``stop_walreceiver`` stops the walreceiver
first), when the archive runs dry (request the walreceiver), when the stream
is lost, and whether the startup restores at all (``walreceiver_restores``:
never; it only reads pg_wal up to what the walreceiver flushed).

Who wakes whom: the walreceiver sets our latch after each flush and state
change; the postmaster forwards promote requests as SIGUSR2 and shutdown as
SIGTERM (the handlers only set flags and our latch).  We raise PMSignal flags
(recovery started, consistent, start walreceiver) and SIGUSR1 the postmaster.

Reading: records come from ``xlog.reader.WalReader`` over segment files in
pg_wal (restored files are renamed there, the walreceiver writes there);
while streaming, the reader may not read past the walreceiver's flushed
position (``read_upto``).  A reader that stops with no error wants more
WAL; one that stops with an error (PostgreSQL's message, logged once) makes
the current source count as failed.  Either way the machine fetches and the
reader retries at the same position.

Replay applies committed transactions at their commit records, in batches
(one SQLite transaction with the LSN, startup/redo.py).  ``replay_loop`` is
the hot path: records in batches from ``WalReader.read_records``; only when
the reader runs dry does the startup apply and publish what it replayed,
force a walreceiver reply, look at the shared state and wait (``next_record``,
``wait_for_wal``).  When what comes next is an archive attempt, that apply
runs while restore_command copies the next segment (``settle_replay``,
passed to ``xlog.archive.restore_file`` as ``meanwhile``): in an archive
catch-up the store's SQLite work and the copy overlap instead of taking turns
(the restore itself is still one segment at a time, after the previous one
was read, as PostgreSQL's).  A shutdown request is noticed after each batch, a promote
request when WAL runs out, as PostgreSQL's.  Every replayed checkpoint record
becomes a restartpoint: the store is synced and the control file points at
that checkpoint, so a crash-restart replays from there and skips commits the
store already holds.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from shmem.segment import SharedState
from shmem.states import RecoveryState, WalRcvState, WalSource
from startup.policy import make_policy
from startup.interrupts import Flags, Promote, Shutdown
from startup.redo import Redo
from startup.sources import SegmentSources
from startup.timelines import StandbyTimelines
from storage.kvstore import KVStore
from utils import config as cfgmod
from utils import elog, lagtrace
from utils.proc import ChildContext, set_title
from xlog import archive_status
from xlog import constants as C
from xlog.archive import RestoreFatal
from xlog.control import ControlFile, DBState, write_control
from xlog.history import TimelineHistoryEntry, write_history_file
from xlog.lsn import (
    format_lsn, history_file_name, is_segment_name, parse_segment_name, segment_name, segment_start, segno_of
)
from xlog.reader import WalReader
from xlog.record import CheckPoint, EndOfRecovery, timestamptz_now
from xlog.writer import WalWriter, copy_segment_prefix

log = elog.logger()

TRANSITIONS: dict[RecoveryState, set[RecoveryState]] = {
    RecoveryState.NOT_STARTED: {RecoveryState.CRASH_RECOVERY, RecoveryState.ARCHIVE_RECOVERY},
    RecoveryState.CRASH_RECOVERY: {RecoveryState.DONE},
    RecoveryState.ARCHIVE_RECOVERY: {RecoveryState.RETRY_ARCHIVE, RecoveryState.WAIT_RETRY,
                                     RecoveryState.STREAMING, RecoveryState.PROMOTING},
    RecoveryState.RETRY_ARCHIVE: {RecoveryState.STREAMING, RecoveryState.WAIT_RETRY, RecoveryState.PROMOTING},
    RecoveryState.WAIT_RETRY: {RecoveryState.RETRY_ARCHIVE, RecoveryState.STREAMING, RecoveryState.PROMOTING},
    RecoveryState.STREAMING: {RecoveryState.RETRY_ARCHIVE, RecoveryState.WAIT_RETRY, RecoveryState.PROMOTING},
    RecoveryState.PROMOTING: {RecoveryState.DONE},
    RecoveryState.DONE: set(),
}


def set_state(ctx: ChildContext, new: RecoveryState, reason: str, source: WalSource | None = None) -> None:
    """The one place the recovery state changes: check it, store it, log it, record it."""
    rec = ctx.shared.recovery
    with rec.locked():
        old = RecoveryState(rec.get("state"))
        old_source = WalSource(rec.get("wal_source"))
        if new != old and new not in TRANSITIONS[old]:
            raise RuntimeError(f"invalid recovery state transition {old.name} -> {new.name}")
        rec.set(state=int(new))
        if source is not None:
            rec.set(wal_source=int(source))
    if new != old:
        log.debug("recovery state %s -> %s: %s", old.name.lower(), new.name.lower(), reason)
        ctx.events.emit("recovery_state", **{"from": old.name.lower(), "to": new.name.lower(), "reason": reason})
    if source is not None and source != old_source:
        ctx.events.emit("wal_source", **{"from": old_source.name.lower(), "to": source.name.lower(),
                                         "reason": reason})


def publish_end_of_wal(shared: SharedState, cf: ControlFile, insert_lsn: int, last_record_lsn: int,
                       in_recovery: bool) -> None:
    with shared.xlog.locked() as x:
        x.set(system_identifier=cf.system_identifier, wal_segsize=cf.wal_segsize, timeline=cf.timeline,
              insert_lsn=insert_lsn, write_lsn=insert_lsn, flush_lsn=insert_lsn,
              last_record_lsn=last_record_lsn, redo_lsn=cf.redo_lsn, checkpoint_lsn=cf.checkpoint_lsn,
              in_recovery=1 if in_recovery else 0, accepting_writes=0 if in_recovery else 1,
              last_switch_mono_us=int(time.monotonic() * 1e6))


@dataclass
class Standby(StandbyTimelines, SegmentSources):
    ctx: ChildContext
    cf: ControlFile
    flags: Flags = field(default_factory=Flags)
    history: list[TimelineHistoryEntry] = field(default_factory=list)  # ancestors of target_tli
    target_tli: int = 1
    last_round: float = -1e9            # monotonic time of the last archive round
    logged_error: tuple | None = None
    consistent: bool = False
    restore_pid: int | None = None
    restartpoint_ckpt: int = 0
    failed_at: dict = field(default_factory=dict)   # file -> monotonic time of its last failed restore
    restored_for: dict = field(default_factory=dict)  # file -> (reader position, time) of its last restore
    fetch_pos: int = 0
    private_copies: dict = field(default_factory=dict)  # segno -> restored file kept out of pg_wal
    streamed_once: bool = False
    last_rescan: float = field(default_factory=time.monotonic)
    timeline_end_seen: bool = False                  # streaming given up with the walreceiver WAITING
    last_pg_wal_try: tuple | None = None             # (reader position, segno) last read from pg_wal
    walrcv_requested_at: float = -1e9               # monotonic time of the last walreceiver request
    published_at: float = 0.0                       # monotonic time replay_lsn was last published
    reply_forced_at: int = 0                        # replay position we last forced a reply for
    wait_event_segno: int = -1                      # segment of the last wal_wait event (walreceiver_restores)
    mapped: tuple | None = None                     # (path, (dev, ino, size), mapping) of the segment being read
    replay_owed: bool = False                       # reader ran dry, batch not yet applied and published

    def __post_init__(self) -> None:
        self.datadir = self.ctx.datadir
        self.pg_wal = os.path.join(self.datadir, "pg_wal")
        self.segsize = self.cf.wal_segsize
        self.cfg = self.ctx.config
        self.policy = make_policy(self.cfg["standby_wal_coordination"], self)
        self.latch = self.ctx.shared.latches["startup"]
        self.trace = lagtrace.start(self.datadir, "startup", self.cfg)

    # ================================================================ signals
    def install_signals(self) -> None:
        def on_term(*_: object) -> None:
            self.flags.shutdown = True
            self.latch.set()

        def on_promote(*_: object) -> None:
            self.flags.promote = True
            self.latch.set()

        def on_hup(*_: object) -> None:
            self.flags.reload = True
            self.latch.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGUSR2, on_promote)
        signal.signal(signal.SIGHUP, on_hup)

    def promote_requested(self) -> bool:
        if self.flags.promote:
            return True
        trig = self.cfg["promote_trigger_file"]
        if trig and os.path.exists(trig if os.path.isabs(trig) else os.path.join(self.datadir, trig)):
            self.flags.promote = True
        if os.path.exists(os.path.join(self.datadir, "promote")) or self.ctx.shared.recovery.get("promote_requested"):
            self.flags.promote = True
        return self.flags.promote

    def check_interrupts(self) -> None:
        if self.flags.shutdown:
            raise Shutdown()
        if not self.ctx.postmaster_alive():
            os._exit(1)
        if self.flags.reload:
            self.flags.reload = False
            try:
                self.cfg = cfgmod.load(self.datadir, [(k, str(v)) for k, v in self.cfg.values.items()
                                                      if self.cfg.sources.get(k) == "command line"])
                self.ctx.config = self.cfg
            except cfgmod.ConfigError as e:
                log.error("configuration file was not reloaded: %s", e)
        if self.promote_requested():
            raise Promote()

    def sleep(self, timeout: float) -> None:
        """Wait on our latch (walreceiver flushes, signals) for at most timeout seconds."""
        if self.trace.on:
            self.trace.idle()
        self.latch.wait(max(0.0, timeout))

    def pmsignal(self, **flags: int) -> None:
        self.ctx.shared.pm.update(**flags)
        try:
            os.kill(self.ctx.shared.postmaster_pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    # ================================================================ state
    @property
    def state(self) -> RecoveryState:
        return RecoveryState(self.ctx.shared.recovery.get("state"))

    def transition(self, new: RecoveryState, reason: str, source: WalSource | None = None) -> None:
        set_state(self.ctx, new, reason, source)

    # ---------------------------------------------------------------- walreceiver control
    def walrcv(self) -> dict:
        return self.ctx.shared.walrcv.read("state", "pid", "flushed_lsn", "received_tli", "receive_start",
                                           "receive_start_tli")

    def walrcv_running(self) -> bool:
        w = self.walrcv()
        return WalRcvState(w["state"]) != WalRcvState.STOPPED

    def stream_has(self, pos: int) -> bool:
        """Has the walreceiver flushed WAL past pos on a timeline we expect there?"""
        w = self.walrcv()
        return (WalRcvState(w["state"]) in (WalRcvState.STREAMING, WalRcvState.WAITING, WalRcvState.RESTARTING)
                and w["flushed_lsn"] > pos and w["received_tli"] in self.tli_for_segment(segno_of(pos, self.segsize)))

    def stream_ready(self, pos: int) -> bool:
        """Is streaming established for pos: WAL there already, or a live stream that will bring it?"""
        if self.stream_has(pos):
            return True
        w = self.walrcv()
        return (WalRcvState(w["state"]) == WalRcvState.STREAMING and w["receive_start"] <= pos
                and w["received_tli"] in self.tli_for_segment(segno_of(pos, self.segsize)))

    def request_walreceiver(self, pos: int) -> None:
        """Ask for streaming from the start of pos's segment (as PostgreSQL's RequestXLogStreaming)."""
        start = segment_start(segno_of(pos, self.segsize), self.segsize)
        tli = self.tli_of_lsn(pos)
        wr = self.ctx.shared.walrcv
        with wr.locked():
            st = WalRcvState(wr.get("state"))
            if st in (WalRcvState.STREAMING, WalRcvState.STARTING, WalRcvState.RESTARTING):
                return
            wr.set(receive_start=start, receive_start_tli=tli)
            if st == WalRcvState.WAITING:
                wr.set(state=int(WalRcvState.RESTARTING))
                restart = True
            else:
                # As RequestXLogStreaming: the received position starts over only at the first start
                # or on another timeline; otherwise what was flushed before stays flushed (and shown).
                if wr.get("receive_start") == 0 or wr.get("received_tli") != tli:
                    wr.set(flushed_lsn=start, written_lsn=start, latest_chunk_start=start, received_tli=tli)
                wr.set(state=int(WalRcvState.STARTING))
                restart = False
        self.walrcv_requested_at = time.monotonic()
        self.ctx.events.emit("walreceiver_request", start=format_lsn(start), tli=tli, restart=restart)
        if restart:
            self.ctx.shared.latches["walreceiver"].set()
        else:
            self.pmsignal(start_walreceiver=1)

    def stop_walreceiver(self, reason: str, timeout: float = 30.0) -> None:
        """PostgreSQL's ShutdownWalRcv: SIGTERM it and wait until it reports STOPPED."""
        w = self.walrcv()
        if WalRcvState(w["state"]) == WalRcvState.STOPPED:
            return
        self.ctx.events.emit("walreceiver_stop_request", reason=reason, pid=w["pid"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = self.walrcv()
            st = WalRcvState(w["state"])
            if st == WalRcvState.STOPPED:
                return
            if w["pid"]:
                try:
                    os.kill(w["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
            elif st == WalRcvState.STARTING and time.monotonic() - self.walrcv_requested_at > 10:
                # Requested but never started (the postmaster refused): give up on it.
                self.ctx.shared.walrcv.update(state=int(WalRcvState.STOPPED))
                return
            if self.flags.shutdown:
                raise Shutdown()
            self.sleep(0.05)
        raise RestoreFatal("walreceiver did not stop in time")

    # ---------------------------------------------------------------- the machine
    def wait_for_wal(self, reader: WalReader) -> None:
        """Reader has no next record at reader.next_lsn: fetch more WAL (blocking) per state and policy."""
        pos = reader.next_lsn
        if reader.error:
            # The source of the segment being read failed: fetch that segment anew.
            need = max(pos, segment_start(self.reading[1], self.segsize))
            bad = self.private_copies.pop(self.reading[1], None)
            if bad is not None:
                os.unlink(bad)   # a private archive copy that does not validate: never again
            key = (pos, reader.error)
            if key != self.logged_error:
                log.info("%s", reader.error)
                self.ctx.events.emit("wal_invalid", lsn=format_lsn(pos), error=reader.error,
                                     source=WalSource(self.ctx.shared.recovery.get("wal_source")).name.lower())
                self.logged_error = key
        else:
            need = reader.waiting_for if reader.waiting_for is not None else pos
        segno = segno_of(need, self.segsize)
        self.fetch_pos = pos
        interval = self.cfg["wal_retrieve_retry_interval"] / 1000.0
        conninfo = bool(self.cfg["primary_conninfo"])
        failed_here = bool(reader.error)
        if not self.policy.startup_restores:
            self.wait_walreceiver_fetch(reader, need, failed_here)
            return
        while True:
            self.check_interrupts()
            st = self.state
            if st == RecoveryState.STREAMING:
                if not failed_here and self.stream_has(need):
                    reader.read_upto = self.ctx.shared.walrcv.get("flushed_lsn")
                    if self.trace.on:
                        self.trace.note("startup_woken", reader.read_upto)
                    return
                w = self.walrcv()
                wst = WalRcvState(w["state"])
                # A walreceiver back in STARTING is reconnecting (concurrent): the stream is lost.
                if not failed_here and wst in (WalRcvState.STREAMING, WalRcvState.RESTARTING):
                    set_title(f"startup waiting for {segment_name(self.tli_of_lsn(need), segno, self.segsize)}")
                    self.sleep(1.0)
                    continue
                # The stream is gone (or what it gave us is invalid).
                if wst == WalRcvState.WAITING:
                    self.timeline_end_seen = True     # the primary ended it at the end of its timeline
                log.debug("switched WAL source from stream to archive after failure")
                self.policy.stream_lost()
                reader.read_upto = None
                failed_here = False
                if self.rescan_due(interval) and self.rescan_latest_timeline(pos):
                    # A newer timeline: look for its WAL at once, as PostgreSQL does when
                    # rescanLatestTimeLine finds one after streaming failed.
                    if self.walrcv_running():
                        self.policy.timeline_changed()
                    self.transition(RecoveryState.RETRY_ARCHIVE, "new timeline found")
                    continue
                self.after_round_wait(interval, "streaming stopped")
                continue
            if st in (RecoveryState.ARCHIVE_RECOVERY, RecoveryState.RETRY_ARCHIVE):
                self.last_round = time.monotonic()
                if self.state == RecoveryState.RETRY_ARCHIVE and self.rescan_due(interval):
                    self.settle_replay()
                    if self.rescan_latest_timeline(pos):
                        if self.walrcv_running():
                            self.policy.timeline_changed()
                reader.read_upto = None
                # A complete segment already in pg_wal (restored or streamed before a
                # restart) is read from there: PostgreSQL would fetch it again.
                if not failed_here and self.pg_wal_complete(segno) and self.last_pg_wal_try != (pos, segno):
                    self.settle_replay()
                    self.last_pg_wal_try = (pos, segno)
                    self.transition(st, "complete segment present in pg_wal", WalSource.PG_WAL)
                    return
                # What replay owes is applied while restore_command copies (or now, if none runs).
                restored = self.try_archive(segno, meanwhile=self.settle_replay)
                self.settle_replay()
                if restored:
                    self.transition(st, "restored from archive", WalSource.ARCHIVE)
                    return
                if not failed_here and self.pg_wal_has(segno) and self.last_pg_wal_try != (pos, segno):
                    self.last_pg_wal_try = (pos, segno)
                    self.transition(st, "segment present in pg_wal", WalSource.PG_WAL)
                    return
                failed_here = False
                if conninfo:
                    self.policy.archive_dry(need)
                    if self.stream_ready(need):
                        self.transition(RecoveryState.STREAMING, "walreceiver has the WAL", WalSource.STREAM)
                        continue
                    if st == RecoveryState.ARCHIVE_RECOVERY:
                        self.transition(RecoveryState.RETRY_ARCHIVE, "archive has no next segment; walreceiver requested")
                self.transition(RecoveryState.WAIT_RETRY, "no WAL available from any source")
                continue
            if st == RecoveryState.WAIT_RETRY:
                if conninfo and self.stream_ready(need):
                    self.transition(RecoveryState.STREAMING, "streaming established", WalSource.STREAM)
                    continue
                remaining = self.last_round + interval - time.monotonic()
                if remaining <= 0 and self.policy.may_retry_archive():
                    self.transition(RecoveryState.RETRY_ARCHIVE, "wal_retrieve_retry_interval passed")
                    continue
                if conninfo and not self.walrcv_running() and not self.policy.startup_restores:
                    self.policy.archive_dry(need)
                set_title(f"startup waiting for {segment_name(self.tli_of_lsn(need), segno, self.segsize)}")
                self.sleep(max(0.01, min(remaining if remaining > 0 else 0.2, 1.0)))
                continue
            raise RuntimeError(f"wait_for_wal in state {st.name}")

    def wait_walreceiver_fetch(self, reader: WalReader, need: int, failed: bool) -> None:
        """walreceiver_restores: the walreceiver fetches (archive or stream); we read up to its flush.

        Our state mirrors where the walreceiver gets WAL from (``fetch_source``):
        archive -> ARCHIVE_RECOVERY until it first streamed, RETRY_ARCHIVE after;
        stream -> STREAMING; nothing yet -> WAIT_RETRY.
        """
        if failed:
            # What it gave us does not validate: have it fetch that segment again.
            self.request_refetch(need)
        # Tell the walreceiver where our reader waits: it restores on demand from there.
        self.ctx.shared.walrcv.update(startup_wait_lsn=need)
        segno = segno_of(need, self.segsize)
        if segno != self.wait_event_segno:
            # Once per segment: when the startup began to need it (prefetch is measured against this).
            self.wait_event_segno = segno
            self.ctx.events.emit("wal_wait", lsn=format_lsn(need), segno=segno)
        self.ctx.shared.latches["walreceiver"].set()
        interval = self.cfg["wal_retrieve_retry_interval"] / 1000.0
        while True:
            self.check_interrupts()
            w = self.ctx.shared.walrcv.read("state", "flushed_lsn", "fetch_source", "received_tli", "restore_fatal")
            if w["restore_fatal"]:
                # The walreceiver's restore_command died as PostgreSQL treats as fatal for recovery.
                raise RestoreFatal("recovery stopped: restore_command failed fatally in the walreceiver")
            wst = WalRcvState(w["state"])
            if wst == WalRcvState.WAITING or (wst != WalRcvState.STREAMING and self.rescan_due(interval)):
                # End of its timeline (or time to look): a newer timeline, then restart on it.
                if self.rescan_latest_timeline(self.fetch_pos) or wst == WalRcvState.WAITING:
                    self.request_walreceiver(need)
            if wst == WalRcvState.STOPPED and time.monotonic() - self.walrcv_requested_at >= interval:
                # Paced: a walreceiver that keeps failing is not forked again every few milliseconds.
                self.request_walreceiver(need)
            src = WalSource(w["fetch_source"]) if w["fetch_source"] in (0, 1, 2, 3) else WalSource.NONE
            self.mirror_walreceiver(src)
            if wst != WalRcvState.STOPPED and w["flushed_lsn"] > need:
                reader.read_upto = w["flushed_lsn"]
                return
            set_title(f"startup waiting for WAL at {format_lsn(need)}")
            self.sleep(1.0)

    def mirror_walreceiver(self, src: WalSource) -> None:
        st = self.state
        if src == WalSource.STREAM:
            self.streamed_once = True
            want = RecoveryState.STREAMING
        elif src == WalSource.ARCHIVE:
            want = RecoveryState.RETRY_ARCHIVE if (self.streamed_once or st != RecoveryState.ARCHIVE_RECOVERY) \
                else RecoveryState.ARCHIVE_RECOVERY
        else:
            want = st if st == RecoveryState.ARCHIVE_RECOVERY else RecoveryState.WAIT_RETRY
        if want != st:
            if want not in TRANSITIONS[st]:
                # e.g. STREAMING -> ARCHIVE_RECOVERY is not a transition: it is a retry.
                want = RecoveryState.RETRY_ARCHIVE if st != RecoveryState.RETRY_ARCHIVE else st
            if want != st:
                self.transition(want, f"walreceiver fetches from {src.name.lower()}",
                                src if src != WalSource.NONE else None)
        elif src != WalSource.NONE and WalSource(self.ctx.shared.recovery.get("wal_source")) != src:
            self.transition(st, f"walreceiver fetches from {src.name.lower()}", src)

    def request_refetch(self, need: int) -> None:
        """Ask a running walreceiver to fetch again from the start of need's segment."""
        start = segment_start(segno_of(need, self.segsize), self.segsize)
        wr = self.ctx.shared.walrcv
        with wr.locked():
            if WalRcvState(wr.get("state")) == WalRcvState.STOPPED:
                return
            wr.set(receive_start=start, receive_start_tli=self.tli_of_lsn(need),
                   state=int(WalRcvState.RESTARTING), flushed_lsn=min(wr.get("flushed_lsn"), start))
        self.ctx.events.emit("walreceiver_refetch", start=format_lsn(start))
        self.ctx.shared.latches["walreceiver"].set()

    def after_round_wait(self, interval: float, reason: str) -> None:
        """Leave STREAMING: retry the archive now if the interval allows, else wait it out."""
        if time.monotonic() - self.last_round >= interval and self.policy.may_retry_archive():
            self.transition(RecoveryState.RETRY_ARCHIVE, reason)
        else:
            self.transition(RecoveryState.WAIT_RETRY, reason)

    # ================================================================ replay
    def run(self) -> int:
        self.install_signals()
        log.info("entering standby mode")
        self.ctx.events.emit("standby_start", coordination=self.policy.name)
        self.pmsignal(recovery_started=1)
        self.setup_timeline()
        if self.cf.state not in (DBState.IN_ARCHIVE_RECOVERY, DBState.SHUTDOWNED_IN_RECOVERY):
            self.cf = self.cf.with_changes(state=DBState.IN_ARCHIVE_RECOVERY)
            write_control(self.datadir, self.cf)
        for name in os.listdir(self.pg_wal):
            if name.startswith("RECOVERYXLOG."):
                os.unlink(os.path.join(self.pg_wal, name))   # a restore cut short by a crash
        self.store = KVStore(os.path.join(self.datadir, "base", "kv.sqlite"))
        self.store.checkpoint_in_background()
        self.redo = Redo(self.store, self.cf.timeline)
        self.reading = (self.cf.timeline, segno_of(self.cf.checkpoint_lsn, self.segsize))
        self.transition(RecoveryState.ARCHIVE_RECOVERY, "standby mode", WalSource.ARCHIVE)
        with self.ctx.shared.xlog.locked() as x:
            x.set(system_identifier=self.cf.system_identifier, wal_segsize=self.segsize,
                  timeline=self.cf.timeline, in_recovery=1, accepting_writes=0)
        reader = WalReader(self.open_segment, self.segsize, self.cf.timeline, self.cf.checkpoint_lsn,
                           expected_sysid=self.cf.system_identifier)
        try:
            ckpt_rec = self.next_record(reader, replaying=False)
            if ckpt_rec.rmid != C.RM_XLOG_ID or ckpt_rec.rm_info not in (C.XLOG_CHECKPOINT_SHUTDOWN,
                                                                         C.XLOG_CHECKPOINT_ONLINE):
                raise RestoreFatal(f"could not locate a valid checkpoint record at {format_lsn(self.cf.checkpoint_lsn)}")
            ckpt = CheckPoint.unpack(ckpt_rec.main_data)
            reader.begin_read(ckpt.redo)
            log.info("redo starts at %s", format_lsn(ckpt.redo))
            self.ctx.events.emit("redo_start", lsn=format_lsn(ckpt.redo))
            self.check_consistency(ckpt.redo)
            self.replay_loop(reader)
        except Promote:
            return self.promote(reader)
        except Shutdown:
            self.flush_replay()
            self.store.close()
            log.debug("startup process shutting down")
            return 0
        except RestoreFatal as e:
            log.critical("%s", e)
            return 1

    def next_record(self, reader: WalReader, replaying: bool = True):
        """The next record, waiting for WAL (per state and policy) when the reader has none."""
        while True:
            rec = reader.read_record()
            if rec is not None:
                return rec
            if replaying:
                # Replayed all we had: make it visible and reported now (replay lag).  While
                # streaming this is once per refresh of read_upto, so rarely when far behind.
                # Before an archive attempt it is owed instead and paid while restore_command
                # runs (wait_for_wal): the store's apply overlaps the command's copy.
                self.replay_owed = True
                if not self.archive_next():
                    self.settle_replay()
            if self.state == RecoveryState.STREAMING:
                # The walreceiver may have flushed more since read_upto was set.
                upto = self.ctx.shared.walrcv.get("flushed_lsn")
                if upto != reader.read_upto:
                    reader.read_upto = upto
                    if self.trace.on:
                        self.trace.note("startup_woken", upto)
                    continue
            if self.flags.promote or self.promote_requested():
                raise Promote()
            self.wait_for_wal(reader)

    def replay_loop(self, reader: WalReader) -> None:
        """Replay's hot loop: read a record, apply it; the rest only when the reader runs dry.

        A shutdown request is noticed after each batch of records (at most
        ``read_records``' limit, well under a millisecond of replay); a promotion
        request (like the trigger file) only when WAL runs out, as PostgreSQL's.
        """
        read = reader.read_records
        redo = self.redo
        apply_records = redo.apply_records
        flags = self.flags
        flushes = redo.flushes
        while True:
            recs = read()
            if not recs:
                recs = (self.next_record(reader),)
            if self.trace.on:
                self.note_commits(recs)
            i, n = 0, len(recs)
            while i < n:
                i = apply_records(recs, i)
                if i < n:
                    self.replay(recs[i])     # an XLOG record: checkpoints make restartpoints
                    i += 1
            if flags.shutdown:
                raise Shutdown()
            if not self.consistent:
                self.check_consistency(recs[-1].next_lsn)
            if redo.flushes != flushes:
                # A batch reached the store: make it visible.
                flushes = redo.flushes
                self.publish_replay()

    def replay(self, rec) -> None:
        """Replay one record (any kind); restartpoints at checkpoints."""
        self.redo.apply(rec)
        if rec.rmid == C.RM_XLOG_ID and rec.rm_info in (C.XLOG_CHECKPOINT_SHUTDOWN, C.XLOG_CHECKPOINT_ONLINE):
            self.flush_replay()
            self.restartpoint(rec, CheckPoint.unpack(rec.main_data))
        elif rec.rmid == C.RM_XLOG_ID and rec.rm_info == C.XLOG_END_OF_RECOVERY:
            self.flush_replay()
        if not self.consistent:
            self.check_consistency(rec.next_lsn)
        if not self.redo.pending and time.monotonic() - self.published_at > 0.2:
            self.publish_replay()

    def archive_next(self) -> bool:
        """Will wait_for_wal try the archive first (no other wait before it)?"""
        return self.policy.startup_restores and self.state in (RecoveryState.ARCHIVE_RECOVERY,
                                                                RecoveryState.RETRY_ARCHIVE)

    def settle_replay(self) -> None:
        """Pay an owed flush (next_record): apply the batch, publish, tell the walreceiver."""
        if self.replay_owed:
            self.replay_owed = False
            self.flush_replay()
            self.force_walreceiver_reply()

    def note_commits(self, recs) -> None:
        for rec in recs:
            if rec.rmid == C.RM_XACT_ID:
                self.trace.note("decoded", rec.next_lsn)

    def force_walreceiver_reply(self) -> None:
        """Replayed all we had: let the walreceiver tell the primary now (PostgreSQL's WalRcvForceReply),
        so replay_lag measures replay, not the gap until its next status message."""
        end = self.redo.last_end_lsn
        if not end or end == self.reply_forced_at:
            return
        self.reply_forced_at = end
        wr = self.ctx.shared.walrcv
        if WalRcvState(wr.get("state")) == WalRcvState.STREAMING:
            wr.update(force_reply=1)
            self.ctx.shared.latches["walreceiver"].set()

    def flush_replay(self) -> None:
        self.redo.flush()
        self.publish_replay()

    def publish_replay(self) -> None:
        end = self.redo.last_end_lsn
        if not end:
            return
        if self.redo.pending:
            return  # the store does not show these yet
        self.published_at = time.monotonic()
        # The segment being read holds the last record replayed: its timeline is replay's.
        if self.trace.on:
            self.trace.note("applied", end)
        self.ctx.shared.recovery.update(replay_lsn=end, replay_tli=self.reading[0],
                                        last_replay_time_us=int(time.time() * 1e6))
        if not self.consistent:
            self.check_consistency(end)

    def check_consistency(self, lsn: int) -> None:
        if self.consistent:
            return
        # redo.applied_lsn is the store's applied position (only redo writes it).
        target = max(self.cf.min_recovery_point, self.redo.applied_lsn)
        if lsn >= target:
            self.consistent = True
            log.info("consistent recovery state reached at %s", format_lsn(lsn))
            self.ctx.events.emit("consistent", lsn=format_lsn(lsn))
            self.ctx.shared.recovery.update(consistent=1)
            self.pmsignal(hot_standby_ready=1)

    def restartpoint(self, rec, ckpt: CheckPoint) -> None:
        """Every replayed checkpoint becomes a restartpoint (store synced, control file updated)."""
        self.store.sync()
        cf = self.cf = self.cf.with_changes(
            checkpoint_lsn=rec.lsn, redo_lsn=ckpt.redo, timeline=self.reading[0],
            min_recovery_point=max(self.cf.min_recovery_point, rec.next_lsn),
            min_recovery_point_tli=self.reading[0], next_xid=max(self.cf.next_xid, ckpt.next_xid))
        write_control(self.datadir, cf)
        self.ctx.events.emit("restartpoint", lsn=format_lsn(rec.lsn), redo=format_lsn(ckpt.redo))
        log.debug("recovery restart point at %s", format_lsn(ckpt.redo))
        self.remove_old_segments(segno_of(ckpt.redo, self.segsize))
        self.drop_private_copies(segno_of(rec.lsn, self.segsize))

    def remove_old_segments(self, redo_segno: int) -> None:
        keep = self.cfg["wal_keep_size"] * 1024 * 1024 // self.segsize
        cutoff = redo_segno - keep
        status = os.path.join(self.pg_wal, "archive_status")
        for name in os.listdir(self.pg_wal):
            if not is_segment_name(name):
                continue
            _tli, s = parse_segment_name(name, self.segsize)
            if s >= cutoff:
                continue
            if os.path.exists(os.path.join(status, name + ".ready")):
                continue  # archive_mode = always and not archived yet
            try:
                os.unlink(os.path.join(self.pg_wal, name))
            except FileNotFoundError:
                pass
            for suffix in (".done",):
                try:
                    os.unlink(os.path.join(status, name + suffix))
                except FileNotFoundError:
                    pass

    # ================================================================ promotion
    def promote(self, reader: WalReader) -> int:
        """Finish what pg_wal (and the archive) hold, stop streaming, start a new timeline."""
        log.info("received promote request")
        self.transition(RecoveryState.PROMOTING, "promote requested")
        self.stop_walreceiver("promotion")
        # Replay what is already available; never wait for more.
        reader.read_upto = None
        while True:
            rec = reader.read_record()
            if rec is None:
                segno = segno_of(reader.next_lsn, self.segsize)
                if not reader.error and self.policy.startup_restores and self.try_archive(segno):
                    continue
                break
            self.replay(rec)
        self.flush_replay()
        if reader.error:
            log.info("%s", reader.error)
        end_lsn = reader.end_of_valid_wal
        last_lsn = reader.last_record_lsn
        old_tli = self.reading[0] if reader.last_record_lsn else self.cf.timeline
        log.info("redo done at %s", format_lsn(last_lsn))
        # A new timeline: one above any we know of (archive included).
        new_tli = self.target_tli + 1
        while self.fetch_history(new_tli) is not None:
            new_tli += 1
        log.info("selected new timeline ID: %d", new_tli)
        entries = list(self.history_for(old_tli)) + [
            TimelineHistoryEntry(old_tli, end_lsn, "no recovery target specified")]
        write_history_file(self.pg_wal, new_tli, entries)
        hist = history_file_name(new_tli)
        archive_status.mark_ready(self.pg_wal, hist)
        end_segno = segno_of(end_lsn, self.segsize)
        old_name = segment_name(old_tli, end_segno, self.segsize)
        if end_lsn % self.segsize and os.path.exists(os.path.join(self.pg_wal, old_name)):
            copy_segment_prefix(self.pg_wal, old_tli, new_tli, end_segno, end_lsn, self.segsize)
            # PostgreSQL keeps the old timeline's last, partial segment as .partial and archives it.
            partial = old_name + ".partial"
            os.replace(os.path.join(self.pg_wal, old_name), os.path.join(self.pg_wal, partial))
            for suffix in (".done", ".ready"):
                try:
                    os.unlink(os.path.join(self.pg_wal, "archive_status", old_name + suffix))
                except FileNotFoundError:
                    pass
            archive_status.mark_ready(self.pg_wal, partial)
        writer = WalWriter(self.pg_wal, new_tli, self.segsize, self.cf.system_identifier, end_lsn, last_lsn)
        eor = EndOfRecovery(end_time=timestamptz_now(), this_tli=new_tli, prev_tli=old_tli)
        start, _ = writer.insert(C.RM_XLOG_ID, C.XLOG_END_OF_RECOVERY, 0, eor.pack())
        redo = writer.next_record_lsn
        ckpt = CheckPoint(redo=redo, this_tli=new_tli, prev_tli=new_tli, next_xid=max(self.cf.next_xid, self.redo.max_xid + 1),
                      time=int(time.time()))
        self.store.sync()
        ck_start, _ = writer.insert(C.RM_XLOG_ID, C.XLOG_CHECKPOINT_ONLINE, 0, ckpt.pack())
        writer.flush()
        insert_lsn = writer.insert_lsn
        writer.close()
        self.store.close()
        cf = self.cf = self.cf.with_changes(
            state=DBState.IN_PRODUCTION, timeline=new_tli, prev_timeline=old_tli, checkpoint_lsn=ck_start,
            redo_lsn=redo, next_xid=ckpt.next_xid, min_recovery_point=0, min_recovery_point_tli=0)
        write_control(self.datadir, cf)
        for name in ("standby.signal", "promote"):
            try:
                os.unlink(os.path.join(self.datadir, name))
            except FileNotFoundError:
                pass
        trig = self.cfg["promote_trigger_file"]
        if trig:
            try:
                os.unlink(trig if os.path.isabs(trig) else os.path.join(self.datadir, trig))
            except FileNotFoundError:
                pass
        publish_end_of_wal(self.ctx.shared, cf, insert_lsn, ck_start, in_recovery=False)
        self.ctx.shared.recovery.update(timeline=new_tli, promote_requested=0)
        log.info("archive recovery complete")
        self.ctx.events.emit("promoted", tli=new_tli, switchpoint=format_lsn(end_lsn), prev_tli=old_tli)
        self.transition(RecoveryState.DONE, "promoted")
        return 0

    def history_for(self, tli: int) -> list[TimelineHistoryEntry]:
        """Entries of the history file of a timeline we are on (its ancestors)."""
        out = []
        for e in self.history:
            if e.tli >= tli:
                break
            out.append(e)
        return out


def run_standby(ctx: ChildContext, cf: ControlFile) -> int:
    standby = Standby(ctx, cf)
    try:
        return standby.run()
    except RestoreFatal as e:
        log.critical("%s", e)
        return 1
    except Shutdown:
        return 0
    finally:
        standby.trace.flush()
