"""The walreceiver: streams WAL from the primary into pg_wal (PostgreSQL 15's walreceiver.c, our code),
and under ``standby_wal_coordination = walreceiver_restores`` also restores it from the archive.

Forked by the postmaster when the startup process asks for it, run as
``main(ctx)``.  It owns: the replication connection (walreceiver/
libpqwalreceiver.py: real libpq through psycopg's ``pq`` layer, the
replication messages from libpq/protocol.py; the commands before and after a
stream in walreceiver/conversation.py; the receive loop in
walreceiver/streaming.py), the segment files it is
writing in ``DIR/pg_wal`` (open descriptors, at most the current and a
just-completed one), the ``archive_status`` mark of each segment or history
file it completes or restores, the restore_command runs of
``walreceiver_restores`` (threads, one per segment in flight), and the
walreceiver fields of ``shared.walrcv`` except the start request.

States (``WalRcvState``, stored in ``shared.walrcv.state``).  ``TRANSITIONS``
below is the one table of allowed changes, and ``set_walrcv_state`` the one
function that makes one here: it checks the table, stores the state (and any
fields given with it) under the region's lock, logs at DEBUG and emits a
``walreceiver_state`` event (from, to, reason)::

    STOPPED ──startup: request (receive_start, receive_start_tli)──> STARTING
    STARTING ──connected, IDENTIFY_SYSTEM ok, START_REPLICATION in copy mode──> STREAMING
    STREAMING ──the primary ended the copy (end of its timeline)──> WAITING
    WAITING ──startup: new start point on the next timeline──> RESTARTING
    RESTARTING ──START_REPLICATION again on the same connection──> STREAMING
    STARTING / RESTARTING ──the primary has no WAL after that point on that timeline──> WAITING
    STREAMING / RESTARTING ──stream lost or impossible (concurrent, walreceiver_restores)──> STARTING
    any running state ──startup: refetch from a start point (walreceiver_restores)──> RESTARTING ──> STARTING
    any running state ──SIGTERM──> STOPPING ──> STOPPED (exit 1)
    any running state ──FATAL (stop_walreceiver: connect failed, connection lost, timeout, ...)──> STOPPED (exit 1)
    any running state ──a WAL file write or fsync fails (PostgreSQL: PANIC)──> STOPPED (exit 3: a crash)

What a lost or impossible stream leads to depends on ``standby_wal_coordination``:

* ``stop_walreceiver`` (PostgreSQL): FATAL, exit 1; the startup starts a new walreceiver later.
* ``concurrent``: the walreceiver stays.  It logs the FATAL line at LOG level
  (after a lost stream, then at most once per ``wal_retrieve_retry_interval``),
  emits ``walreceiver_disconnect`` (if it had a stream), goes back to STARTING
  ("reconnecting"), waits 50 ms, doubled after each failed attempt up to
  0.5 s (RECONNECT_FIRST, RECONNECT_MAX; SIGTERM, postmaster death and its
  latch cut the wait short) and connects again at the segment
  start of max(its flushed position, the startup's replay position), on the
  newest timeline of the startup's target history (``shared.recovery.timeline``
  and its history file in pg_wal) that holds that segment.  Only a primary of
  another system (system identifier) ends it: there is nothing to reconnect to.
* ``walreceiver_restores``: the walreceiver is the only process that fetches
  WAL: it streams while it can, and when it cannot it runs restore_command
  itself (walreceiver/restorer.py explains the rounds, prefetch and history
  files).

``fetch_source`` (shared memory, ``shmem.states.WalSource`` numbers) says
where the walreceiver is getting WAL right now: STREAM from START_REPLICATION
until the stream ends, ARCHIVE while it runs restore_command, NONE while it
connects or waits.  Under ``walreceiver_restores`` the startup mirrors it in
its recovery state.

Start requests.  The startup writes ``receive_start`` / ``receive_start_tli``
and STARTING (first start: the postmaster forks us) or RESTARTING (we run: it
sets our latch).  RESTARTING after WAITING continues on the same connection.
RESTARTING while we stream or restore (``walreceiver_restores`` asks for this
when a segment we gave it does not validate) abandons what we are doing:
in-flight restores are cancelled, the connection is closed, our flushed
position moves back to the new start point, and we fetch from there,
preferring the stream (the archive only after the retry interval).

Segment files and the concurrent guard (walreceiver/walwrite.py, the write
side of this class).  Before creating or opening a segment
to write it, the walreceiver writes ``writing_segno`` under the region's lock
(-1 when it writes none); the startup never replaces that file and reads it
only up to ``flushed_lsn``.  With ``concurrent_guard = on`` (default) a
segment file is created only if none exists (``xlog.writer.init_segment_file``:
temp file, link, never overwrite) and written in place otherwise.  With it
off -- for demonstrations only -- each segment is created the naive way: a
fresh zero-filled file renamed over whatever is there.

Unlike PostgreSQL, where the walreceiver says STREAMING as soon as it runs,
ours stays STARTING while it connects; the startup's "never started" check
therefore looks at ``pid`` (0 until we claim the region), not at the state.
If the startup wrote STOPPING or STOPPED while we were busy (it gave up on
us), a transition we attempt is refused (``set_walrcv_state`` returns None)
and we stop.  On every way out but SIGKILL the region is left STOPPED with
pid 0 (the crash-restart cycle recreates shared memory after a SIGKILL); on
postmaster death we leave at once (killing our restore_command processes).

Who wakes whom: after each flush or restored segment we publish
``written_lsn`` / ``flushed_lsn`` (with ``latest_chunk_start``,
``received_tli``, the message times) and set ``latches['startup']`` (and the
latch of every cascading walsender slot in use).  We sleep on our latch
``latches['walreceiver']`` through ``shmem.sync.WaitSet`` together with the
socket, ``ctx.death_fd`` and a self-pipe our signal handlers write to
(SIGTERM: stop; SIGHUP: re-read the settings; SIGUSR1: just wake); the
startup sets it with each request and with ``force_reply`` (PostgreSQL's
WalRcvForceReply: it replayed all it had; we send a status update at once),
our restore threads when they finish.

Streaming, as XLogWalRcvProcessMsg/XLogWalRcvWrite/XLogWalRcvFlush: every
XLogData payload is written straight from the receive buffer into the
segment file at its offset, one ``pwrite`` per message (per segment part, if
a message crosses a segment boundary).  After each batch (everything
readable, at most MAX_BATCH_BYTES): publish written_lsn, fdatasync each
touched file once, publish flushed_lsn, wake the startup, send a status
update (``r``: write, flush, apply = ``shared.recovery.replay_lsn``).  A
completed segment is then closed and marked ``.done`` (``.ready`` under
``archive_mode = always``, as PostgreSQL), with a ``segment_completed``
event.  Keepalives asking for a reply get one at once; a status update goes
out at least every ``wal_receiver_status_interval``; after half of
``wal_receiver_timeout`` without a message we ask the primary for a reply,
and after all of it the stream counts as lost ("terminating walreceiver due
to timeout").  ``wal_receiver_timeout`` also bounds connecting and each
command round trip (PostgreSQL waits there without a bound).

Injection points (``utils.inject``): ``walreceiver_start`` (before the
first connection), ``walreceiver_stop`` (on the way out), ``before_write`` /
``after_write`` (around each XLogData write), ``before_flush`` (written, not
fsynced), ``after_flush`` (fsynced, not yet published), and under
``walreceiver_restores`` ``before_restore`` / ``after_restore`` (before a
restore_command starts; the restored file in place, not yet published).
Whether anything is armed is checked once per received batch (one stat of
``DIR/inject/arm``), so an unarmed point costs an attribute test.
"""
from __future__ import annotations

