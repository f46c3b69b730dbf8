"""The backend: one process serving every normal client connection; the single WAL inserter.

States::

    STARTING ──primary (xlog.in_recovery = 0)──> SERVING read-write (owns the WalWriter)
             └─standby (in_recovery = 1)────────> SERVING read-only (hot standby)
    SERVING ──SIGINT (smart)──> DRAINING: no new sessions; exit when the last one ends
    SERVING/DRAINING ──SIGTERM (fast)──> sessions get FATAL 57P01, open transactions abort
    then, on a primary: shutdown checkpoint (control file SHUTDOWNED) ──> exit 0
    any ──postmaster death (EOF on ctx.death_fd)──> exit 1 at once

Who wakes it: its ``selectors`` loop over the listening socket, the client
sockets, the postmaster-death pipe and a signal self-pipe, with a timeout of
at most 100 ms for timers (checkpoint_timeout, archive_timeout, pg_promote
waits) and for ``shared.pm checkpoint_requested``.  Nobody needs to set its
latch; it drains ``shared.latches['backend']`` each round.

What it owns: the WalWriter (on a primary), the key/value store's write
connection, xid assignment, the sessions.  Group commit
(backend/groupcommit.py): within one loop round every session that commits
only inserts its commit record; then one fdatasync, publication of
insert/write/flush positions in ``shared.xlog`` with the walsender latches
set, one SQLite transaction applying the commits (``apply_many``), and only
then the CommandCompletes go out.  A commit is never acknowledged before
its WAL is durable.

Replication connections (``replication=true|database``) are handed to the
postmaster over ``ctx.extra['handoff_sock']`` (SCM_RIGHTS); it forks a
walsender.
"""
from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import ssl
import time
from collections.abc import Callable, Generator
from typing import Any

from backend import checkpoint as ckpt
from backend.activity import Activity
from backend.fdbudget import FdBudget
from backend.groupcommit import GroupCommit
from backend.session import AUTHENTICATION_TIMEOUT, Connection, ConnState, handoff_payload
from backend.sql import Engine, SQLError, Txn
from backend.tlsrelay import Relay
from backend.waits import CommitWait, Panic, ThreadJob, Until, Wait
from libpq import protocol as P
from libpq import tls as tls_mod
from libpq.hba import HbaError, HbaRules, load_hba
from libpq.tls import TLSConfigError
from storage.kvstore import KVStore, kv_path
from utils import config as cfgmod
from utils import elog, lagtrace
from utils.proc import ChildContext, child_start
from xlog import archive_status
from xlog.control import ControlFileError, read_control
from xlog.lsn import advance, format_lsn, is_segment_name, parse_segment_name, segment_name, segno_of
from xlog.record import abort_record, commit_record, kv_delete_record, kv_put_record, kv_role_record
from xlog.writer import WalWriter

log = elog.logger()

LOOP_TIMEOUT = 0.1
FIRST_NORMAL_XID = 3


