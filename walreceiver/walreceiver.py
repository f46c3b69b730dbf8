"""The walreceiver: streams WAL from the primary into pg_wal (PostgreSQL 15's walreceiver.c, our code).

Forked by the postmaster when the startup process asks for it, run as
``main(ctx)``.  It owns: the replication connection (walreceiver/
libpqwalreceiver.py, our own libpq client; its header says why psycopg2's
PhysicalReplicationConnection could not do the job), the segment files it is
writing in ``DIR/pg_wal`` (open descriptors, at most the current and a
just-completed one), the ``archive_status`` mark of each segment or history
file it completes, and the walreceiver fields of ``shared.walrcv`` except the
start request.

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
    any running state ──SIGTERM──> STOPPING ──> STOPPED (exit 1)
    any running state ──FATAL (connect failed, connection lost, timeout, ...)──> STOPPED (exit 1)
    any running state ──a WAL file write or fsync fails (PostgreSQL: PANIC)──> STOPPED (exit 3: a crash)

Unlike PostgreSQL, where the walreceiver says STREAMING as soon as it runs,
ours stays STARTING while it connects; the startup's "never started" check
therefore looks at ``pid`` (0 until we claim the region), not at the state.
If the startup wrote STOPPING or STOPPED while we were busy (it gave up on
us), a transition we attempt is refused (``set_walrcv_state`` returns None)
and we stop.  On every way out but SIGKILL the region is left STOPPED with
pid 0 (the crash-restart cycle recreates shared memory after a SIGKILL); on
postmaster death we leave at once.

Who wakes whom: after each flush we publish ``written_lsn`` / ``flushed_lsn``
(with ``latest_chunk_start``, ``received_tli``, the message times) and set
``latches['startup']`` (and the latch of every cascading walsender slot in
use).  The startup requests a start by writing ``receive_start`` /
``receive_start_tli`` and state STARTING into the region and raising the
postmaster's ``start_walreceiver`` flag; it requests a restart (WAITING ->
RESTARTING) through the region plus our latch ``latches['walreceiver']``.
We sleep on our latch through ``shmem.sync.WaitSet`` together with the
socket, ``ctx.death_fd`` and a self-pipe our signal handlers write to
(SIGTERM: stop; SIGHUP: re-read the settings; SIGUSR1: just wake).

Streaming, as XLogWalRcvProcessMsg/XLogWalRcvWrite/XLogWalRcvFlush: every
XLogData payload is written straight from the receive buffer into the
segment file at its offset, one ``pwrite`` per message (per segment part, if
a message crosses a segment boundary); a segment file is created zero-filled
at full size first (``xlog.writer.init_segment_file``: temp name, fsync,
rename, as XLogFileInit).  After each batch (everything readable, at most
MAX_BATCH_BYTES): publish written_lsn, fdatasync each touched file once,
publish flushed_lsn, wake the startup, send a status update (``r``: write,
flush, apply = ``shared.recovery.replay_lsn``).  A completed segment is then
closed and marked ``.done`` (``.ready`` under ``archive_mode = always``, as
PostgreSQL), with a ``segment_completed`` event.  Keepalives asking for a
reply get one at once; a status update goes out at least every
``wal_receiver_status_interval``; after half of ``wal_receiver_timeout``
without a message we ask the primary for a reply, and after all of it we
stop with "terminating walreceiver due to timeout".  ``wal_receiver_timeout``
also bounds connecting and each command round trip (PostgreSQL waits there
without a bound).

Hooks for later work are single calls, now no-ops: ``hook(point)`` at the
named injection points (start, before_write, after_write, before_flush,
after_flush, stop) and ``cannot_stream(fatal)``, where
``standby_wal_coordination = walreceiver_restores`` will run restore_command
itself instead of exiting.
"""
from __future__ import annotations

import os
import select
import signal
import time

from startup.states import WalRcvState
from walswitch import elog
from walswitch.proc import ChildContext, set_title
from walreceiver.libpqwalreceiver import (ConnectionLost, ProtocolViolation, ServerError, TimeoutExpired,
                                          WalRcvConn, WalRcvError, masked_conninfo)
from xlog import archive_status
from xlog.lsn import format_lsn, history_file_name, segment_name
from xlog.writer import fsync_dir, init_segment_file