import math
import os
import signal
import time

from shmem.states import WalRcvState, WalSource
from shmem.sync import WaitSet
from utils import config as cfgmod
from utils import elog, lagtrace
from utils.inject import InjectedError, inject
from utils.proc import ChildContext, set_title
from walreceiver.errors import Fatal, Panic, PostmasterDied, RestartRequested, RestoreFailed, StopRequested
from walreceiver.conversation import PrimaryCommands
from walreceiver.libpqwalreceiver import ConnectionLost, TimeoutExpired, WalRcvConn, WalRcvError
from walreceiver.restorer import ArchiveRestorer, RestoreJob
from walreceiver.streaming import ReceiveLoop, now_us
from walreceiver.walwrite import WalWrite
from xlog.control import ControlFileError, read_control
from xlog.history import HistoryError, read_history
from xlog.lsn import format_lsn, history_file_name, segment_start, segno_of

log = elog.logger()

S = WalRcvState
TRANSITIONS: dict[WalRcvState, set[WalRcvState]] = {
    S.STOPPED: {S.STARTING},                                    # startup requests a start
    S.STARTING: {S.STREAMING, S.WAITING, S.STOPPING, S.STOPPED},
    S.STREAMING: {S.WAITING, S.STARTING, S.STOPPING, S.STOPPED},  # STARTING: stream lost, we stay
    S.WAITING: {S.RESTARTING, S.STOPPING, S.STOPPED},            # RESTARTING: startup
    S.RESTARTING: {S.STREAMING, S.WAITING, S.STARTING, S.STOPPING, S.STOPPED},
    S.STOPPING: {S.STOPPED},
}