class Backend(GroupCommit, Engine):
    def __init__(self, ctx: ChildContext):
        self.ctx = ctx
        self.datadir = ctx.datadir
        self.config = ctx.config
        self.shared = ctx.shared
        self.pg_wal = os.path.join(self.datadir, "pg_wal")
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Connection] = {}
        self.commit_queue: list[tuple[Connection, CommitWait]] = []
        self.unapplied: list[CommitWait] = []
        self.sleepers: list[Connection] = []
        self.auth_waiters: list[Connection] = []     # a password check (PBKDF2) runs in a thread
        self.shutdown_mode: str | None = None
        self.reload_pending = False
        self.tls: tuple[ssl.SSLContext, bytes] | None = None   # context and tls-server-end-point hash
        self.writer: WalWriter | None = None
        self.store: KVStore | None = None
        self.hba: HbaRules | None = None     # pg_hba.conf; kept when a reload finds it bad
        self.next_full_xid = FIRST_NORMAL_XID
        self.ckpt_stats = ckpt.CheckpointStats()
        self.last_ckpt_request = 0
        self.last_switch_time = time.monotonic()
        # "Important" WAL (PostgreSQL's term): anything but checkpoints and switches.  An idle
        # server neither checkpoints on checkpoint_timeout nor switches on archive_timeout.
        self.important_since_ckpt = False
        self.important_since_switch = False
        self.listen_sock: socket.socket | None = ctx.extra.get("listen_sock")
        self.handoff_sock: socket.socket | None = ctx.extra.get("handoff_sock")
        self.owns_shutdown_checkpoint = bool(ctx.extra.get("shutdown_checkpoint", True))
        self._segsize = 0
        self.sig_r = self.sig_w = -1
        self.next_sweep = 0.0
        self.fds = FdBudget()
        self.listening = False           # the listen socket is registered (not backing off)
        self.trace = lagtrace.start(self.datadir, "backend", self.config)

    # ------------------------------------------------------------ Engine interface
    def in_recovery(self) -> bool:
        if self.writer is not None:
            return False
        return bool(self.shared.xlog.get("in_recovery"))

    def segsize(self) -> int:
        return self._segsize or int(self.shared.xlog.get("wal_segsize") or 16 << 20)

    def timeline(self) -> int:
        return self.writer.tli if self.writer is not None else int(self.shared.xlog.get("timeline") or 1)

    def _writer(self) -> WalWriter:
        if self.writer is None:
            raise SQLError("25006", "cannot execute this in a read-only transaction")
        return self.writer

    def assign_xid(self) -> int:
        full = self.next_full_xid
        nxt = full + 1
        if nxt & 0xFFFFFFFF < FIRST_NORMAL_XID:          # wrapped: next epoch starts at 3
            nxt = (nxt & ~0xFFFFFFFF) + FIRST_NORMAL_XID
        self.next_full_xid = nxt
        return full & 0xFFFFFFFF

    def _insert(self, spec: tuple[int, int, int, bytes]) -> tuple[int, int]:
        try:
            r = self._writer().insert(*spec)
        except OSError as e:
            raise Panic(f"could not write to WAL: {e}") from e
        self.important_since_ckpt = self.important_since_switch = True
        return r

    def log_change(self, txn: Txn, op: str, key: str, value: str | None) -> None:
        if not txn.xid:
            txn.xid = self.assign_xid()
        if op == "role":
            spec = kv_role_record(txn.xid, key, value)
        else:
            spec = kv_put_record(txn.xid, key, value) if op == "put" else kv_delete_record(txn.xid, key)
        start, _end = self._insert(spec)
        if txn.first_lsn is None:
            txn.first_lsn = start

    def log_commit(self, txn: Txn) -> CommitWait | None:
        if not txn.xid:
            return None
        _start, end = self._insert(commit_record(txn.xid))
        if self.trace.on:
            self.trace.note_commit(end)
        return CommitWait(txn, end)

    def log_abort(self, txn: Txn) -> None:
        if txn.xid and self.writer is not None:
            self._insert(abort_record(txn.xid))

    def wal_position(self, which: str) -> int:
        w = self._writer()
        return {"insert": w.insert_lsn, "write": w.write_lsn, "flush": w.flush_lsn}[which]

    def switch_wal(self) -> int:
        w = self._writer()
        self.apply_pending()
        before = w.insert_lsn
        try:
            if before % w.segsize == 0:
                w.flush()
                result = before
            else:
                start = w.next_record_lsn
                w.switch()
                result = advance(start, 24, w.segsize)   # end of the switch record, as PostgreSQL returns
        except OSError as e:
            raise Panic(f"could not switch WAL: {e}") from e
        self.last_switch_time = time.monotonic()
        self.important_since_switch = False
        self.shared.xlog.update(last_switch_mono_us=int(self.last_switch_time * 1e6))
        self.publish()
        if result != before:
            self.ctx.events.emit("switch", lsn=format_lsn(result),
                                 segment=segment_name(w.tli, segno_of(before, w.segsize), w.segsize))
        return result

    def checkpoint(self) -> None:
        if self.writer is None:
            # On a standby CHECKPOINT asks for a restartpoint (the startup process's business).
            self.bump_checkpoint_request()
            return
        ckpt.create_checkpoint(self, "immediate force wait")

    def offload(self, fn: Callable[[], Any]) -> Generator[Wait, None, Any]:
        """``fn`` in a thread; the statement waits for it (cancellably) while the loop goes on."""
        job = ThreadJob(fn, self.wake, "offload")
        yield Until(job.done.is_set, float("inf"))
        return job.value()

    def signal_postmaster(self, sig: int, **pm_flags: int) -> None:
        """Raise PMSignal flags (under the pm region's lock), then send ``sig`` to the postmaster."""
        if pm_flags:
            with self.shared.pm.locked() as pm:
                pm.set(**pm_flags)
        pid = self.shared.postmaster_pid
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def bump_checkpoint_request(self) -> None:
        pm = self.shared.pm
        with pm.locked():
            pm.set(checkpoint_requested=pm.get("checkpoint_requested") + 1)
        self.signal_postmaster(signal.SIGUSR1)

    def request_reload(self) -> None:
        """pg_reload_conf(): SIGHUP to the postmaster, which forwards it to every child."""
        self.signal_postmaster(signal.SIGHUP)

    def request_logrotate(self) -> None:
        """pg_rotate_logfile(): PostgreSQL's PMSIGNAL_ROTATE_LOGFILE; the postmaster owns the log file."""
        self.signal_postmaster(signal.SIGUSR1, rotate_logfile=1)

    def request_promote(self) -> None:
        with self.shared.recovery.locked() as r:
            r.set(promote_requested=1)
        self.signal_postmaster(signal.SIGUSR1, promote_requested=1)

    # ------------------------------------------------------------ transactions in flight
    def open_transaction_lsns(self) -> list[int]:
        out = []
        for c in self.conns.values():
            if c.session is not None:
                lsn = c.session.in_progress_first_lsn()
                if lsn is not None:
                    out.append(lsn)
        return out

    def oldest_open_xid(self) -> int:
        xids = [c.session.txn.xid for c in self.conns.values()
                if c.session is not None and c.session.txn is not None and c.session.txn.xid]
        return min(xids) if xids else 0

    def session_count(self) -> int:
        return sum(1 for c in self.conns.values() if c.state == ConnState.READY)

    def on_segment_complete(self, segno: int, path: str) -> None:
        name = os.path.basename(path)
        self.ckpt_stats.segments_added += 1
        if self.config["archive_mode"] != "off":
            archive_status.mark_ready(self.pg_wal, name)
            self.shared.latches["archiver"].set()

    # ------------------------------------------------------------ connections
    def accept(self) -> None:
        assert self.listen_sock is not None
        for _ in range(64):
            try:
                sock, addr = self.listen_sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.accept_failed(e)
                return
            if not self.fds.room_for_client():
                self.fds.refuse(sock)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock, addr)
            self.conns[conn.fd] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            conn.registered_mask = selectors.EVENT_READ

    def accept_failed(self, e: OSError) -> None:
        """Out of descriptors (or another accept error): refuse one waiting client with a spare
        descriptor, then stop listening for ACCEPT_BACKOFF instead of spinning on a readable socket."""
        assert self.listen_sock is not None
        # Counted (and, first in its interval, logged) before the spare refuses a client, so that the
        # summary line names the accept() failure rather than only a refusal.
        self.fds.accept_failed(e)
        if e.errno in (errno.EMFILE, errno.ENFILE) and self.fds.release_spare():
            with contextlib.suppress(OSError):
                sock, _addr = self.listen_sock.accept()
                self.fds.refuse(sock)
            self.fds.restore_spares()
        self.set_listening(False)

    def set_listening(self, on: bool) -> None:
        if self.listen_sock is None or on == self.listening:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            if on:
                self.sel.register(self.listen_sock, selectors.EVENT_READ, "listen")
            else:
                self.sel.unregister(self.listen_sock)
        self.listening = on

    def wake(self) -> None:
        """Wake the loop from another thread (a statement parsed off the loop)."""
        with contextlib.suppress(OSError):
            os.write(self.sig_w, b"\0")

    def cancel_request(self, pid: int, key: int) -> None:
        """CancelRequest: cancel the running statement of the session with this (pid, key)."""
        conn = self.session_by_pid(pid)
        if conn is not None and conn.cancel_key == key:
            conn.request_interrupt("57014", "canceling statement due to user request")

    def session_by_pid(self, pid: int) -> Connection | None:
        for conn in self.conns.values():
            if conn.pid == pid and conn.session is not None and not conn.closed:
                return conn
        return None

    def activity(self) -> list[Activity]:
        """pg_stat_activity: the sessions of this loop, then the walsenders (from shared memory)."""
        out = [a for a in (c.activity() for c in self.conns.values()) if a is not None]
        for slot in self.shared.walsnd:
            s = slot.read()
            if s["pid"]:
                out.append(Activity(
                    pid=s["pid"], usename=None, superuser=True, datname=None,
                    application_name=s["application_name"], client_addr=s["client_addr"] or None,
                    client_port=s["client_port"] if s["client_addr"] else None,
                    backend_start_us=s["backend_start_us"] or None, state="active", backend_type="walsender"))
        return out

    def signal_backend(self, pid: int, terminate: bool) -> None:
        conn = self.session_by_pid(pid)
        if conn is not None:
            if terminate:
                conn.terminate()
            else:
                conn.request_interrupt("57014", "canceling statement due to user request")
        elif terminate:
            # A walsender: a real process; SIGTERM ends it (after what it streams is sent).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    def check_statement_timeouts(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.statement_deadline is not None and conn.gen is not None and now >= conn.statement_deadline:
                conn.statement_deadline = None
                conn.request_interrupt("57014", "canceling statement due to statement timeout")

    def forget(self, conn: Connection) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(conn.sock)
            if conn.relay is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.sel.unregister(conn.relay.sock)

    def hand_off(self, conn: Connection, pkt: P.StartupPacket) -> None:
        """A replication connection: pass the socket to the postmaster, which forks a walsender."""
        if self.handoff_sock is None or self.shutdown_mode is not None:
            conn.fatal("57P03", "the database system is shutting down" if self.shutdown_mode
                       else "replication connections are not accepted here")
            return
        conn.flush_out()          # the 'N' to an SSLRequest, if any
        try:
            socket.send_fds(self.handoff_sock, [handoff_payload(pkt, conn.role)], [conn.sock.fileno()])
        except OSError as e:
            log.warning("could not hand replication connection to the postmaster: %s", e)
            conn.fatal("08006", "could not start WAL sender")
            return
        conn.detach()

    def hand_off_relayed(self, conn: Connection, pkt: P.StartupPacket, early: bytes) -> None:
        """A replication connection over TLS: the walsender gets a socketpair, this loop relays."""
        if self.handoff_sock is None or self.shutdown_mode is not None:
            conn.fatal("57P03", "the database system is shutting down" if self.shutdown_mode
                       else "replication connections are not accepted here")
            return
        conn.flush_out()          # authentication's last message goes before the walsender's bytes
        ours, theirs = socket.socketpair()
        try:
            peer = conn.sock.getpeername()
        except OSError:
            peer = ("?", 0)
        try:
            socket.send_fds(self.handoff_sock, [handoff_payload(pkt, conn.role, peer[:2])], [theirs.fileno()])
        except OSError as e:
            ours.close()
            log.warning("could not hand replication connection to the postmaster: %s", e)
            conn.fatal("08006", "could not start WAL sender")
            return
        finally:
            theirs.close()
        conn.state = ConnState.RELAY
        conn.relay = Relay(conn, ours, early)
        conn.relay.flush()

    def update_registrations(self) -> None:
        for conn in list(self.conns.values()):
            if conn.closed:
                continue
            mask = (selectors.EVENT_READ if conn.wants_read() else 0) | \
                (selectors.EVENT_WRITE if conn.out or conn.raw_out else 0)
            if not self.register(conn.sock, conn, conn.registered_mask, mask):
                conn.close()
                continue
            conn.registered_mask = mask
            relay = conn.relay
            if relay is not None and not relay.closed:
                rmask = (selectors.EVENT_READ if relay.wants_read() else 0) | \
                    (selectors.EVENT_WRITE if relay.to_walsender else 0)
                if not self.register(relay.sock, relay, relay.registered_mask, rmask):
                    conn.close()
                    continue
                relay.registered_mask = rmask

    def register(self, sock: socket.socket, data: object, old: int, new: int) -> bool:
        """Bring one socket's selector registration from mask ``old`` to ``new``; False if it is gone."""
        if new == old:
            return True
        try:
            if new == 0:
                self.sel.unregister(sock)
            elif old == 0:
                self.sel.register(sock, new, data)
            else:
                self.sel.modify(sock, new, data)
        except (KeyError, ValueError, OSError):
            return False
        return True

    def flush_outputs(self) -> None:
        for conn in list(self.conns.values()):
            if conn.out or conn.raw_out:
                conn.flush_out()

    # ------------------------------------------------------------ signals
    def install_signals(self) -> None:
        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(self.sig_w, False)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)

        def on_term(_s: int, _f: Any) -> None:
            self.shutdown_mode = "fast"

        def on_int(_s: int, _f: Any) -> None:
            if self.shutdown_mode is None:
                self.shutdown_mode = "smart"

        def on_hup(_s: int, _f: Any) -> None:
            self.reload_pending = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.signal(signal.SIGUSR2, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def reload_config(self) -> None:
        self.reload_pending = False
        self.load_hba()          # independent of the settings file, as PostgreSQL's reload
        overrides = [(k, str(v)) for k, v in self.config.values.items()
                     if self.config.sources.get(k) == "command line"]
        try:
            self.config = cfgmod.load(self.datadir, overrides, previous=self.config)
        except cfgmod.ConfigError as e:
            # The postmaster logs the file's errors (PostgreSQL's children report them at DEBUG2).
            log.debug("configuration file was not reloaded: %s", e)
            return
        try:
            self.load_tls()
        except TLSConfigError as e:
            log.error("%s", str(e).replace("\nDETAIL:  ", " "))
            log.warning("the previous SSL configuration stays in use")

    def load_tls(self) -> None:
        """(Re)build the TLS context from the settings, as PostgreSQL does at start and on reload."""
        ctx = tls_mod.server_context(self.config, self.datadir)
        if ctx is None:
            self.tls = None
            return
        with open(os.path.join(self.datadir, self.config["ssl_cert_file"]), "rb") as f:
            self.tls = (ctx, tls_mod.tls_server_end_point(f.read()))

    def load_hba(self) -> None:
        """(Re)read pg_hba.conf; a bad file keeps the rules in force (PostgreSQL's load_hba)."""
        try:
            self.hba = load_hba(os.path.join(self.datadir, "pg_hba.conf"))
        except HbaError as e:
            log.error("%s", e)
            log.error("pg_hba.conf was not reloaded" if self.hba is not None else "could not load pg_hba.conf")

    # ------------------------------------------------------------ start
    def start(self) -> None:
        self.install_signals()
        self.load_hba()
        self.load_tls()          # the postmaster checked the files already; a failure here is a FATAL
        x = self.shared.xlog.read()
        self._segsize = int(x["wal_segsize"])
        if not x["in_recovery"]:
            self.start_primary(x)
            self.store = KVStore(kv_path(self.datadir))
        else:
            self.store = KVStore(kv_path(self.datadir), readonly=True)
        if self.listen_sock is not None:
            self.listen_sock.setblocking(False)
            self.set_listening(True)
        self.sel.register(self.ctx.death_fd, selectors.EVENT_READ, "death")
        self.sel.register(self.sig_r, selectors.EVENT_READ, "signal")
        self.last_ckpt_request = int(self.shared.pm.get("checkpoint_requested"))

    def start_primary(self, x: dict[str, Any]) -> None:
        try:
            cf = read_control(self.datadir)
        except ControlFileError as e:
            raise Panic(str(e)) from None
        self.next_full_xid = max(cf.next_xid, FIRST_NORMAL_XID)
        self.writer = WalWriter(self.pg_wal, int(x["timeline"]), self._segsize, int(x["system_identifier"]),
                                int(x["insert_lsn"]), int(x["last_record_lsn"]),
                                on_segment_complete=self.on_segment_complete, prealloc=True)
        st = self.ckpt_stats
        st.prior_redo = cf.redo_lsn
        st.last_end_lsn = self.writer.insert_lsn
        st.last_time = time.monotonic()
        self.last_switch_time = time.monotonic()
        # Segments below the oldest one present are gone (walsenders report that).
        oldest = None
        for name in os.listdir(self.pg_wal):
            if is_segment_name(name):
                with contextlib.suppress(ValueError):
                    s = parse_segment_name(name, self._segsize)[1]
                    oldest = s if oldest is None else min(oldest, s)
        with self.shared.xlog.locked() as xl:
            if oldest is not None and xl.get("oldest_kept_segno") < oldest:
                xl.set(oldest_kept_segno=oldest)
            xl.set(accepting_writes=1, last_switch_mono_us=int(self.last_switch_time * 1e6))
        self.publish()
        log.debug("backend: WAL inserter at %s on timeline %d, next xid %d",
                  format_lsn(self.writer.insert_lsn), self.writer.tli, self.next_full_xid)

    # ------------------------------------------------------------ the loop
    def run(self) -> int:
        self.start()
        while True:
            if self.trace.on:
                self.trace.idle()
            events = self.sel.select(self.loop_timeout())
            for key, mask in events:
                data = key.data
                if data == "death":
                    if self.postmaster_died():
                        return 1
                elif data == "listen":
                    self.accept()
                elif data == "signal":
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        while os.read(self.sig_r, 4096):
                            pass
                elif isinstance(data, Relay):
                    if mask & selectors.EVENT_READ and not data.closed:
                        data.on_readable()
                    if mask & selectors.EVENT_WRITE and not data.closed:
                        data.flush()
                else:
                    conn: Connection = data
                    if mask & selectors.EVENT_READ and not conn.closed:
                        conn.on_readable()
                    if mask & selectors.EVENT_WRITE and not conn.closed:
                        conn.flush_out()
            self.group_commit()
            if self.auth_waiters:
                self.auth_waiters = [c for c in self.auth_waiters if not c.auth_check_done()]
            self.wake_sleepers()
            self.check_statement_timeouts()
            self.group_commit()
            if self.writer is None and self.shutdown_mode is None and not self.shared.xlog.get("in_recovery"):
                # Before the outputs go: a pg_promote() answered in this round must find the
                # backend already the WAL inserter (a SIGTERM right after it wrote no checkpoint).
                self.promote_in_place()
            self.flush_outputs()
            if self.reload_pending:
                self.reload_config()
            if self.writer is not None:
                self.timers()
            self.sweep_startups()
            if not self.listening and time.monotonic() >= self.fds.paused_until:
                self.set_listening(True)
            self.shared.latches["backend"].reset()
            if self.shutdown_mode is not None and self.shutdown_ready():
                return self.shutdown()
            self.update_registrations()

    def promote_in_place(self) -> None:
        """The startup finished a promotion: become the WAL inserter without dropping a session."""
        x = self.shared.xlog.read()
        if not x["insert_lsn"]:
            return
        if self.store is not None:
            self.store.close()
        self.start_primary(x)
        self.store = KVStore(kv_path(self.datadir))
        self.owns_shutdown_checkpoint = True
        log.debug("backend: promoted in place, WAL inserter at %s", format_lsn(self.writer.insert_lsn))

    def loop_timeout(self) -> float:
        """0 with commits to finish; else until the soonest sleeper is due (a long statement's pause
        is due at once), at most LOOP_TIMEOUT."""
        if self.commit_queue:
            return 0.0
        timeout = LOOP_TIMEOUT
        if self.sleepers:
            now = time.monotonic()
            for conn in self.sleepers:
                w = conn.wait
                if isinstance(w, Until):
                    timeout = min(timeout, max(0.0, w.deadline - now))
        return timeout

    def postmaster_died(self) -> bool:
        try:
            data = os.read(self.ctx.death_fd, 1)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b""

    def wake_sleepers(self) -> None:
        if not self.sleepers:
            return
        now = time.monotonic()
        sleepers, self.sleepers = self.sleepers, []
        for conn in sleepers:
            if not conn.check_until(now) and conn not in self.sleepers:
                self.sleepers.append(conn)

    def sweep_startups(self) -> None:
        """Close connections that never finished their startup packet (authentication_timeout)."""
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + 1.0
        for conn in list(self.conns.values()):
            if conn.state == ConnState.STARTUP and now - conn.born > AUTHENTICATION_TIMEOUT:
                conn.fatal("08006", "canceling authentication due to timeout")
                conn.flush_out()
                conn.close()

    def timers(self) -> None:
        cfg = self.config
        w = self.writer
        now = time.monotonic()
        req = int(self.shared.pm.get("checkpoint_requested"))
        if req != self.last_ckpt_request:
            self.last_ckpt_request = req
            ckpt.create_checkpoint(self, "immediate force wait")
        elif now - self.ckpt_stats.last_time >= cfg["checkpoint_timeout"]:
            if self.important_since_ckpt:
                ckpt.create_checkpoint(self, "time")
            else:
                self.ckpt_stats.last_time = now       # idle: skipped, as PostgreSQL does
        else:
            # max_wal_size: PostgreSQL checkpoints every max_wal_size / (1 + completion_target)
            limit = cfg["max_wal_size"] * 1024 * 1024 / 1.9
            if self.important_since_ckpt and w.insert_lsn - self.ckpt_stats.last_end_lsn >= limit:
                ckpt.create_checkpoint(self, "wal")
        timeout = cfg["archive_timeout"]
        if timeout > 0 and now - self.last_switch_time >= timeout:
            if self.important_since_switch and w.insert_lsn % w.segsize != 0:
                self.switch_wal()
            else:
                self.last_switch_time = now

    # ------------------------------------------------------------ shutdown
    def shutdown_ready(self) -> bool:
        if self.shutdown_mode == "fast":
            return True
        # smart: wait for the sessions to end
        return not any(c.state == ConnState.READY for c in self.conns.values())

    def shutdown(self) -> int:
        if self.shutdown_mode == "fast" and self.session_count() and self.writer is not None:
            log.info("aborting any active transactions")
        for conn in list(self.conns.values()):
            if conn.state == ConnState.READY and not conn.close_after_flush:
                conn.fatal("57P01", "terminating connection due to administrator command")
            elif conn.state == ConnState.STARTUP:
                conn.fatal("57P03", "the database system is shutting down")
            if conn.session is not None:
                conn.session.abort_all()
            conn.flush_out()
        for conn in list(self.conns.values()):
            conn.close()
        if self.writer is not None:
            self.group_commit()
            if self.owns_shutdown_checkpoint:
                ckpt.create_checkpoint(self, "shutdown immediate", shutdown=True)
            else:
                self.apply_pending()
                self.writer.flush()
                self.publish()
            with self.shared.xlog.locked() as x:
                x.set(accepting_writes=0)
        self.close()
        return 0

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.close()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        if self.store is not None:
            self.store.close()
        self.fds.close()
        self.trace.flush()
        with contextlib.suppress(Exception):
            signal.set_wakeup_fd(-1)
        with contextlib.suppress(Exception):
            self.sel.close()


def main(ctx: ChildContext) -> int:
    child_start(ctx, "backend")
    b = Backend(ctx)
    try:
        return b.run()
    except Panic as e:
        log.critical("%s", e)
        return 3
