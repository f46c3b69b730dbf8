"""The postmaster: supervisor of one walswitch server (primary or standby).

It owns the shared memory segment and its semaphores, the listening socket,
the lock file and the death pipe, and it forks every other process.  It never
touches WAL or client data itself, so it cannot be wedged by them.

States (``PMState``, one table of allowed transitions below)::

    INIT ──> STARTUP ──(startup exits 0: primary)──────────────> RUN
               │  └──(standby: startup signals RECOVERY_STARTED)> RECOVERY
               │                                                  │ (consistent: HOT_STANDBY_READY)
               │                                                  v
               │                                               HOT_STANDBY ──(promoted: startup exits 0)──> RUN
    any running state ──(a child crashed)──> CRASH ──(all children gone; shared memory recreated)──> STARTUP
    any running state ──(smart/fast stop)──> STOP_BACKENDS ──(backend gone)──> STOP_SENDERS ──> EXIT
    any state ──(immediate stop)──> STOP_IMMEDIATE ──(all children gone)──> EXIT

Who wakes whom: signal handlers only queue the signal number and write a byte
to the self-pipe (gunicorn's arbiter), and the main loop below reads top to
bottom: sleep on the self-pipe and the walsender hand-off socket, then handle
signals, reap children, fork walsenders, read PMSignal flags, rotate the log
file if asked to or due (postmaster/syslogger.py), and start what the current
state needs.  Children raise PMSignal flags in shared memory and send SIGUSR1.

Child exits, as PostgreSQL's reaper judges them: exit 0 is orderly; a
walreceiver (or archiver) that exits 1 is normal and may be started again;
the startup process exiting 1 (FATAL) ends the server; any other exit or
death by a signal is a crash: every other child gets SIGQUIT, and once all
are gone the shared memory and semaphores are removed and created again (a
killed child may have held a mutex), and the startup process recovers from
the last checkpoint or restartpoint.
"""
from __future__ import annotations

import errno
import json
import multiprocessing.util
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

from libpq.tls import TLSConfigError, server_context
from postmaster import pidfile
from postmaster.syslogger import LogRotation
from shmem import names
from shmem.segment import SharedState
from utils import elog, file_perm
from utils.config import Config, listen_host
from utils.events import EventLog
from utils.proc import ChildContext, child_exit, set_title

log = elog.logger()

# Seconds an immediate-stop or crash waits before SIGKILL, as PostgreSQL's SIGKILL_CHILDREN_AFTER_SECS.
SIGKILL_AFTER = 5.0


class PMState(IntEnum):
    INIT = 0
    STARTUP = 1          # startup process running (crash recovery, or standby before recovery starts)
    RECOVERY = 2         # standby: startup is replaying; no client connections yet
    HOT_STANDBY = 3      # standby: consistent, read-only backend running
    RUN = 4              # primary: backend accepting writes
    CRASH = 5            # a child crashed: waiting for the others to die
    STOP_BACKENDS = 6    # smart/fast shutdown: backend finishing (shutdown checkpoint on a primary)
    STOP_SENDERS = 7     # walsenders and archiver sending/archiving what is left
    STOP_IMMEDIATE = 8   # immediate shutdown: waiting for SIGQUIT-ed children
    EXIT = 9


TRANSITIONS: dict[PMState, set[PMState]] = {
    PMState.INIT: {PMState.STARTUP, PMState.EXIT},
    PMState.STARTUP: {PMState.RUN, PMState.RECOVERY, PMState.CRASH, PMState.STOP_BACKENDS,
                      PMState.STOP_IMMEDIATE, PMState.EXIT},
    PMState.RECOVERY: {PMState.HOT_STANDBY, PMState.RUN, PMState.CRASH, PMState.STOP_BACKENDS,
                       PMState.STOP_IMMEDIATE, PMState.EXIT},
    PMState.HOT_STANDBY: {PMState.RUN, PMState.CRASH, PMState.STOP_BACKENDS, PMState.STOP_IMMEDIATE,
                          PMState.EXIT},
    PMState.RUN: {PMState.CRASH, PMState.STOP_BACKENDS, PMState.STOP_IMMEDIATE},
    PMState.CRASH: {PMState.STARTUP, PMState.STOP_IMMEDIATE, PMState.EXIT},
    PMState.STOP_BACKENDS: {PMState.STOP_SENDERS, PMState.STOP_IMMEDIATE, PMState.CRASH, PMState.EXIT},
    PMState.STOP_SENDERS: {PMState.EXIT, PMState.STOP_IMMEDIATE},
    PMState.STOP_IMMEDIATE: {PMState.EXIT},
    PMState.EXIT: set(),
}