# concurrent and walreceiver_restores reconnect on their own schedule: after a lost stream the
# first attempt comes RECONNECT_FIRST seconds later, each failure doubles the wait up to
# RECONNECT_MAX (never above wal_retrieve_retry_interval), so a primary that returns is streamed
# from within half a second whatever the outage's length (issue 11: 4.7 s p50 with the retry
# interval's 5 s), at the cost of a refused TCP connect twice a second while it is away.
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 0.5


def _state_name(s: WalRcvState) -> str:
    return s.name.lower()


def set_walrcv_state(ctx: ChildContext, new: WalRcvState, reason: str, *,
                     taken: tuple[int, int] | None | bool = False, **fields: object) -> WalRcvState | None:
    """The one place the walreceiver changes its state: check, store (with fields), log, record.

    Returns the previous state.  Returns None, changing nothing, when the
    startup process has meanwhile written STOPPING or STOPPED and the table
    does not allow ``new`` from there: a stop is pending.  Any other
    transition outside the table is a bug and raises.

    ``taken`` (False: do not check) is the (receive_start, receive_start_tli)
    of the RESTARTING request we are acting on, or None if we took none: when
    the region says RESTARTING with another request, the startup asked for a
    new start point meanwhile; nothing changes and RestartRequested is raised
    (a stop still wins).
    """
    wr = ctx.shared.walrcv
    with wr.locked():
        old = WalRcvState(wr.get("state"))
        pending = (taken is not False and old == S.RESTARTING and new not in (S.STOPPING, S.STOPPED)
                   and (taken is None or (wr.get("receive_start"), wr.get("receive_start_tli")) != taken))
        if not pending:
            if new != old and new not in TRANSITIONS[old]:
                if old in (S.STOPPING, S.STOPPED):
                    return None
                raise RuntimeError(f"invalid walreceiver state transition {old.name} -> {new.name}")
            wr.set(state=int(new), **fields)
    if pending:
        raise RestartRequested()
    if new != old:
        log.debug("walreceiver state %s -> %s: %s", _state_name(old), _state_name(new), reason)
        ctx.events.emit("walreceiver_state", **{"from": _state_name(old), "to": _state_name(new), "reason": reason})
        # The startup decides on our state (a lost stream, a reconnect): it must not
        # learn of it only at its next timeout.
        ctx.shared.latches["startup"].set()
    return old