log = elog.logger()

S = WalRcvState
TRANSITIONS: dict[WalRcvState, set[WalRcvState]] = {
    S.STOPPED: {S.STARTING},                                    # startup requests a start
    S.STARTING: {S.STREAMING, S.WAITING, S.STOPPING, S.STOPPED},
    S.STREAMING: {S.WAITING, S.STOPPING, S.STOPPED},
    S.WAITING: {S.RESTARTING, S.STOPPING, S.STOPPED},            # RESTARTING: startup
    S.RESTARTING: {S.STREAMING, S.WAITING, S.STOPPING, S.STOPPED},
    S.STOPPING: {S.STOPPED},
}

PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000      # 2000-01-01 in Unix microseconds
MAX_BATCH_BYTES = 4 << 20                         # flush at least this often while catching up
TITLE_INTERVAL = 0.25                             # seconds between process-title updates


def now_us() -> int:
    return time.time_ns() // 1000


def pg_now() -> int:
    """GetCurrentTimestamp(): microseconds since 2000-01-01 UTC."""
    return now_us() - PG_EPOCH_OFFSET_US


def _state_name(s: WalRcvState) -> str:
    return s.name.lower()


def set_walrcv_state(ctx: ChildContext, new: WalRcvState, reason: str, **fields: object) -> WalRcvState | None:
    """The one place the walreceiver changes its state: check, store (with fields), log, record.

    Returns the previous state.  Returns None, changing nothing, when the
    startup process has meanwhile written STOPPING or STOPPED and the table
    does not allow ``new`` from there: a stop is pending.  Any other
    transition outside the table is a bug and raises.
    """
    wr = ctx.shared.walrcv
    with wr.locked():
        old = WalRcvState(wr.get("state"))
        if new != old and new not in TRANSITIONS[old]:
            if old in (S.STOPPING, S.STOPPED):
                return None
            raise RuntimeError(f"invalid walreceiver state transition {old.name} -> {new.name}")
        wr.set(state=int(new), **fields)
    if new != old:
        log.debug("walreceiver state %s -> %s: %s", _state_name(old), _state_name(new), reason)
        ctx.events.emit("walreceiver_state", **{"from": _state_name(old), "to": _state_name(new), "reason": reason})
    return old


# ---------------------------------------------------------------- ways out
class Fatal(Exception):
    """Leave with a FATAL line (exit 1); ``stream_failure`` marks a lost or impossible stream."""

    def __init__(self, message: str, detail: str | None = None, reason: str = "error",
                 stream_failure: bool = False):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.reason = reason
        self.stream_failure = stream_failure


class Panic(Fatal):
    """A WAL file write or fsync failed: PostgreSQL PANICs; we exit as a crash (code 3)."""


class StopRequested(Exception):
    """SIGTERM, or the startup process wrote STOPPING/STOPPED."""


class PostmasterDied(Exception):
    pass