SHUTDOWN_SIGNALS = {signal.SIGTERM: "smart", signal.SIGINT: "fast", signal.SIGQUIT: "immediate"}

ROLE_NAMES = {"startup": "startup process", "backend": "backend process", "archiver": "archiver process",
              "walsender": "WAL sender process", "walreceiver": "WAL receiver process"}


class StartupFailure(RuntimeError):
    """The server cannot start; the message is the one-line reason."""


@dataclass
class Child:
    pid: int
    role: str
    started: float
    extra: dict = field(default_factory=dict)


def describe_exit(status: int) -> tuple[str, bool, int | None]:
    """PostgreSQL's LogChildExit wording; returns (text, by_signal, exit_code)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.strsignal(sig) or str(sig)
        except ValueError:
            name = str(sig)
        return f"was terminated by signal {sig}: {name}", True, None
    code = os.WEXITSTATUS(status)
    return f"exited with exit code {code}", False, code


def preload_child_modules() -> None:
    """Import every child's code once, right after the startup process is forked.

    A child is forked from the postmaster, so a module imported here is
    already loaded in every child; imported lazily at the first fork it cost
    tens of milliseconds each time a walreceiver or backend was first
    needed (as gunicorn's preload_app, for the same reason).  The startup is
    forked before this (it imports only its own code, ~20 ms): loading the
    backend's and walreceiver's code (pglast, psycopg, cryptography: ~0.2 s)
    first delayed recovery, and a standby's catch-up, by that much.
    """
    import archiver.archiver  # noqa: F401
    import backend.backend  # noqa: F401
    import cryptography.hazmat.primitives.serialization  # noqa: F401  (libpq.tls imports it on first use)
    import cryptography.x509  # noqa: F401
    import walsender.walsender  # noqa: F401
    import walreceiver.walreceiver  # noqa: F401


class Postmaster:
    def __init__(self, datadir: str, config: Config, *, detached: bool = False):
        self.datadir = os.path.abspath(datadir)
        self.config = config
        self.detached = detached
        self.state = PMState.INIT
        self.children: dict[int, Child] = {}
        self.pending_signals: list[int] = []
        self.shutdown_mode: str | None = None
        self.exit_code = 0
        self.standby = os.path.exists(os.path.join(self.datadir, "standby.signal"))
        self.shared: SharedState | None = None
        self.events: EventLog | None = None
        self.listen_sock: socket.socket | None = None
        self.handoff_parent: socket.socket | None = None
        self.handoff_child: socket.socket | None = None
        self.crash_deadline: float | None = None
        self.startup_signaled = False
        self.walreceiver_requested = False
        self.logrotation: LogRotation | None = None

    # ------------------------------------------------------------ the loop
    def run(self) -> int:
        """Main loop; reads top to bottom."""
        self.setup()
        self.transition(PMState.STARTUP, "server starting")
        self.start_startup()
        # The other children's code is loaded once the startup runs: recovery needs none
        # of it, and on two cores the import overlaps the startup's work.
        preload_child_modules()
        while self.state != PMState.EXIT:
            self.sleep(self.logrotation.sleep_time(1.0))
            self.handle_signals()
            self.reap_children()
            self.accept_handoffs()
            self.check_pmsignals()
            self.logrotation.check()
            self.check_timeouts()
            self.maintain_children()
        self.teardown()
        return self.exit_code

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        # As PostgreSQL's ChangeToDataDir: every process works in the data directory
        # (relative paths in settings mean the same to all of them, and a process of
        # this server can be told by its working directory even after an orphaning).
        file_perm.restrict_umask()
        try:
            file_perm.check_data_dir_mode(self.datadir)
        except file_perm.DataDirModeError as e:
            raise StartupFailure(str(e)) from None
        os.chdir(self.datadir)
        try:
            server_context(self.config, self.datadir)     # refuse to start on bad TLS files, as PostgreSQL
        except TLSConfigError as e:
            raise StartupFailure(str(e)) from None
        self.events = EventLog(self.datadir, "postmaster")
        port = self.config["port"]
        host = listen_host(self.config)
        self.listen_sock = self.open_listen_socket(host, port)
        pidfile.create(self.datadir, port, host, names.server_key(self.datadir))
        self.self_r, self.self_w = os.pipe()
        os.set_blocking(self.self_r, False)
        os.set_blocking(self.self_w, False)
        self.logrotation = LogRotation(self.datadir, self.config, self.events, self.wake)
        self.death_r, self.death_w = os.pipe()
        self.handoff_parent, self.handoff_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.handoff_parent.setblocking(False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(sig, self.on_signal)
        self.create_shared()
        set_title(f"postmaster -D {self.datadir}")
        log.info("starting walswitch %s server on %s:%d", "standby" if self.standby else "primary", host, port)
        log.info('listening on IPv4 address "%s", port %d', host, port)
        for path, skipped in self.config.skipped:
            log.info('PostgreSQL settings that walswitch does not implement were ignored in file "%s": %s',
                     path, ", ".join(skipped))
        self.events.emit("postmaster_start", mode="standby" if self.standby else "primary", port=port)

    def open_listen_socket(self, host: str, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            s.close()
            hint = f" Is another postmaster already running on port {port}?" if e.errno == errno.EADDRINUSE else ""
            raise StartupFailure(f'could not bind IPv4 address "{host}": {e.strerror}.{hint}') from None
        s.listen(128)
        s.setblocking(False)
        return s

    def create_shared(self) -> None:
        self.shared = SharedState.create(self.datadir, self.config["max_wal_senders"], os.getpid())
        self.shared.recovery.set(coordination=["concurrent", "stop_walreceiver", "walreceiver_restores"]
                                 .index(self.config["standby_wal_coordination"]))

    def teardown(self) -> None:
        self.events.emit("postmaster_exit", code=self.exit_code)
        if self.shared is not None:
            self.shared.destroy()
            self.shared = None
        if self.listen_sock is not None:
            self.listen_sock.close()
        log.info("database system is shut down")
        # The lock file goes last, once the log queue is drained (which may take seconds when a
        # killed child left it unbalanced): without it, the postmaster does nothing but exit.
        elog.shutdown()
        pidfile.remove(self.datadir)

    # ------------------------------------------------------------ signals
    def on_signal(self, signum: int, _frame: object) -> None:
        # Only queue and wake the loop: nothing else is safe here.
        self.pending_signals.append(signum)
        self.wake()

    def wake(self) -> None:
        """Wake the loop (a signal handler, or the log's receiver thread: a file to rotate)."""
        try:
            os.write(self.self_w, b"!")
        except OSError:
            pass

    def sleep(self, timeout: float) -> None:
        fds = [self.self_r, self.handoff_parent]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self.self_r in readable:
            try:
                while os.read(self.self_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def handle_signals(self) -> None:
        while self.pending_signals:
            sig = self.pending_signals.pop(0)
            if sig in SHUTDOWN_SIGNALS:
                self.request_shutdown(SHUTDOWN_SIGNALS[sig])
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGUSR1:
                pass  # PMSignal flags and the logrotate file are read every iteration
            # SIGCHLD: reap_children runs every iteration anyway.

    def reload(self) -> None:
        """SIGHUP: re-read the settings as PostgreSQL's ProcessConfigFile (a file with errors is
        logged, and the changes it allows applied), then signal every child whatever the files held:
        the backend re-reads pg_hba.conf, each child its settings."""
        from utils import config as cfgmod
        log.info("received SIGHUP, reloading configuration files")
        try:
            new = cfgmod.load(self.datadir, self.config_overrides(), previous=self.config)
        except cfgmod.ConfigError as e:
            log.error("%s", e)
            log.error('configuration file "%s" contains errors; no changes were applied',
                      cfgmod.error_file(e, self.datadir))
        else:
            for line in new.errors:
                log.error("%s", line)
            if new.reload_summary():
                log.error("%s", new.reload_summary())
            self.config = new
            self.logrotation.reload(new)
        for c in list(self.children.values()):
            self.signal_child(c, signal.SIGHUP)

    def config_overrides(self) -> list[tuple[str, str]]:
        return [(k, str(v)) for k, v in self.config.values.items() if self.config.sources.get(k) == "command line"]

    # ------------------------------------------------------------ state
    def transition(self, new: PMState, reason: str) -> None:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"postmaster: invalid state transition {old.name} -> {new.name}")
        self.state = new
        log.debug("postmaster state %s -> %s: %s", old.name, new.name, reason)
        if self.events is not None:
            self.events.emit("pm_state", **{"from": old.name, "to": new.name, "reason": reason})
        status = {PMState.RUN: "ready", PMState.HOT_STANDBY: "ready", PMState.RECOVERY: "standby",
                  PMState.STOP_BACKENDS: "stopping", PMState.STOP_SENDERS: "stopping",
                  PMState.STOP_IMMEDIATE: "stopping"}.get(new)
        if status:
            pidfile.set_status(self.datadir, status)

    def request_shutdown(self, mode: str) -> None:
        order = {"smart": 0, "fast": 1, "immediate": 2}
        if self.shutdown_mode is not None and order[mode] <= order[self.shutdown_mode]:
            return
        self.shutdown_mode = mode
        log.info("received %s shutdown request", mode)
        self.events.emit("shutdown_request", mode=mode)
        if mode == "immediate" or self.state == PMState.CRASH:
            for c in list(self.children.values()):
                self.signal_child(c, signal.SIGQUIT)
            self.crash_deadline = time.monotonic() + SIGKILL_AFTER
            if self.state != PMState.STOP_IMMEDIATE:
                self.transition(PMState.STOP_IMMEDIATE, f"{mode} shutdown")
            return
        if self.state in (PMState.STARTUP, PMState.RECOVERY, PMState.HOT_STANDBY, PMState.RUN,
                          PMState.STOP_BACKENDS):
            if self.state != PMState.STOP_BACKENDS:
                self.transition(PMState.STOP_BACKENDS, f"{mode} shutdown")
            self.stop_backends()

    def stop_backends(self) -> None:
        """First shutdown phase: clients and WAL producers (startup, walreceiver, backend)."""
        for c in list(self.children.values()):
            if c.role == "backend":
                # SIGTERM: fast (terminate sessions); SIGINT: smart (wait for them).
                self.signal_child(c, signal.SIGTERM if self.shutdown_mode == "fast" else signal.SIGINT)
            elif c.role in ("startup", "walreceiver"):
                self.signal_child(c, signal.SIGTERM)

    # ------------------------------------------------------------ children
    def fork_child(self, role: str, target: Callable[[ChildContext], int], title: str,
                   extra: dict | None = None, keep_fds: tuple = ()) -> int:
        assert self.shared is not None and self.events is not None
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                # A raw fork does not run multiprocessing's after-fork hooks; the log
                # queue needs them to start its own feeder thread in this process.
                multiprocessing.util._run_after_forkers()
                elog.detach_logfile_in_child()     # the log file is the postmaster's (syslogger.py)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(self.death_w)
                os.close(self.self_r)
                os.close(self.self_w)
                if "handoff_sock" not in (extra or {}):
                    self.handoff_child.close()
                self.handoff_parent.close()
                if "listen_sock" not in (extra or {}):
                    self.listen_sock.close()
                ctx = ChildContext(self.datadir, self.config, self.shared, role, self.death_r,
                                   self.events, dict(extra or {}))
                from utils.proc import child_start, run_child
                child_start(ctx, title)
                code = run_child(target, ctx)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: BLE001 - a child must never return into the postmaster's loop
                try:
                    # A bug, not bad input: one FATAL line; the traceback only at DEBUG.
                    log.critical("%s: %s", ROLE_NAMES.get(role, role), e)
                    log.debug("%s failed", role, exc_info=True)
                except Exception:
                    pass
                code = 1
            finally:
                child_exit(code if isinstance(code, int) else 1)
        self.children[pid] = Child(pid, role, time.monotonic(), dict(extra or {}))
        self.events.emit("fork", child=role, child_pid=pid)
        return pid

    def signal_child(self, c: Child, sig: int) -> None:
        try:
            os.kill(c.pid, sig)
        except ProcessLookupError:
            pass

    def by_role(self, role: str) -> list[Child]:
        return [c for c in self.children.values() if c.role == role]

    def start_startup(self) -> None:
        from startup.startup import main as startup_main
        self.startup_signaled = False
        self.fork_child("startup", startup_main, "startup")

    def start_backend(self) -> None:
        from backend.backend import main as backend_main
        self.fork_child("backend", backend_main, "backend",
                        {"listen_sock": self.listen_sock, "handoff_sock": self.handoff_child,
                         "shutdown_checkpoint": self.state == PMState.RUN})

    def start_archiver(self) -> None:
        from archiver.archiver import main as archiver_main
        self.fork_child("archiver", archiver_main, "archiver")

    def start_walreceiver(self) -> None:
        from walreceiver.walreceiver import main as walreceiver_main
        self.fork_child("walreceiver", walreceiver_main, "walreceiver")

    def archiver_wanted(self) -> bool:
        mode = self.config["archive_mode"]
        if mode == "always":
            return self.state in (PMState.RUN, PMState.RECOVERY, PMState.HOT_STANDBY)
        return mode == "on" and self.state == PMState.RUN

    def maintain_children(self) -> None:
        """Start what the current state needs (each start is idempotent)."""
        if self.state in (PMState.RUN, PMState.HOT_STANDBY) and not self.by_role("backend"):
            self.start_backend()
        if self.archiver_wanted() and not self.by_role("archiver"):
            self.start_archiver()
        if self.state == PMState.STOP_BACKENDS:
            producers = [c for c in self.children.values() if c.role in ("backend", "startup", "walreceiver")]
            if not producers:
                self.transition(PMState.STOP_SENDERS, "backends gone")
                for c in list(self.children.values()):
                    # SIGUSR2: send (archive) everything that is left, then exit.
                    self.signal_child(c, signal.SIGUSR2)
                self.crash_deadline = time.monotonic() + 60.0
        if self.state in (PMState.STOP_SENDERS, PMState.STOP_IMMEDIATE) and not self.children:
            self.transition(PMState.EXIT, "all children gone")
        if self.state == PMState.CRASH and not self.children:
            self.restart_after_crash()

    def check_timeouts(self) -> None:
        if self.crash_deadline is not None and time.monotonic() > self.crash_deadline and self.children:
            for c in list(self.children.values()):
                log.info("issuing SIGKILL to recalcitrant children")
                self.signal_child(c, signal.SIGKILL)
            self.crash_deadline = None

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.child_exited(child, status)

    def child_exited(self, c: Child, status: int) -> None:
        text, by_signal, code = describe_exit(status)
        name = ROLE_NAMES.get(c.role, c.role)
        self.events.emit("child_exit", child=c.role, child_pid=c.pid, code=code,
                         signal=os.WTERMSIG(status) if by_signal else None)
        if c.role == "walsender" and self.shared is not None:
            # A dead walsender cannot release its slot; do it for it.
            for slot in self.shared.walsnd:
                if slot.get("pid") == c.pid:
                    slot.clear()
        if self.state in (PMState.CRASH, PMState.STOP_IMMEDIATE):
            return
        normal = code == 0 or (code == 1 and c.role in ("walreceiver", "archiver", "walsender"))
        if c.role == "startup":
            if self.shutdown_mode and code in (0, 1):
                return
            if code == 0:
                self.startup_done()
                return
            if code is not None and not self.startup_signaled:
                log.info("%s (PID %d) %s", name, c.pid, text)
                log.info("aborting startup due to startup process failure"
                         if self.state == PMState.STARTUP else "shutting down due to startup process failure")
                self.exit_code = 1
                self.fail_all("startup process failure")
                return
        if normal:
            if c.role == "walreceiver" or (code != 0):
                log.debug("%s (PID %d) %s", name, c.pid, text)
            return
        if self.state in (PMState.STOP_BACKENDS, PMState.STOP_SENDERS) and c.role != "startup" and not by_signal:
            log.info("%s (PID %d) %s", name, c.pid, text)
            return
        log.info("%s (PID %d) %s", name, c.pid, text)
        self.handle_child_crash(c)

    def fail_all(self, reason: str) -> None:
        """Stop every child and leave (a fatal condition)."""
        for c in list(self.children.values()):
            self.signal_child(c, signal.SIGQUIT)
        self.crash_deadline = time.monotonic() + SIGKILL_AFTER
        self.shutdown_mode = "immediate"
        if self.state != PMState.STOP_IMMEDIATE:
            self.transition(PMState.STOP_IMMEDIATE, reason)

    def handle_child_crash(self, c: Child) -> None:
        log.info("terminating any other active server processes")
        self.events.emit("crash", child=c.role, child_pid=c.pid)
        for other in list(self.children.values()):
            self.signal_child(other, signal.SIGQUIT)
        self.crash_deadline = time.monotonic() + SIGKILL_AFTER
        if self.shutdown_mode is not None:
            self.fail_all("crash during shutdown")
            return
        self.transition(PMState.CRASH, f"{c.role} crashed")

    def restart_after_crash(self) -> None:
        log.info("all server processes terminated; reinitializing")
        elog.restart_queue()
        assert self.shared is not None
        self.shared.destroy()
        self.create_shared()
        self.crash_deadline = None
        self.walreceiver_requested = False
        self.events.emit("crash_restart")
        self.transition(PMState.STARTUP, "reinitialized after crash")
        self.start_startup()

    def startup_done(self) -> None:
        """The startup process finished recovery (primary, or a promoted standby)."""
        if self.state in (PMState.STARTUP, PMState.RECOVERY, PMState.HOT_STANDBY):
            if self.state != PMState.STARTUP:
                # A promoted standby: the backend notices and becomes the WAL inserter itself,
                # so no session is dropped.
                self.standby = False
            self.transition(PMState.RUN, "recovery finished")
            log.info("database system is ready to accept connections")

    # ------------------------------------------------------------ pmsignals
    def check_pmsignals(self) -> None:
        if self.shared is None or self.state in (PMState.CRASH, PMState.STOP_IMMEDIATE, PMState.EXIT):
            return
        pm = self.shared.pm
        with pm.locked():
            flags = pm.snapshot("start_walreceiver", "recovery_started", "hot_standby_ready",
                                "promote_requested", "stop_walreceiver", "rotate_logfile")
            pm.set(start_walreceiver=0, stop_walreceiver=0, promote_requested=0, rotate_logfile=0)
        if flags["rotate_logfile"]:
            self.logrotation.request()
        if flags["recovery_started"] and self.state == PMState.STARTUP:
            self.transition(PMState.RECOVERY, "startup began recovery")
        if flags["hot_standby_ready"] and self.state == PMState.RECOVERY and self.config["hot_standby"]:
            log.info("database system is ready to accept read-only connections")
            self.transition(PMState.HOT_STANDBY, "consistent recovery state reached")
        if self.state in (PMState.RECOVERY, PMState.HOT_STANDBY, PMState.STARTUP) and self.shutdown_mode is None:
            # A request stays pending while the previous walreceiver is still exiting
            # (PostgreSQL's WalReceiverRequested).
            if flags["start_walreceiver"]:
                self.walreceiver_requested = True
            if self.walreceiver_requested and not self.by_role("walreceiver"):
                self.walreceiver_requested = False
                self.start_walreceiver()
            if flags["stop_walreceiver"]:
                for c in self.by_role("walreceiver"):
                    self.signal_child(c, signal.SIGTERM)
            promote_file = os.path.join(self.datadir, "promote")
            if flags["promote_requested"] or os.path.exists(promote_file):
                for c in self.by_role("startup"):
                    self.signal_child(c, signal.SIGUSR2)

    # ------------------------------------------------------------ walsenders
    def accept_handoffs(self) -> None:
        """The backend hands us replication connections: fork a walsender for each."""
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.handoff_parent, 65536, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not msg and not fds:
                return
            if _flags & socket.MSG_CTRUNC:
                # Out of descriptors: the kernel dropped the socket in transit (the client sees
                # its connection closed); go on with the next hand-off, no spinning.
                log.warning("could not receive a replication connection from the backend: "
                            "out of file descriptors")
            for fd in fds:
                try:
                    lines = msg.decode().splitlines() if msg else []
                    params = json.loads(lines[0]) if lines else {}
                    relayed = json.loads(lines[1]) if len(lines) > 1 else {}
                except (ValueError, IndexError, UnicodeDecodeError):
                    params, relayed = {}, {}
                conn = socket.socket(fileno=fd)
                if self.state in (PMState.RUN, PMState.HOT_STANDBY, PMState.RECOVERY) and self.shutdown_mode is None:
                    from walsender.walsender import main as walsender_main
                    try:
                        peer = conn.getpeername()
                    except OSError:
                        peer = ("?", 0)
                    if not isinstance(peer, tuple):       # a socketpair: the backend relays TLS for it
                        peer = tuple(relayed.get("peer") or ("?", 0))
                    try:
                        self.fork_child("walsender", walsender_main,
                                        f"walsender {params.get('user', 'postgres')} {peer[0]}({peer[1]})",
                                        {"conn_sock": conn, "startup_params": params, "peer": peer[:2]})
                    except OSError as e:     # fork: EAGAIN/ENOMEM; refuse this client, keep running
                        log.warning("could not fork WAL sender process: %s", e)
                conn.close()
