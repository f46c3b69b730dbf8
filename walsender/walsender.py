"""The walsender: one process per replication connection (PostgreSQL 15's walsender.c).

Forked by the postmaster with the client socket the backend handed over
(``ctx.extra["conn_sock"]``) and the startup packet's parameters
(``ctx.extra["startup_params"]``).  It owns one slot of ``shared.walsnd`` (its
pid in the slot), its latch ``shared.walsnd_latches[slot]``, the socket, and
its read handles on WAL segment files.  It never writes WAL.

States (``WalSndState``, PostgreSQL's numbers, published in the slot)::

    STARTUP (0) ──START_REPLICATION──> CATCHUP (2) ──caught up──> STREAMING (3)
       ^  (command mode)                  │                          │
       └──────── copy ended (client CopyDone, end of a timeline) ────┘
    any ──SIGTERM/SIGUSR2 (server shutdown)──> STOPPING (4) ──all WAL sent and confirmed──> exit 0
    BACKUP (1) while a BASE_BACKUP runs.

Who wakes it: the backend sets its latch after every WAL flush; the
WaitSet turns a readable client socket and the postmaster-death pipe into
latch sets; its own signal handlers set it too.  It sleeps when it has sent
everything up to ``shared.xlog.flush_lsn`` (or, in recovery, up to what the
walreceiver flushed), and at most until the next keepalive is due.

Commands (simple Query messages; see replication_commands.py for the
grammar): IDENTIFY_SYSTEM, SHOW name, TIMELINE_HISTORY n,
START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n], BASE_BACKUP,
CREATE_REPLICATION_SLOT / DROP_REPLICATION_SLOT (temporary physical slots).
Anything that is not a replication command gets PostgreSQL's 0A000
"cannot execute SQL commands in WAL sender for physical replication"; a
replication command that does not parse gets 42601 "syntax error"; after an
error the connection stays usable (ReadyForQuery), as in PostgreSQL.

Streaming (CopyBoth) as XLogSendPhysical does: ``w`` XLogData of at most
128 kB (16 pages) read straight from ``DIR/pg_wal`` segment files, cut at page
boundaries, never crossing a segment boundary (PostgreSQL may cross one; a
receiver cannot tell the difference), with walEnd = the flush position; ``k``
keepalive with replyRequested once half of wal_sender_timeout passed without
a message from the client; standby replies ``r`` update the slot and the
write/flush/replay lag, computed by PostgreSQL's LagTracker; ``h`` is
ignored.  A client CopyDone ends streaming: CopyDone back, the next-timeline
result set if streaming a historic timeline, CommandComplete START_STREAMING,
CommandComplete START_REPLICATION, ReadyForQuery (byte for byte what
PostgreSQL 15 sends).  Reaching the end of a historic timeline (its switchpoint in
the history file) ends the copy from our side the same way.

Shutdown (SIGUSR2 from the postmaster, and SIGTERM): send everything up to the
flush position, ask the standby for a reply, and once it confirmed having
written (or flushed) all of it send CommandComplete "COPY 0" and exit 0, as
WalSndDone does.  Unlike PostgreSQL we give up waiting for that confirmation
after SHUTDOWN_CONFIRM_WAIT seconds (a stalled link must not hold the
shutdown for wal_sender_timeout).

BASE_BACKUP: PostgreSQL 15's options and COPY stream, in walsender/basebackup.py (the client is
PostgreSQL's pg_basebackup or walswitch/basebackup.py).  CREATE_REPLICATION_SLOT ... TEMPORARY
PHYSICAL, DROP_REPLICATION_SLOT and START_REPLICATION SLOT use this connection's temporary slots
(walsender/slots.py), as pg_basebackup -X stream needs them.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time

from libpq import protocol as P
from shmem.sync import WaitSet
from utils import config as cfgmod
from utils import elog, lagtrace
from utils.proc import ChildContext, child_start, set_title
from walsender import basebackup
from walsender import replication_commands as RC
from walsender import slots
from walsender.lagtracker import PG_EPOCH_OFFSET_US, LagTracker, sane_reply_time
from walsender.timelines import read_history, tli_switch_point
from walsender.walread import WalRead
from xlog.lsn import XLOG_BLCKSZ, format_lsn, history_file_name, segno_of

log = elog.logger()

MAX_SEND_SIZE = XLOG_BLCKSZ * 16      # 128 kB, as PostgreSQL
SHUTDOWN_CONFIRM_WAIT = 10.0          # seconds to wait for the standby's last reply at shutdown


class WalSndState:
    STARTUP = 0
    BACKUP = 1
    CATCHUP = 2
    STREAMING = 3
    STOPPING = 4


STATE_NAMES = {0: "startup", 1: "backup", 2: "catchup", 3: "streaming", 4: "stopping"}


def now_us() -> int:
    return time.time_ns() // 1000


def pg_now() -> int:
    """GetCurrentTimestamp(): microseconds since 2000-01-01 UTC."""
    return now_us() - PG_EPOCH_OFFSET_US


def format_segsize(nbytes: int) -> str:
    """wal_segment_size as SHOW prints it ("1MB", "16MB", "1GB")."""
    kb = nbytes // 1024
    for unit, mult in (("GB", 1024 * 1024), ("MB", 1024)):
        if kb and kb % mult == 0:
            return f"{kb // mult}{unit}"
    return f"{kb}kB"


# ---------------------------------------------------------------- the process
class ClientGone(Exception):
    """The client closed the connection or broke the protocol: exit quietly."""


class Terminate(Exception):
    """Leave the process with this exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class WalSender(WalRead):
    def __init__(self, ctx: ChildContext, slot: int):
        self.ctx = ctx
        self.shared = ctx.shared
        self.slot_no = slot
        self.slot = ctx.shared.walsnd[slot]
        self.latch = ctx.shared.walsnd_latches[slot]
        self.sock: socket.socket = ctx.extra["conn_sock"]
        self.params: dict[str, str] = dict(ctx.extra.get("startup_params") or {})
        self.user = self.params.get("user", "postgres")
        self.app_name = self.params.get("application_name", "") or "walreceiver"
        self.database = self.params.get("database") if self.params.get("replication", "").lower() == "database" else None
        self.pg_wal = os.path.join(ctx.datadir, "pg_wal")
        try:
            host, port = ctx.extra.get("peer") or self.sock.getpeername()[:2]
        except (OSError, ValueError):
            host, port = "?", 0
        self.peer = (str(host), int(port))
        self.timeout_ms = int(ctx.config.get("wal_sender_timeout", 60000) or 0)
        self.trace = lagtrace.start(ctx.datadir, "walsender", ctx.config)
        self.traced_flush = self.traced_sent = 0
        self.reader = P.MessageReader()
        self.out = bytearray()
        self.eof = False
        self.shutdown_requested = False
        self.shutdown_since: float | None = None
        self.reload_pending = False
        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(self.sig_w, False)
        self.sock.setblocking(False)
        self.waitset: WaitSet | None = None
        self.lag = LagTracker()
        # Streaming state (PostgreSQL's statics of the same names).
        self.sent_ptr = 0
        self.send_tli = 0
        self.send_tli_historic = False
        self.send_tli_valid_upto = 0
        self.send_tli_next = 0
        self.done_sending = False
        self.done_receiving = False
        self.caught_up = False
        self.last_reply = 0.0          # monotonic of the last message from the client
        self.waiting_for_ping = False
        self.fully_applied_last_time = False
        self.segfile: tuple[int, int, int] | None = None   # (tli, segno, fd)
        self.state = WalSndState.STARTUP
        self.activity = ""
        self.temp_slots = slots.TempSlots()    # this connection's temporary replication slots

    # ------------------------------------------------------------ setup
    def install_signals(self) -> None:
        def on_shutdown(signum: int, _frame: object) -> None:
            if self.shutdown_since is None:
                self.shutdown_since = time.monotonic()
            self.shutdown_requested = True
            try:
                os.write(self.sig_w, b"x")
            except OSError:
                pass
            self.latch.set()

        def on_hup(_s: int, _f: object) -> None:
            self.reload_pending = True
            self.latch.set()

        signal.signal(signal.SIGTERM, on_shutdown)
        signal.signal(signal.SIGUSR2, on_shutdown)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def init_slot(self) -> None:
        with self.slot.locked():
            self.slot.set(state=WalSndState.STARTUP, sent_lsn=0, write_lsn=0, flush_lsn=0, replay_lsn=0,
                          write_lag_us=-1, flush_lag_us=-1, replay_lag_us=-1, reply_time_us=0,
                          backend_start_us=now_us(), client_port=self.peer[1], timeline=0,
                          application_name=self.app_name[:63].encode("utf-8")[:63],
                          client_addr=self.peer[0][:47])

    def release_slot(self) -> None:
        try:
            with self.slot.locked():
                if self.slot.get("pid") == os.getpid():
                    self.slot.clear()
        except Exception:  # noqa: BLE001 - never fail on the way out
            pass

    def set_state(self, state: int) -> None:
        if state != self.state:
            self.state = state
            with self.slot.locked():
                self.slot.set(state=state)

    def update_title(self, activity: str) -> None:
        if activity != self.activity:
            self.activity = activity
            set_title(f"walsender {self.user} {self.peer[0]}({self.peer[1]}) {activity}".rstrip())

    # ------------------------------------------------------------ positions
    def segsize(self) -> int:
        n = int(self.shared.xlog.get("wal_segsize") or 0)
        if not n:
            raise P.SQLError("55000", "WAL segment size is not known yet")
        return n

    def flush_position(self) -> tuple[int, int]:
        """(flush LSN, its timeline): GetFlushRecPtr, or GetStandbyFlushRecPtr in recovery."""
        x = self.shared.xlog.read("flush_lsn", "timeline", "in_recovery")
        if not x["in_recovery"]:
            return x["flush_lsn"], x["timeline"]
        w = self.shared.walrcv.read("flushed_lsn", "received_tli")
        r = self.shared.recovery.read("replay_lsn", "replay_tli", "timeline")
        tli = r["replay_tli"] or r["timeline"] or x["timeline"]
        pos = r["replay_lsn"]
        if w["flushed_lsn"] > pos and (w["received_tli"] == tli or not w["received_tli"]):
            pos = w["flushed_lsn"]
        return pos, tli

    # ------------------------------------------------------------ output
    def queue(self, data: bytes) -> None:
        self.out += data

    def flush_some(self) -> None:
        """Send what the socket takes without blocking."""
        while self.out:
            try:
                with memoryview(self.out) as mv, mv[:1 << 20] as chunk:
                    n = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise ClientGone(f"could not send data to client: {e.strerror}") from None
            if n <= 0:
                return
            del self.out[:n]

    def flush_all(self) -> None:
        """Block until everything queued is sent (watching death and the client closing)."""
        while True:
            self.flush_some()
            if not self.out:
                return
            self.check_postmaster()
            if self.shutdown_overdue():
                raise ClientGone("could not send data to client before shutdown")
            try:
                select.select([self.ctx.death_fd], [self.sock], [], 1.0)
            except (OSError, ValueError):
                raise ClientGone("connection lost") from None

    # ------------------------------------------------------------ input
    def read_some(self) -> None:
        """Read what is there without blocking; sets eof on EOF."""
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.reader.feed(data)

    def next_message(self) -> tuple[bytes, bytes] | None:
        try:
            return self.reader.next()
        except P.ProtocolError as e:
            raise ClientGone(str(e)) from None

    def check_postmaster(self) -> None:
        if not self.ctx.postmaster_alive():
            # As PostgreSQL's walsender: exit at once when the postmaster is gone.
            raise Terminate(1)

    def drain_sigpipe(self) -> None:
        try:
            while os.read(self.sig_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float | None, want_write: bool = False) -> None:
        """Sleep until input, latch, signal, death, timeout (or writable, when asked)."""
        if self.trace.on:
            self.trace.idle()
        if want_write:
            try:
                select.select([self.sock, self.ctx.death_fd, self.sig_r], [self.sock], [],
                              None if timeout is None else max(0.0, timeout))
            except (OSError, ValueError):
                pass
        else:
            assert self.waitset is not None
            self.waitset.wait(None if timeout is None else max(0.0, timeout))
        self.drain_sigpipe()

    # ------------------------------------------------------------ main
    def run(self) -> int:
        self.install_signals()
        self.init_slot()
        self.update_title("idle")
        self.waitset = WaitSet(self.latch, [self.sock.fileno(), self.ctx.death_fd, self.sig_r])
        server_params = P.default_server_params(self.params.get("application_name", ""))
        # The backend authenticated the role before the hand-off (backend/clientauth.py).
        server_params["is_superuser"] = self.params.get("walswitch.role_superuser", "on")
        server_params["session_authorization"] = self.params.get("walswitch.role", self.user)
        self.queue(P.startup_greeting(server_params, os.getpid(), int.from_bytes(os.urandom(4), "big")))
        self.ctx.events.emit("walsender_start", client_addr=self.peer[0], client_port=self.peer[1],
                             application_name=self.app_name, user=self.user, slot=self.slot_no)
        try:
            self.command_loop()
            return 0
        finally:
            self.ctx.events.emit("walsender_stop", sent_lsn=format_lsn(self.sent_ptr),
                                 state=STATE_NAMES.get(self.state, str(self.state)),
                                 **self.reported_positions())

    def reported_positions(self) -> dict[str, str]:
        try:
            s = self.slot.snapshot("write_lsn", "flush_lsn", "replay_lsn")
        except Exception:  # noqa: BLE001
            return {}
        return {k: format_lsn(v) for k, v in s.items()}

    def command_loop(self) -> None:
        while True:
            self.flush_all()
            if self.shutdown_requested:
                # Idle at shutdown: PostgreSQL's walsender just goes away.
                self.queue(P.error_response("57P01", "terminating connection due to administrator command",
                                            severity="FATAL"))
                self.flush_some()
                raise Terminate(0)
            self.read_some()
            msg = self.next_message()
            if msg is None:
                if self.eof:
                    log.debug("unexpected EOF on client connection")
                    raise Terminate(0)
                self.check_postmaster()
                self.wait(None)
                continue
            mtype, body = msg
            if mtype == b"Q":
                try:
                    text = P.parse_query(body)
                except P.SQLError as e:
                    self.queue(e.encode())
                else:
                    self.exec_query(text)
                self.queue(P.ready_for_query(b"I"))
            elif mtype == b"X":
                raise Terminate(0)
            elif mtype in (b"d", b"c", b"f"):
                # Left over from a COPY that failed: accept and ignore, per protocol.
                continue
            elif mtype in (b"P", b"B", b"E", b"D", b"C", b"H"):
                self.queue(P.error_response("08P01", "extended query protocol not supported in a replication "
                                            "connection"))
                self.skip_until_sync()
            elif mtype == b"S":
                self.queue(P.ready_for_query(b"I"))
            else:
                self.queue(P.error_response("08P01", f"invalid frontend message type {mtype[0]}", severity="FATAL"))
                self.flush_some()
                raise Terminate(1)

    def skip_until_sync(self) -> None:
        while True:
            msg = self.next_message()
            if msg is None:
                if self.eof:
                    raise Terminate(0)
                self.wait(1.0)
                self.read_some()
                continue
            if msg[0] == b"S":
                self.queue(P.ready_for_query(b"I"))
                return
            if msg[0] == b"X":
                raise Terminate(0)

    def exec_query(self, text: str) -> None:
        log.debug("received replication command: %s", text)
        try:
            try:
                cmd = RC.parse(text)
            except RC.NotReplicationCommand:
                raise P.SQLError("0A000", "cannot execute SQL commands in WAL sender for physical replication") \
                    from None
            if isinstance(cmd, RC.IdentifySystem):
                self.identify_system()
            elif isinstance(cmd, RC.Show):
                self.show(cmd.name)
            elif isinstance(cmd, RC.TimelineHistory):
                self.timeline_history(cmd.timeline)
            elif isinstance(cmd, RC.StartReplication):
                self.start_replication(cmd)
            elif isinstance(cmd, RC.BaseBackup):
                self.send_base_backup(cmd)
            elif isinstance(cmd, RC.CreateSlot):
                self.queue(self.temp_slots.create(cmd))
            elif isinstance(cmd, RC.DropSlot):
                self.queue(self.temp_slots.drop(cmd))
            elif isinstance(cmd, RC.SlotCommand):
                raise P.SQLError("42704", f'replication slot "{cmd.slot}" does not exist')
            else:  # pragma: no cover
                raise P.SQLError("42601", "syntax error")
        except P.SQLError as e:
            log.error("%s%s", e.message, f"\nDETAIL:  {e.detail}" if e.detail else "")
            self.queue(e.encode())
            self.error_cleanup()

    def error_cleanup(self) -> None:
        """WalSndErrorCleanup: close the segment, back to the startup state."""
        self.close_segment()
        if self.state != WalSndState.STARTUP:
            self.set_state(WalSndState.STARTUP)
        self.update_title("idle")

    # ------------------------------------------------------------ simple commands
    def identify_system(self) -> None:
        sysid = self.shared.xlog.get("system_identifier")
        pos, tli = self.flush_position()
        self.queue(P.row_description([("systemid", P.TEXTOID), ("timeline", P.INT4OID),
                                      ("xlogpos", P.TEXTOID), ("dbname", P.TEXTOID)]))
        self.queue(P.data_row([str(sysid), str(tli), format_lsn(pos), self.database]))
        self.queue(P.command_complete("IDENTIFY_SYSTEM"))

    def show(self, name: str) -> None:
        if name == "wal_segment_size":
            value: str | None = format_segsize(self.segsize())
        else:
            value = self.ctx.config.show(name)
        if value is None:
            raise P.SQLError("42704", f'unrecognized configuration parameter "{name}"')
        self.queue(P.row_description([(name, P.TEXTOID)]))
        self.queue(P.data_row([value]))
        self.queue(P.command_complete("SHOW"))

    def timeline_history(self, tli: int) -> None:
        fname = history_file_name(tli)
        path = os.path.join("pg_wal", fname)
        try:
            with open(os.path.join(self.pg_wal, fname), "rb") as f:
                content = f.read()
        except OSError as e:
            code = "58P01" if e.errno == errno.ENOENT else "58030"
            raise P.SQLError(code, f'could not open file "{path}": {e.strerror}') from None
        # PostgreSQL 15 sends both columns as text (the content raw, unescaped).
        self.queue(P.row_description([("filename", P.TEXTOID), ("content", P.TEXTOID)]))
        self.queue(P.data_row([fname, content]))
        self.queue(P.command_complete("TIMELINE_HISTORY"))

    # ------------------------------------------------------------ START_REPLICATION
    def start_replication(self, cmd: RC.StartReplication) -> None:
        if cmd.logical:
            raise P.SQLError("0A000", "logical replication is not supported by walswitch")
        if cmd.slot is not None:
            self.temp_slots.acquire(cmd.slot)
        segsize = self.segsize()
        flush_ptr, flush_tli = self.flush_position()
        self.send_tli_historic = False
        self.send_tli_valid_upto = 0
        self.send_tli_next = 0
        if cmd.timeline and cmd.timeline != flush_tli:
            history = read_history(self.pg_wal, flush_tli)
            switchpoint, next_tli = tli_switch_point(cmd.timeline, history, flush_tli)
            if switchpoint == 0:
                # The requested timeline is newer than ours (or is ours without a history).
                raise P.SQLError("XX000", f"requested timeline {cmd.timeline} is not in this server's history")
            if switchpoint < cmd.startpoint:
                raise P.SQLError(
                    "XX000",
                    f"requested starting point {format_lsn(cmd.startpoint)} on timeline {cmd.timeline} "
                    "is not in this server's history",
                    detail=f"This server's history forked from timeline {cmd.timeline} at "
                           f"{format_lsn(switchpoint)}.")
            self.send_tli = cmd.timeline
            self.send_tli_historic = True
            self.send_tli_valid_upto = switchpoint
            self.send_tli_next = next_tli
        else:
            self.send_tli = flush_tli
        self.done_sending = False
        self.done_receiving = False
        start_lsn = cmd.startpoint
        if not self.send_tli_historic or cmd.startpoint < self.send_tli_valid_upto:
            self.set_state(WalSndState.CATCHUP)
            self.queue(P.copy_both_response())
            self.flush_all()
            if flush_ptr < cmd.startpoint:
                raise P.SQLError("XX000", f"requested starting point {format_lsn(cmd.startpoint)} is ahead of "
                                          f"the WAL flush position of this server {format_lsn(flush_ptr)}")
            self.sent_ptr = cmd.startpoint
            with self.slot.locked():
                self.slot.set(sent_lsn=self.sent_ptr, timeline=self.send_tli)
            self.ctx.events.emit("walsender_streaming", start_lsn=format_lsn(start_lsn), timeline=self.send_tli,
                                 historic=self.send_tli_historic,
                                 valid_upto=format_lsn(self.send_tli_valid_upto) if self.send_tli_historic else None)
            log.debug('"%s" started streaming at %s on timeline %d', self.app_name, format_lsn(start_lsn),
                      self.send_tli)
            self.update_title(f"streaming {format_lsn(self.sent_ptr)}")
            self.stream_loop(segsize)
            self.close_segment()
            self.set_state(WalSndState.STARTUP)
            self.update_title("idle")
        if self.send_tli_historic:
            self.queue(P.row_description([("next_tli", P.INT8OID), ("next_tli_startpos", P.TEXTOID)]))
            self.queue(P.data_row([str(self.send_tli_next), format_lsn(self.send_tli_valid_upto)]))
        self.queue(P.command_complete("START_STREAMING"))
        # PostgreSQL 15 sends the command's own tag too ("dupe, but necessary per
        # libpqrcv_endstreaming"): pg_receivewal reads the result set and then
        # expects one more CommandComplete.
        self.queue(P.command_complete("START_REPLICATION"))

    def stream_loop(self, segsize: int) -> None:
        """WalSndLoop(XLogSendPhysical)."""
        self.last_reply = time.monotonic()
        self.waiting_for_ping = False
        self.caught_up = False
        while True:
            self.check_postmaster()
            self.process_replies()
            if self.done_receiving and self.done_sending and not self.out:
                return
            if not self.out:
                self.send_physical(segsize)
            else:
                self.caught_up = False
            if self.trace.on and self.out and self.sent_ptr > self.traced_sent:
                self.traced_sent = self.sent_ptr
                self.trace.note("sent", self.sent_ptr)     # as it goes to the socket
            self.flush_some()
            if self.caught_up and not self.out:
                if self.state == WalSndState.CATCHUP:
                    log.debug('"%s" has now caught up with upstream server', self.app_name)
                    self.set_state(WalSndState.STREAMING)
                if self.shutdown_requested:
                    self.walsnd_done()
            self.check_timeout()
            self.keepalive_if_necessary()
            if (self.caught_up and not self.done_sending) or self.out or \
                    (self.done_sending and not self.done_receiving):
                self.wait(self.compute_sleep(), want_write=bool(self.out))

    def compute_sleep(self) -> float:
        if self.timeout_ms <= 0:
            sleep = 10.0
        else:
            if self.waiting_for_ping:
                wake = self.last_reply + self.timeout_ms / 1000.0
            else:
                wake = self.last_reply + self.timeout_ms / 2000.0
            sleep = wake - time.monotonic()
        if self.shutdown_requested:
            sleep = min(sleep, 0.2)
        return max(0.0, min(sleep, 10.0))

    def shutdown_overdue(self) -> bool:
        return self.shutdown_since is not None and time.monotonic() - self.shutdown_since > SHUTDOWN_CONFIRM_WAIT

    def reload_config(self) -> None:
        """SIGHUP: re-read walswitch.conf (command-line settings keep their values)."""
        self.reload_pending = False
        cfg = self.ctx.config
        overrides = [(k, str(v)) for k, v in cfg.values.items() if cfg.sources.get(k) == "command line"]
        try:
            self.ctx.config = cfgmod.load(self.ctx.datadir, overrides)
        except cfgmod.ConfigError as e:
            log.error("configuration file was not reloaded: %s", e)
            return
        self.timeout_ms = int(self.ctx.config.get("wal_sender_timeout", 60000) or 0)

    def check_timeout(self) -> None:
        if self.reload_pending:
            self.reload_config()
        if self.shutdown_overdue() and (self.out or not self.caught_up):
            log.info("could not send all WAL to standby \"%s\" before shutdown (sent up to %s)",
                     self.app_name, format_lsn(self.sent_ptr))
            raise Terminate(0)
        if self.timeout_ms <= 0:
            return
        if time.monotonic() >= self.last_reply + self.timeout_ms / 1000.0:
            log.info("terminating walsender process due to replication timeout")
            raise Terminate(0)

    def keepalive_if_necessary(self) -> None:
        if self.timeout_ms <= 0 or self.waiting_for_ping:
            return
        if time.monotonic() >= self.last_reply + self.timeout_ms / 2000.0:
            self.send_keepalive(True)
            self.flush_some()

    def send_keepalive(self, reply_requested: bool) -> None:
        self.queue(P.copy_data(P.keepalive(self.sent_ptr, pg_now(), reply_requested)))
        if reply_requested:
            self.waiting_for_ping = True

    def walsnd_done(self) -> None:
        """WalSndDone: all sent; exit once the standby confirmed it (bounded wait, see header)."""
        if self.state != WalSndState.STOPPING:
            self.set_state(WalSndState.STOPPING)
        if self.shutdown_since is None:
            self.shutdown_since = time.monotonic()
        s = self.slot.snapshot("write_lsn", "flush_lsn")
        replicated = s["flush_lsn"] or s["write_lsn"]
        timed_out = self.shutdown_overdue()
        if self.caught_up and not self.out and (replicated >= self.sent_ptr or timed_out or self.done_sending):
            if timed_out and replicated < self.sent_ptr:
                log.info("standby \"%s\" did not confirm WAL up to %s before shutdown (confirmed %s)",
                         self.app_name, format_lsn(self.sent_ptr), format_lsn(replicated))
            self.queue(P.command_complete("COPY 0"))
            try:
                self.flush_all()
            except ClientGone:
                pass
            raise Terminate(0)
        if not self.waiting_for_ping:
            self.send_keepalive(True)
            self.flush_some()

    def process_replies(self) -> None:
        """ProcessRepliesIfAny."""
        self.read_some()
        received = False
        while True:
            msg = self.next_message()
            if msg is None:
                break
            mtype, body = msg
            received = True
            if mtype == b"d":
                if self.done_receiving:
                    raise ClientGone("unexpected standby message type after receiving CopyDone")
                self.process_standby_message(body)
            elif mtype == b"c":
                if not self.done_sending:
                    self.queue(P.copy_done())
                    self.done_sending = True
                self.done_receiving = True
            elif mtype == b"X":
                raise Terminate(0)
            else:
                raise ClientGone(f"invalid standby message type \"{chr(mtype[0])}\"")
        if self.eof:
            log.debug("unexpected EOF on standby connection")
            raise Terminate(0)
        if received:
            self.last_reply = time.monotonic()
            self.waiting_for_ping = False

    def process_standby_message(self, body: bytes) -> None:
        if not body:
            raise ClientGone("invalid standby message")
        kind = body[0:1]
        if kind == b"r":
            if len(body) < 34:
                raise ClientGone("invalid standby status message")
            write, flush, apply, client_time, reply = P.decode_standby_status(body)
            self.process_reply(write, flush, apply, client_time, reply)
        elif kind == b"h":
            pass   # hot standby feedback: we keep no xmin horizon
        else:
            raise ClientGone(f'unexpected message type "{kind.decode("latin-1")}"')

    def process_reply(self, write: int, flush: int, apply: int, client_time: int, reply: bool) -> None:
        now = pg_now()
        write_lag = self.lag.read(LagTracker.WRITE, write, now)
        flush_lag = self.lag.read(LagTracker.FLUSH, flush, now)
        apply_lag = self.lag.read(LagTracker.APPLY, apply, now)
        clear = False
        if apply == self.sent_ptr:
            if self.fully_applied_last_time:
                clear = True
            self.fully_applied_last_time = True
        else:
            self.fully_applied_last_time = False
        if reply:
            self.send_keepalive(False)
        values: dict[str, int] = {"write_lsn": write, "flush_lsn": flush, "replay_lsn": apply,
                                  "reply_time_us": sane_reply_time(client_time)}
        if write_lag != -1 or clear:
            values["write_lag_us"] = write_lag
        if flush_lag != -1 or clear:
            values["flush_lag_us"] = flush_lag
        if apply_lag != -1 or clear:
            values["replay_lag_us"] = apply_lag
        with self.slot.locked():
            self.slot.set(**values)
        if self.trace.on:
            self.trace.note("primary_updated", apply)

    def send_physical(self, segsize: int) -> None:
        """XLogSendPhysical: one XLogData message, or note that we are caught up."""
        if self.done_sending:
            self.caught_up = True
            return
        if self.send_tli_historic:
            send_rqst = self.send_tli_valid_upto
        else:
            send_rqst, tli = self.flush_position()
            if tli != self.send_tli:
                # Our timeline became historic under us (a cascading standby was
                # promoted): finish it at the switchpoint from the new history.
                history = read_history(self.pg_wal, tli)
                try:
                    end, nxt = tli_switch_point(self.send_tli, history, tli)
                except P.SQLError:
                    end, nxt = 0, 0
                if end:
                    self.send_tli_historic = True
                    self.send_tli_valid_upto = end
                    self.send_tli_next = nxt
                    send_rqst = end
        if self.trace.on and send_rqst > self.traced_flush:
            self.traced_flush = send_rqst
            self.trace.note("walsender_woken", send_rqst)
        self.lag.write(send_rqst, pg_now())
        if self.send_tli_historic and self.send_tli_valid_upto <= self.sent_ptr:
            self.close_segment()
            self.queue(P.copy_done())
            self.done_sending = True
            self.caught_up = True
            log.debug("walsender reached end of timeline at %s (sent up to %s)",
                      format_lsn(self.send_tli_valid_upto), format_lsn(self.sent_ptr))
            return
        if send_rqst <= self.sent_ptr:
            self.caught_up = True
            return
        start = self.sent_ptr
        # At most MAX_SEND_SIZE, and (unlike PostgreSQL) never past the end of
        # the segment, so each message comes from one file.
        limit = min(start + MAX_SEND_SIZE, (segno_of(start, segsize) + 1) * segsize)
        if send_rqst <= limit:
            end = send_rqst
            self.caught_up = not self.send_tli_historic
        else:
            end = limit - limit % XLOG_BLCKSZ   # whole pages; a segment end is one already
            self.caught_up = False
        data = self.read_wal(start, end - start, segsize)
        self.queue(P.copy_data(P.xlog_data_header(start, send_rqst, pg_now()) + data))
        self.sent_ptr = end
        self.slot.set(sent_lsn=end)   # our own slot; a single aligned field
        self.update_title(f"streaming {format_lsn(end)}")

    # ------------------------------------------------------------ BASE_BACKUP
    def send_base_backup(self, cmd: RC.BaseBackup) -> None:
        self.set_state(WalSndState.BACKUP)
        self.update_title("sending backup")
        try:
            basebackup.send(self, cmd.options)
        finally:
            self.set_state(WalSndState.STARTUP)
            self.update_title("idle")
        self.queue(P.command_complete("BASE_BACKUP"))


def main(ctx: ChildContext) -> int:
    child_start(ctx, "walsender")
    sock: socket.socket = ctx.extra["conn_sock"]
    slot = ctx.shared.free_walsnd_slot(os.getpid())
    if slot is None:
        n = ctx.shared.max_wal_senders
        msg = f"number of requested standby connections exceeds max_wal_senders (currently {n})"
        log.critical("%s", msg)
        try:
            sock.sendall(P.error_response("53300", msg, severity="FATAL"))
        except OSError:
            pass
        sock.close()
        return 1
    ws = WalSender(ctx, slot)
    code = 0
    try:
        ws.run()
    except Terminate as t:
        code = t.code
    except ClientGone as e:
        log.debug("%s", e)
        code = 0
    finally:
        try:
            ws.flush_some()
        except Exception:  # noqa: BLE001
            pass
        ws.close_segment()
        ws.trace.flush()
        ws.release_slot()
        if ws.waitset is not None:
            ws.waitset.close()
        try:
            sock.close()
        except OSError:
            pass
    return code