class WalReceiver(WalWrite, ArchiveRestorer, PrimaryCommands, ReceiveLoop):
    def __init__(self, ctx: ChildContext):
        self.ctx = ctx
        self.shared = ctx.shared
        self.wr = ctx.shared.walrcv
        self.latch = ctx.shared.latches["walreceiver"]
        self.startup_latch = ctx.shared.latches["startup"]
        self.trace = lagtrace.start(ctx.datadir, "walreceiver", ctx.config)
        self.pg_wal = os.path.join(ctx.datadir, "pg_wal")
        self.cfg = ctx.config
        self.load_settings()
        self.conn: WalRcvConn | None = None
        self.backoff = RECONNECT_FIRST           # next reconnect wait (concurrent, walreceiver_restores)
        self.failure_logged_at = -math.inf       # monotonic time a lost stream was last logged at LOG
        self.got_sigterm = False
        self.got_sighup = False
        self.sig_r = self.sig_w = -1
        self.claimed = False
        self.connected = False
        self.first = True                        # next START_REPLICATION is the first of a connection run
        # Streaming position (PostgreSQL's LogstreamResult) and the current request.
        self.start = 0
        self.tli = 0
        self.request = (0, 0)                    # the startup's last start point (receive_start, tli)
        self.write_ptr = 0
        self.flush_ptr = 0
        self.segsize = 0
        self.sysid = 0
        self.files: dict[int, int] = {}          # segno -> fd, on self.tli
        self.seg_bytes: dict[int, int] = {}      # segno -> bytes written this run
        self.dirty: set[int] = set()
        self.completed: list[int] = []
        # RESTARTING request we act on (WAITING -> RESTARTING -> STREAMING on the same connection).
        self.taken: tuple[int, int] | None = None
        self.awaiting_restart = False
        # walreceiver_restores: restore threads in flight, segments restored but not yet published.
        self.jobs: dict[int, RestoreJob] = {}
        self.restored_ahead: dict[int, tuple[int, str, int]] = {}   # segno -> (tli, file, bytes)
        self.history_tried_at = -math.inf
        self.replay_seen = -1                    # the startup's replay position, and since when it has not moved
        self.replay_seen_at = 0.0
        # Sender message times (ProcessWalSndrMessage), published with each flush.
        self.last_send_time = 0                  # PostgreSQL epoch microseconds
        self.last_recv_us = 0
        self.latest_end = 0
        self.latest_end_time = 0
        self.times_dirty = False
        # Status updates.
        self.last_reply = 0.0
        self.last_reply_write = -1
        self.last_reply_flush = -1
        self.title_at = 0.0
        # Injection points: is anything armed (re-checked once per batch)?
        self.inject_env = bool(os.environ.get("WALSWITCH_INJECT"))
        self.inject_arm_path = os.path.join(ctx.datadir, "inject", "arm")
        self.armed = self.inject_env

    # ------------------------------------------------------------ settings and signals
    def load_settings(self) -> None:
        self.rcv_timeout = self.cfg["wal_receiver_timeout"] / 1000.0
        self.status_interval = float(self.cfg["wal_receiver_status_interval"])
        self.do_fsync = bool(self.cfg["fsync"])
        self.archive_always = self.cfg["archive_mode"] == "always"
        self.mode = self.cfg["standby_wal_coordination"]
        self.guard = bool(self.cfg["concurrent_guard"])
        self.retry_interval = self.cfg["wal_retrieve_retry_interval"] / 1000.0
        self.prefetch = int(self.cfg["walreceiver_restore_prefetch"])

    def reload(self) -> None:
        overrides = [(k, str(v)) for k, v in self.cfg.values.items() if self.cfg.sources.get(k) == "command line"]
        try:
            cfg = cfgmod.load(self.ctx.datadir, overrides)
        except cfgmod.ConfigError as e:
            log.error("configuration file was not reloaded: %s", e)
            return
        if cfg["standby_wal_coordination"] != self.mode:
            log.info('parameter "standby_wal_coordination" cannot be changed without restarting the server')
            cfg.values["standby_wal_coordination"] = self.mode
        self.cfg = cfg
        self.ctx.config = self.cfg
        self.load_settings()

    def install_signals(self) -> None:
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def wake() -> None:
            try:
                os.write(self.sig_w, b"x")
            except OSError:
                pass
            self.latch.set()

        def on_term(*_: object) -> None:
            self.got_sigterm = True
            wake()

        def on_hup(*_: object) -> None:
            self.got_sighup = True
            wake()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, lambda *_: wake())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def check_interrupts(self) -> None:
        """ProcessWalRcvInterrupts: death, SIGTERM, SIGHUP; and a restart request of the startup."""
        try:
            while os.read(self.sig_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass
        if not self.ctx.postmaster_alive():
            raise PostmasterDied()
        if self.got_sigterm:
            raise StopRequested()
        if self.got_sighup:
            self.got_sighup = False
            self.reload()
            if self.conn is not None and self.conn.copy == "both":
                self.send_reply(force=True, request_reply=False)
        self.check_restart()

    def check_restart(self) -> None:
        """A RESTARTING request we have not taken (one unlocked read of the state)."""
        if (not self.awaiting_restart and self.taken is None and self.claimed
                and self.wr.get("state") == int(S.RESTARTING)):
            raise RestartRequested()

    def set_state(self, new: WalRcvState, reason: str, **fields: object) -> WalRcvState:
        """set_walrcv_state for this process: a pending stop raises StopRequested; leaving RESTARTING
        ends the request we acted on."""
        old = set_walrcv_state(self.ctx, new, reason, taken=self.taken, **fields)
        if old is None:
            raise StopRequested()
        if new != S.RESTARTING:
            self.taken = None
        return old

    # ------------------------------------------------------------ injection points
    def refresh_inject(self) -> None:
        """Once per batch: is any point armed (environment, or the run-time arm file)?"""
        self.armed = self.inject_env or os.path.exists(self.inject_arm_path)

    def hook(self, point: str, refresh: bool = False, **info: object) -> None:
        """A named injection point (utils.inject); an attribute test when nothing is armed."""
        if refresh:
            self.refresh_inject()
        if self.armed:
            inject(point, self.ctx, **info)

    # ------------------------------------------------------------ life cycle
    def run(self) -> int:
        self.install_signals()
        if not self.claim_region():
            return 1
        code = 1
        restore_fatal = False
        try:
            self.hook("walreceiver_start", refresh=True, start=format_lsn(self.start), tli=self.tli)
            self.work()
        except StopRequested:
            try:
                set_walrcv_state(self.ctx, S.STOPPING, "shutdown requested")
            except RestartRequested:
                pass
            code = self.leave("terminating walreceiver process due to administrator command", None, "shutdown")
        except Panic as e:
            self.leave(e.message, e.detail, e.reason, flush=False)
            code = 3
        except Fatal as e:
            code = self.leave(e.message, e.detail, e.reason)
            restore_fatal = isinstance(e, RestoreFailed)
        except InjectedError as e:
            code = self.leave(str(e), None, "injected error", flush=False)
        except PostmasterDied:
            self.die_now()
        finally:
            self.cleanup()
        if restore_fatal:
            # The startup ends recovery on this flag, and the postmaster then stops everything:
            # our FATAL line must be on its way to the log before anyone acts on it.
            elog.flush_child()
            with self.wr.locked():
                self.wr.set(restore_fatal=1)
        return code

    def leave(self, message: str, detail: str | None, reason: str, flush: bool = True) -> int:
        """Flush what we have, log the FATAL line (and DETAIL), record the disconnect."""
        code = 1
        if flush:
            try:
                self.flush(dying=True)
            except Panic as p:
                log.critical("%s", p.message)
                code = 3
            except Exception as e:  # noqa: BLE001 - the way out must go on
                log.debug("flush on exit failed: %s", e)
        log.critical("%s%s", message, f"\nDETAIL:  {detail}" if detail else "")
        if self.connected:
            self.ctx.events.emit("walreceiver_disconnect", reason=reason, error=message,
                                 flushed_lsn=format_lsn(self.flush_ptr), timeline=self.tli)
            self.connected = False
        return code

    def cleanup(self) -> None:
        """WalRcvDie: restores cancelled, region STOPPED with pid 0, files closed, connection ended, startup woken."""
        self.trace.flush()
        self.cancel_jobs(wait=True)
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()
        if self.claimed:
            try:
                set_walrcv_state(self.ctx, S.STOPPED, "walreceiver exiting", pid=0, writing_segno=-1,
                                 fetch_source=int(WalSource.NONE))
            except Exception as e:  # noqa: BLE001
                log.debug("could not mark the walreceiver stopped: %s", e)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.startup_latch.set()
        try:
            self.hook("walreceiver_stop", refresh=True)
        except InjectedError:
            pass

    def die_now(self) -> None:
        """The postmaster is gone: leave at once (unlocked best-effort STOPPED; nobody else is left)."""
        try:
            for job in list(self.jobs.values()):
                if job.child:
                    try:
                        os.killpg(job.child, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            if self.claimed and self.wr.get("pid") == os.getpid():
                self.wr.set(state=int(S.STOPPED), pid=0)
        finally:
            os._exit(1)

    def claim_region(self) -> bool:
        """WalReceiverMain's start: accept a STARTING request, publish our pid, read the start point."""
        t = now_us()
        with self.wr.locked():
            st = WalRcvState(self.wr.get("state"))
            pid = self.wr.get("pid")
            if st == S.STARTING and (not pid or pid == os.getpid()):
                self.start = self.wr.get("receive_start")
                self.tli = self.wr.get("receive_start_tli")
                self.wr.set(pid=os.getpid(), conninfo="", sender_host="", sender_port=0,
                            last_msg_send_us=t, last_msg_recv_us=t, latest_end_time_us=t,
                            writing_segno=-1, fetch_source=int(WalSource.NONE), restore_ahead_lsn=0)
                self.claimed = True
            elif st == S.STOPPING:
                self.wr.set(state=int(S.STOPPED))
        if self.claimed:
            self.request = (self.start, self.tli)
            return True
        if st == S.STOPPING:
            log.debug("walreceiver state stopping -> stopped: asked to stop before it started")
            self.ctx.events.emit("walreceiver_state", **{"from": "stopping", "to": "stopped",
                                                         "reason": "asked to stop before it started"})
        elif st == S.STOPPED:
            log.debug("walreceiver was not requested (state stopped); exiting")
        else:
            log.critical("walreceiver still running according to shared memory state (%s, pid %d)",
                         _state_name(st), pid)
        return False

    # ------------------------------------------------------------ the main sequence
    def work(self) -> None:
        try:
            cf = read_control(self.ctx.datadir)
        except ControlFileError as e:
            raise Fatal(str(e)) from None
        self.sysid = cf.system_identifier
        self.segsize = cf.wal_segsize
        if not self.start or not self.tli:
            raise Fatal(f"invalid streaming start point {format_lsn(self.start)} on timeline {self.tli}")
        self.write_ptr = self.flush_ptr = self.start
        if self.mode == "concurrent":
            self.run_concurrent()
        elif self.mode == "walreceiver_restores":
            self.run_restores()
        else:
            self.run_stop_walreceiver()

    def run_stop_walreceiver(self) -> None:
        """PostgreSQL's walreceiver: one connection run; any failure ends the process (the startup restarts it)."""
        while True:
            try:
                self.session()
            except RestartRequested:
                self.take_restart()

    def run_concurrent(self) -> None:
        """Stay: on a lost or impossible stream, wait the retry interval and reconnect."""
        while True:
            try:
                try:
                    self.session()
                except Fatal as e:
                    if not e.stream_failure or isinstance(e, Panic):
                        raise
                    self.stream_failed(e, "reconnecting")
                set_title("walreceiver waiting to reconnect")
                self.pause_until(time.monotonic() + self.reconnect_delay())
                self.start, self.tli = self.reconnect_point()
            except RestartRequested:
                self.take_restart()

    def run_restores(self) -> None:
        """walreceiver_restores: the stream when it works, else the archive; each source retried per interval.

        The first round is PostgreSQL's initial archive recovery: the archive
        first, the stream as soon as the archive runs dry.
        """
        stream_next = archive_next = 0.0
        initial = True
        while True:
            try:
                conninfo = bool(self.cfg["primary_conninfo"])
                command = self.cfg["restore_command"]
                if initial and command:
                    initial = False
                    self.archive_round()
                    archive_next = time.monotonic() + self.retry_interval
                    self.maybe_restore_history()
                initial = False
                if conninfo and time.monotonic() >= stream_next:
                    self.start = segment_start(segno_of(self.flush_ptr, self.segsize), self.segsize)
                    self.tli = self.candidates(segno_of(self.flush_ptr, self.segsize))[0]
                    try:
                        self.session()
                    except Fatal as e:
                        if not e.stream_failure or isinstance(e, Panic):
                            raise
                        self.stream_failed(e, "restoring from archive" if command else "waiting to reconnect")
                        stream_next = time.monotonic() + self.reconnect_delay()
                if command and time.monotonic() >= archive_next:
                    log.debug("walreceiver switched WAL source from stream to archive")
                    restored = self.archive_round()
                    archive_next = time.monotonic() + self.retry_interval
                    if restored:
                        stream_next = 0.0      # the archive ran dry after giving us WAL: the stream may have the rest
                    self.maybe_restore_history()
                wake = min(stream_next if conninfo else math.inf, archive_next if command else math.inf)
                if wake > time.monotonic():
                    self.set_fetch_source(WalSource.NONE)
                    set_title("walreceiver waiting for WAL to become available")
                    self.pause_until(wake)
            except RestartRequested:
                self.take_restart()
                initial = False
                stream_next = 0.0
                archive_next = time.monotonic() + self.retry_interval   # prefer the stream for a refetch

    def session(self) -> None:
        """Connect (unless connected) and stream from self.start on self.tli, across ends of timelines.

        Leaves only by an exception: Fatal (stream_failure for a lost or
        impossible stream), RestartRequested, StopRequested, PostmasterDied.
        """
        if self.conn is None:
            self.connect()
        while True:
            primary_tli = self.identify_system()
            self.fetch_history_files(self.tli, primary_tli)
            streaming, _ = self.start_streaming(self.first)
            self.first = False
            if streaming:
                self.backoff = RECONNECT_FIRST       # a stream again: the next loss starts the backoff anew
                self.stream()
                log.info("replication terminated by primary server\nDETAIL:  End of WAL reached on timeline %d at %s.",
                         self.tli, format_lsn(self.write_ptr))
                next_tli = self.end_streaming()
                self.fetch_history_files(self.tli, next_tli)
            else:
                log.info("primary server contains no more WAL on requested timeline %d", self.tli)
            self.close_open_segments()
            self.set_fetch_source(WalSource.NONE)
            log.debug("walreceiver ended streaming and awaits new instructions")
            self.wait_for_start_position()
            if self.conn is None or not self.conn.usable():
                log.debug("replication connection is no longer usable; reconnecting")
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                self.connect()

    def stream_failed(self, e: Fatal, next_reason: str) -> None:
        """A lost or impossible stream we survive: flush, log the FATAL line at LOG, back to STARTING."""
        self.flush(dying=True)
        self.release_segments()
        # PostgreSQL logs this once per retry interval (one walreceiver per attempt); we try more
        # often, so the line comes after a stream is lost and then at most once per interval.
        now = time.monotonic()
        if self.connected or now - self.failure_logged_at >= self.retry_interval:
            self.failure_logged_at = now
            log.info("%s", e.text())
        else:
            log.debug("%s", e.text())
        if self.connected:
            self.ctx.events.emit("walreceiver_disconnect", reason=e.reason, error=e.message,
                                 flushed_lsn=format_lsn(self.flush_ptr), timeline=self.tli)
        self.connected = False
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.first = True
        self.set_state(S.STARTING, next_reason, fetch_source=int(WalSource.NONE))

    def reconnect_delay(self) -> float:
        """The wait before the next connection attempt (see RECONNECT_FIRST); doubles each time."""
        delay = min(self.backoff, self.retry_interval)
        self.backoff = min(self.backoff * 2, RECONNECT_MAX)
        return delay

    def reconnect_point(self) -> tuple[int, int]:
        """concurrent: the segment start of max(our flushed position, the startup's replay position)."""
        pos = max(self.flush_ptr, self.wr.get("flushed_lsn"), self.shared.recovery.get("replay_lsn"))
        segno = segno_of(pos, self.segsize)
        return segment_start(segno, self.segsize), self.candidates(segno)[0]

    def take_restart(self) -> None:
        """Act on a RESTARTING request written while we streamed, restored or waited to retry."""
        self.cancel_jobs(wait=True)
        # What we wrote past the new start point is fetched again: no flush is published now.
        self.release_segments(sync=False)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        with self.wr.locked():
            st = WalRcvState(self.wr.get("state"))
            if st != S.RESTARTING:
                return
            start, tli = self.wr.get("receive_start"), self.wr.get("receive_start_tli")
            fields: dict[str, int] = {"state": int(S.STARTING), "fetch_source": int(WalSource.NONE),
                                      "writing_segno": -1}
            if self.mode == "walreceiver_restores":
                cur = self.wr.get("flushed_lsn")
                fields.update(flushed_lsn=min(cur, start), written_lsn=min(self.wr.get("written_lsn"), start),
                              latest_chunk_start=min(self.wr.get("latest_chunk_start"), start), received_tli=tli)
            self.wr.set(**fields)
        reason = f"restart requested at {format_lsn(start)} on timeline {tli}"
        log.debug("walreceiver state restarting -> starting: %s", reason)
        self.ctx.events.emit("walreceiver_state", **{"from": "restarting", "to": "starting", "reason": reason})
        if self.connected:
            self.ctx.events.emit("walreceiver_disconnect", reason="restart requested", error=reason,
                                 flushed_lsn=format_lsn(self.flush_ptr), timeline=self.tli)
        self.connected = False
        self.first = True
        self.taken = None
        self.start, self.tli, self.request = start, tli, (start, tli)
        self.write_ptr = self.flush_ptr = start
        first_segno = segno_of(start, self.segsize)
        for segno in [s for s in self.restored_ahead if s >= first_segno]:
            del self.restored_ahead[segno]
        self.startup_latch.set()

    def pause_until(self, deadline: float) -> None:
        """Sleep until deadline (math.inf: no bound); SIGTERM, death and a restart request cut it short."""
        ws = WaitSet(self.latch, [self.ctx.death_fd, self.sig_r])
        try:
            while True:
                self.check_interrupts()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                ws.wait(None if math.isinf(remaining) else remaining)
        finally:
            ws.close()

    def set_fetch_source(self, src: WalSource) -> None:
        if self.wr.get("fetch_source") != int(src):
            with self.wr.locked():
                self.wr.set(fetch_source=int(src))

    # ------------------------------------------------------------ timelines
    def target_timelines(self) -> list[tuple[int, int, int | None]]:
        """(tli, begin, end) of the startup's target timeline and its ancestors, oldest first (end None: open).

        The target is max(``shared.recovery.timeline``, ours); its history
        comes from pg_wal.  Without one we only know our own timeline.
        """
        target = max(self.shared.recovery.get("timeline") or 0, self.tli, 1)
        hist = []
        if target > 1:
            try:
                with open(os.path.join(self.pg_wal, history_file_name(target)), encoding="utf-8") as f:
                    hist = read_history(f.read())
            except (FileNotFoundError, HistoryError):
                return [(self.tli, 0, None)]
        out: list[tuple[int, int, int | None]] = []
        begin = 0
        for e in hist:
            out.append((e.tli, begin, e.switchpoint))
            begin = e.switchpoint
        out.append((target, begin, None))
        return out

    def candidates(self, segno: int) -> list[int]:
        """Timelines that hold segment segno, newest first (XLogFileReadAnyTLI's order)."""
        out = []
        for tli, begin, end in reversed(self.target_timelines()):
            if begin and segno < segno_of(begin, self.segsize):
                continue
            if end is not None and segno > segno_of(end - 1, self.segsize):
                continue
            out.append(tli)
        return out or [self.tli]

    # ------------------------------------------------------------ the replication connection
    def start_streaming(self, first: bool) -> tuple[bool, int]:
        """START_REPLICATION; (True, 0) in copy mode, (False, next_tli) if the timeline has nothing more."""
        assert self.conn is not None
        cmd = f"START_REPLICATION PHYSICAL {format_lsn(self.start)} TIMELINE {self.tli}"
        try:
            res = self.conn.query(cmd, self.deadline())
        except TimeoutExpired:
            raise Fatal("terminating walreceiver due to timeout", reason="timeout", stream_failure=True) from None
        except ConnectionLost as e:
            raise Fatal(f"could not start WAL streaming: {e}", reason="connection lost", stream_failure=True) \
                from None
        except WalRcvError as e:
            raise Fatal(f"could not start WAL streaming: {e}", stream_failure=True) from None
        if not res or res[-1].status != "copy_both":
            tup = next((r for r in res if r.status == "tuples" and r.rows), None)
            next_tli = int(tup.rows[0][0] or b"0") if tup else 0
            return False, next_tli
        self.write_ptr = self.flush_ptr = self.start
        if first:
            log.info("started streaming WAL from primary at %s on timeline %d", format_lsn(self.start), self.tli)
        else:
            log.info("restarted WAL streaming at %s on timeline %d", format_lsn(self.start), self.tli)
        self.set_state(S.STREAMING, f"streaming from {format_lsn(self.start)} on timeline {self.tli}",
                       fetch_source=int(WalSource.STREAM))
        self.connected = True
        t = self.conn.target
        self.ctx.events.emit("walreceiver_connect", start_lsn=format_lsn(self.start), timeline=self.tli,
                             host=t.host, port=t.port, restart=not first, coordination=self.mode)
        self.restored_ahead.clear()   # streamed from here on; what was restored ahead is written over in place
        if self.mode == "walreceiver_restores":
            self.remove_stale_restore_files()
        self.update_title(force=True)
        return True, 0

    def wait_for_start_position(self) -> None:
        """WalRcvWaitForStartPosition: WAITING until the startup writes RESTARTING with a new start point."""
        self.set_state(S.WAITING, f"end of WAL on timeline {self.tli} at {format_lsn(self.write_ptr)}",
                       receive_start=0, receive_start_tli=0, fetch_source=int(WalSource.NONE))
        set_title("walreceiver idle")
        self.startup_latch.set()
        ws = WaitSet(self.latch, [self.ctx.death_fd, self.sig_r])
        self.awaiting_restart = True
        try:
            while True:
                with self.wr.locked():
                    w = self.wr.snapshot("state", "receive_start", "receive_start_tli", "flushed_lsn")
                    st = WalRcvState(w["state"])
                    if st == S.RESTARTING:
                        self.start, self.tli = w["receive_start"], w["receive_start_tli"]
                        self.taken = self.request = (self.start, self.tli)
                        if self.mode == "walreceiver_restores" and w["flushed_lsn"] > self.start:
                            # Published again as it arrives on the new timeline.
                            self.wr.set(flushed_lsn=self.start, received_tli=self.tli)
                        break
                if st in (S.STOPPING, S.STOPPED):
                    raise StopRequested()
                self.check_interrupts()
                ws.wait(None)
        finally:
            self.awaiting_restart = False
            ws.close()
        set_title(f"walreceiver restarting at {format_lsn(self.start)}")


def main(ctx: ChildContext) -> int:
    """Entry point; the postmaster has already called ``child_start(ctx, "walreceiver")``."""
    return WalReceiver(ctx).run()