class WalReceiver:
    def __init__(self, ctx: ChildContext):
        self.ctx = ctx
        self.shared = ctx.shared
        self.wr = ctx.shared.walrcv
        self.latch = ctx.shared.latches["walreceiver"]
        self.startup_latch = ctx.shared.latches["startup"]
        self.pg_wal = os.path.join(ctx.datadir, "pg_wal")
        self.cfg = ctx.config
        self.load_settings()
        self.conn: WalRcvConn | None = None
        self.got_sigterm = False
        self.got_sighup = False
        self.sig_r = self.sig_w = -1
        self.claimed = False
        self.connected = False
        # Streaming position (PostgreSQL's LogstreamResult) and the current request.
        self.start = 0
        self.tli = 0
        self.write_ptr = 0
        self.flush_ptr = 0
        self.segsize = 0
        self.sysid = 0
        self.files: dict[int, int] = {}          # segno -> fd, on self.tli
        self.seg_bytes: dict[int, int] = {}      # segno -> bytes written this run
        self.dirty: set[int] = set()
        self.completed: list[int] = []
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

    # ------------------------------------------------------------ settings and signals
    def load_settings(self) -> None:
        self.rcv_timeout = self.cfg["wal_receiver_timeout"] / 1000.0
        self.status_interval = float(self.cfg["wal_receiver_status_interval"])
        self.do_fsync = bool(self.cfg["fsync"])
        self.archive_always = self.cfg["archive_mode"] == "always"

    def reload(self) -> None:
        from walswitch import config as cfgmod
        overrides = [(k, str(v)) for k, v in self.cfg.values.items() if self.cfg.sources.get(k) == "command line"]
        try:
            self.cfg = cfgmod.load(self.ctx.datadir, overrides)
        except cfgmod.ConfigError as e:
            log.error("configuration file was not reloaded: %s", e)
            return
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
        """ProcessWalRcvInterrupts: death, SIGTERM, SIGHUP."""
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

    # ------------------------------------------------------------ hooks (issue 4)
    def hook(self, point: str, **info: object) -> None:
        """A named injection point; the shared injection module (WALSWITCH_INJECT) plugs in here.

        Points: start, before_write, after_write (one XLogData write done),
        before_flush (the batch written and written_lsn published, not yet
        fsynced), after_flush (fsynced, flushed_lsn not yet published), stop.
        """

    def cannot_stream(self, fatal: Fatal) -> bool:
        """Streaming failed (no connection, connection lost, WAL removed, timeout).

        Under ``standby_wal_coordination = walreceiver_restores`` the
        walreceiver will run restore_command itself here and return True to
        keep going; for now it always gives up (False) and the process exits.
        """
        return False

    # ------------------------------------------------------------ life cycle
    def run(self) -> int:
        self.install_signals()
        if not self.claim_region():
            return 1
        code = 1
        try:
            self.hook("start", start=format_lsn(self.start), tli=self.tli)
            self.work()
        except StopRequested:
            set_walrcv_state(self.ctx, S.STOPPING, "shutdown requested")
            code = self.leave("terminating walreceiver process due to administrator command", None, "shutdown")
        except Panic as e:
            self.leave(e.message, e.detail, e.reason, flush=False)
            code = 3
        except Fatal as e:
            if e.stream_failure and self.cannot_stream(e):
                pass   # issue 4: the walreceiver_restores loop continues here
            code = self.leave(e.message, e.detail, e.reason)
        except PostmasterDied:
            self.die_now()
        finally:
            self.cleanup()
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
        return code

    def cleanup(self) -> None:
        """WalRcvDie: region STOPPED with pid 0, files closed, connection ended, startup woken."""
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()
        if self.claimed:
            try:
                set_walrcv_state(self.ctx, S.STOPPED, "walreceiver exiting", pid=0)
            except Exception as e:  # noqa: BLE001
                log.debug("could not mark the walreceiver stopped: %s", e)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.startup_latch.set()
        self.hook("stop")

    def die_now(self) -> None:
        """The postmaster is gone: leave at once (unlocked best-effort STOPPED; nobody else is left)."""
        try:
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
                            last_msg_send_us=t, last_msg_recv_us=t, latest_end_time_us=t)
                self.claimed = True
            elif st == S.STOPPING:
                self.wr.set(state=int(S.STOPPED))
        if self.claimed:
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
        from xlog.control import ControlFileError, read_control
        try:
            cf = read_control(self.ctx.datadir)
        except ControlFileError as e:
            raise Fatal(str(e)) from None
        self.sysid = cf.system_identifier
        self.segsize = cf.wal_segsize
        if not self.start or not self.tli:
            raise Fatal(f"invalid streaming start point {format_lsn(self.start)} on timeline {self.tli}")
        self.connect()
        first = True
        while True:
            primary_tli = self.identify_system()
            self.fetch_history_files(self.tli, primary_tli)
            streaming, _ = self.start_streaming(first)
            first = False
            if streaming:
                self.stream()
                log.info("replication terminated by primary server\nDETAIL:  End of WAL reached on timeline %d at %s.",
                         self.tli, format_lsn(self.write_ptr))
                next_tli = self.end_streaming()
                self.fetch_history_files(self.tli, next_tli)
            else:
                log.info("primary server contains no more WAL on requested timeline %d", self.tli)
            self.close_open_segments()
            log.debug("walreceiver ended streaming and awaits new instructions")
            self.wait_for_start_position()
            if self.conn is None or not self.conn.usable():
                log.debug("replication connection is no longer usable; reconnecting")
                if self.conn is not None:
                    self.conn.close()
                self.connect()

    def deadline(self) -> float | None:
        return time.monotonic() + self.rcv_timeout if self.rcv_timeout > 0 else None

    def connect(self) -> None:
        conninfo = self.cfg["primary_conninfo"]
        appname = self.cfg["cluster_name"] or "walreceiver"
        set_title("walreceiver")
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
                        f"expected 1 rows and 3 or more fields.")
        row = tup.rows[0]
        primary_sysid = (row[0] or b"").decode()
        try:
            primary_tli = int(row[1] or b"0")
        except ValueError:
            raise Fatal("invalid response from primary server", "Could not identify system: invalid timeline.") \
                from None
        if primary_sysid != str(self.sysid):
            raise Fatal("database system identifier differs between the primary and standby",
                        f"The primary's identifier is {primary_sysid}, the standby's identifier is {self.sysid}.")
        if primary_tli < self.tli:
            raise Fatal(f"highest timeline {primary_tli} of the primary is behind recovery timeline {self.tli}")
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
                            f"Expected 1 tuple with 2 fields, got {ntup} tuples with {nfields} fields.")
            name = (tup.rows[0][0] or b"").decode()
            content = tup.rows[0][1] or b""
            if name != fname:
                raise Fatal(f"primary reported unexpected file name for timeline history file of timeline {tli}")
            write_history_raw(self.pg_wal, fname, content)
            self.mark_archive_status(fname)
            self.ctx.events.emit("history_fetched", source="stream", file=fname, bytes=len(content))

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
        if set_walrcv_state(self.ctx, S.STREAMING, f"streaming from {format_lsn(self.start)} on timeline {self.tli}") \
                is None:
            raise StopRequested()
        self.connected = True
        t = self.conn.target
        self.ctx.events.emit("walreceiver_connect", start_lsn=format_lsn(self.start), timeline=self.tli,
                             host=t.host, port=t.port, restart=not first)
        self.update_title(force=True)
        return True, 0

    def end_streaming(self) -> int:
        assert self.conn is not None
        try:
            return self.conn.end_streaming(self.deadline())
        except ConnectionLost as e:
            raise Fatal(str(e), reason="connection lost", stream_failure=True) from None
        except WalRcvError as e:
            raise Fatal(str(e), stream_failure=True) from None

    def wait_for_start_position(self) -> None:
        """WalRcvWaitForStartPosition: WAITING until the startup writes RESTARTING with a new start point."""
        if set_walrcv_state(self.ctx, S.WAITING, f"end of WAL on timeline {self.tli} at {format_lsn(self.write_ptr)}",
                            receive_start=0, receive_start_tli=0) is None:
            raise StopRequested()
        set_title("walreceiver idle")
        self.startup_latch.set()
        from shmem.sync import WaitSet
        ws = WaitSet(self.latch, [self.ctx.death_fd, self.sig_r])
        try:
            while True:
                self.check_interrupts()
                w = self.wr.read("state", "receive_start", "receive_start_tli")
                st = WalRcvState(w["state"])
                if st == S.RESTARTING:
                    self.start, self.tli = w["receive_start"], w["receive_start_tli"]
                    break
                if st in (S.STOPPING, S.STOPPED):
                    raise StopRequested()
                ws.wait(None)
        finally:
            ws.close()
        set_title(f"walreceiver restarting at {format_lsn(self.start)}")

    # ------------------------------------------------------------ streaming
    def stream(self) -> None:
        """The receive loop, until the primary ends the copy (returns) or something fails (raises)."""
        from shmem.sync import WaitSet
        conn = self.conn
        assert conn is not None
        ws = WaitSet(self.latch, [conn.fd, self.ctx.death_fd, self.sig_r])
        try:
            last_recv = time.monotonic()
            ping_sent = False
            self.send_reply(force=True, request_reply=False)
            while True:
                self.check_interrupts()
                try:
                    nmsg, ended, more = conn.receive(self.on_xlogdata, self.on_keepalive, MAX_BATCH_BYTES)
                except ConnectionLost as e:
                    raise Fatal(f"could not receive data from WAL stream: {e}", reason="connection lost",
                                stream_failure=True) from None
                except ServerError as e:
                    raise Fatal(f"could not receive data from WAL stream: {e}", reason="primary error",
                                stream_failure=True) from None
                except ProtocolViolation as e:
                    raise Fatal(str(e), reason="protocol violation") from None
                now = time.monotonic()
                if nmsg:
                    last_recv = now
                    ping_sent = False
                    self.last_recv_us = now_us()
                    self.times_dirty = True
                self.flush()
                if ended:
                    return
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

    def on_xlogdata(self, start: int, wal_end: int, send_time: int, buf: bytearray, off: int, end: int) -> None:
        """XLogWalRcvWrite: the payload buf[off:end] goes to pg_wal at start, one pwrite per segment part."""
        self.last_send_time = send_time
        if wal_end > self.latest_end:
            self.latest_end = wal_end
            self.latest_end_time = send_time
        n = end - off
        pos = start
        segsize = self.segsize
        while n > 0:
            segno = pos // segsize
            seg_off = pos % segsize
            chunk = min(n, segsize - seg_off)
            fd = self.files.get(segno)
            if fd is None:
                fd = self.open_segment(segno)
            self.hook("before_write", lsn=pos, nbytes=chunk)
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
            self.hook("after_write", lsn=pos)
            if seg_off + chunk == segsize:
                self.completed.append(segno)

    def open_segment(self, segno: int) -> int:
        name = segment_name(self.tli, segno, self.segsize)
        try:
            path = init_segment_file(self.pg_wal, self.tli, segno, self.segsize)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise Fatal(f'could not create file "pg_wal/{name}": {e.strerror}', reason="file error") from None
        self.files[segno] = fd
        self.seg_bytes[segno] = 0
        return fd

    def flush(self, dying: bool = False) -> None:
        """XLogWalRcvFlush: fdatasync what was written, publish, wake the startup, report."""
        if not self.dirty:
            if self.times_dirty:
                self.publish_times()
            return
        with self.wr.locked():
            self.wr.set(written_lsn=self.write_ptr)
        self.hook("before_flush", written=format_lsn(self.write_ptr))
        for segno in sorted(self.dirty):
            if self.do_fsync:
                try:
                    os.fdatasync(self.files[segno])
                except OSError as e:
                    raise Panic(f"could not fdatasync file \"{segment_name(self.tli, segno, self.segsize)}\": "
                                f"{e.strerror}", reason="fsync failed") from None
        self.dirty.clear()
        self.hook("after_flush", flushed=format_lsn(self.write_ptr))
        self.flush_ptr = self.write_ptr
        with self.wr.locked():
            cur = self.wr.get("flushed_lsn")
            if cur < self.flush_ptr:
                self.wr.set(latest_chunk_start=cur, flushed_lsn=self.flush_ptr, received_tli=self.tli)
            self.set_times()
        self.startup_latch.set()
        for i, slot in enumerate(self.shared.walsnd):
            if slot.get("pid"):
                self.shared.walsnd_latches[i].set()
        while self.completed:
            self.close_segment(self.completed.pop(0), complete=True)
        self.update_title()
        if not dying:
            self.send_reply(force=False, request_reply=False)

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

    def mark_archive_status(self, name: str) -> None:
        """.done, so it is never archived from here; .ready under archive_mode = always (PostgreSQL's rule)."""
        if self.archive_always:
            archive_status.mark_ready(self.pg_wal, name)
        else:
            archive_status.mark_done(self.pg_wal, name)

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


# ---------------------------------------------------------------- helpers
def _fit(text: str, nbytes: int) -> str:
    """Truncate to nbytes of UTF-8 without splitting a character (fixed-size region fields)."""
    b = text.encode("utf-8")
    if len(b) <= nbytes:
        return text
    return b[:nbytes].decode("utf-8", "ignore")


def write_history_raw(pg_wal: str, fname: str, content: bytes) -> str:
    """writeTimeLineHistoryFile: the primary's bytes, atomically (temp file, fsync, rename, fsync dir)."""
    path = os.path.join(pg_wal, fname)
    tmp = os.path.join(pg_wal, f"xlogtemp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        mv = memoryview(content)
        while mv:
            mv = mv[os.write(fd, mv):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(pg_wal)
    return path


def main(ctx: ChildContext) -> int:
    """Entry point; the postmaster has already called ``child_start(ctx, "walreceiver")``."""
    return WalReceiver(ctx).run()
