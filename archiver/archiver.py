"""The archiver: runs archive_command for every completed WAL file (PostgreSQL 15's pgarch.c).

Forked by the postmaster when archive_mode is on (and, with ``always``, on a
standby too).  It owns the ``archiver`` region of shared memory (its pid and
counters), the ``.ready`` -> ``.done`` renames in ``DIR/pg_wal/archive_status``
and nothing else: it never deletes WAL (the checkpoint removes segments whose
status is ``.done``).

States::

    IDLE ──latch / 60 s──> ARCHIVING ──.ready left?──> ARCHIVING (next file)
                              │ command failed            │ none left
                              v                           v
                           BACKING OFF (1, 2, 4, 8, 10, 10 ... s; the latch cuts it short) ──> ARCHIVING
    archive_command killed by a signal, or exit > 125 ──> FATAL: exit 1 (the postmaster starts a new one)
    SIGTERM ──> finish the running command, exit 0
    SIGUSR2 (shutdown) ──> one more pass over what is ready (3 tries per file), exit 0

Who wakes it: its latch ``shared.latches['archiver']``, set by the backend
when a segment completes (and by its own signal handlers; SIGHUP re-reads
walswitch.conf, so a corrected archive_command is used at once); the postmaster
death pipe through a WaitSet; otherwise every 60 s (PGARCH_AUTOWAKE_INTERVAL).

Order: timeline history files first, then everything else oldest (by name)
first, as PostgreSQL 15's ready_file_comparator.  A failing file is retried
(and blocks the ones after it, as in PostgreSQL): PostgreSQL tries 3 times
1 s apart and then waits up to 60 s; we keep the shape with a bounded
exponential back-off (1 s, 2 s, 4 s ... capped at MAX_BACKOFF = 10 s) and log
PostgreSQL's WARNING after every third consecutive failure.

``archive_command``: run by ``/bin/sh -c`` in the data directory; ``%p`` is the
path relative to the data directory (``pg_wal/NAME``), ``%f`` the file name,
``%%`` a percent sign; any other ``%x`` is left as it is.

Shared counters (region ``archiver``): ``archived_count``, ``last_archived_wal``,
``last_archived_time`` and ``failed_count``, ``last_failed_wal``,
``last_failed_time``; the times are Unix epoch microseconds.
Events: ``archived`` (file, seconds), ``archive_failed`` (file, exit_code or
signal, seconds, fatal), ``archiver_start``, ``archiver_stop``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from shmem.sync import WaitSet
from utils import config as cfgmod
from utils import elog
from utils.proc import ChildContext, child_start, set_title
from xlog.durable import fsync_dir
from xlog.lsn import is_history_file_name

log = elog.logger()

AUTOWAKE_INTERVAL = 60.0
MAX_BACKOFF = 10.0
NUM_ARCHIVE_RETRIES = 3
NUM_ORPHAN_CLEANUP_RETRIES = 3


class ArchiverFatal(Exception):
    """archive_command died by a signal or could not be run: the archiver exits 1."""


def expand_command(template: str, path: str, fname: str) -> str:
    """%p, %f and %% as PostgreSQL's archive_command; other %x stay as written."""
    out = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template):
            nxt = template[i + 1]
            if nxt == "p":
                out.append(path)
                i += 2
                continue
            if nxt == "f":
                out.append(fname)
                i += 2
                continue
            if nxt == "%":
                out.append("%")
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def ready_files(status_dir: str) -> list[str]:
    """Names (without .ready) waiting to be archived, in PostgreSQL 15's order."""
    try:
        entries = os.listdir(status_dir)
    except FileNotFoundError:
        return []
    names = [e[:-len(".ready")] for e in entries if e.endswith(".ready") and not e.startswith(".")]
    return sorted(names, key=lambda n: (not is_history_file_name(n), n))


def mark_done(status_dir: str, name: str) -> None:
    """durable_rename of NAME.ready to NAME.done."""
    src = os.path.join(status_dir, name + ".ready")
    dst = os.path.join(status_dir, name + ".done")
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(src, dst)
    fsync_dir(status_dir)


def failure_is_fatal(returncode: int) -> bool:
    """wait_result_is_any_signal(rc, true): a signal, or exit status above 125."""
    return returncode < 0 or returncode > 125


def describe_failure(returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.strsignal(sig) or str(sig)
        except ValueError:
            name = str(sig)
        return f"archive command was terminated by signal {sig}: {name}"
    return f"archive command failed with exit code {returncode}"


def now_us() -> int:
    return time.time_ns() // 1000


class Archiver:
    def __init__(self, ctx: ChildContext):
        self.ctx = ctx
        self.shared = ctx.shared
        self.latch = ctx.shared.latches["archiver"]
        self.datadir = ctx.datadir
        self.pg_wal = os.path.join(ctx.datadir, "pg_wal")
        self.status_dir = os.path.join(self.pg_wal, "archive_status")
        self.stop_requested = False     # SIGTERM
        self.ready_to_stop = False      # SIGUSR2
        self.failures = 0               # consecutive failures (any file)
        self.waitset: WaitSet | None = None
        self.warned_no_command = False
        self.reload_pending = False

    # ------------------------------------------------------------ signals
    def install_signals(self) -> None:
        def on_term(_s: int, _f: object) -> None:
            self.stop_requested = True
            self.latch.set()

        def on_usr2(_s: int, _f: object) -> None:
            self.ready_to_stop = True
            self.latch.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGUSR2, on_usr2)
        # A Python handler (not SIG_IGN) so that archive_command does not inherit "ignored".
        signal.signal(signal.SIGINT, lambda *_: None)
        def on_hup(_s: int, _f: object) -> None:
            self.reload_pending = True
            self.latch.set()

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, lambda *_: self.latch.set())

    def command(self) -> str:
        if self.reload_pending:
            self.reload_config()
        return str(self.ctx.config.get("archive_command") or "")

    def reload_config(self) -> None:
        """SIGHUP: re-read walswitch.conf, so a fixed archive_command applies to the backlog at once."""
        self.reload_pending = False
        cfg = self.ctx.config
        overrides = [(k, str(v)) for k, v in cfg.values.items() if cfg.sources.get(k) == "command line"]
        try:
            self.ctx.config = cfgmod.load(self.datadir, overrides)
        except cfgmod.ConfigError as e:
            log.error("configuration file was not reloaded: %s", e)

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        self.install_signals()
        with self.shared.archiver.locked():
            self.shared.archiver.set(pid=os.getpid())
        self.waitset = WaitSet(self.latch, [self.ctx.death_fd])
        self.ctx.events.emit("archiver_start")
        set_title("archiver")
        try:
            while True:
                time_to_stop = self.ready_to_stop
                if self.stop_requested:
                    return 0
                if not self.ctx.postmaster_alive():
                    return 1
                delay = self.copy_loop(final=time_to_stop)
                if time_to_stop or self.stop_requested:
                    return 0
                if not self.ctx.postmaster_alive():
                    return 1
                self.waitset.wait(AUTOWAKE_INTERVAL if delay is None else delay)
        finally:
            self.ctx.events.emit("archiver_stop")
            try:
                with self.shared.archiver.locked():
                    if self.shared.archiver.get("pid") == os.getpid():
                        self.shared.archiver.set(pid=0)
            except Exception:  # noqa: BLE001 - never fail on the way out
                pass

    def backoff(self) -> float:
        return min(float(2 ** max(0, self.failures - 1)), MAX_BACKOFF)

    def copy_loop(self, final: bool) -> float | None:
        """pgarch_ArchiverCopyLoop: archive what is ready.

        Returns None when nothing is left (sleep until woken), or the delay
        before the next try after a failure.  With ``final`` (shutdown) a file
        gets NUM_ARCHIVE_RETRIES tries, 1 s apart, and then we give up.
        """
        orphan_failures = 0
        tries_this_file = 0
        current = None
        while True:
            if self.stop_requested or not self.ctx.postmaster_alive():
                return None
            if not self.command():
                if not self.warned_no_command:
                    log.warning("archive_mode enabled, yet archive_command is not set")
                    self.warned_no_command = True
                return None
            self.warned_no_command = False
            ready = ready_files(self.status_dir)
            if not ready:
                return None
            name = ready[0]
            if name != current:
                current, tries_this_file = name, 0
            if not os.path.exists(os.path.join(self.pg_wal, name)):
                ready_path = os.path.join(self.status_dir, name + ".ready")
                try:
                    os.unlink(ready_path)
                    log.warning('removed orphan archive status file "%s"', os.path.join("pg_wal", "archive_status",
                                                                                       name + ".ready"))
                    continue
                except FileNotFoundError:
                    continue
                except OSError:
                    orphan_failures += 1
                    if orphan_failures >= NUM_ORPHAN_CLEANUP_RETRIES:
                        log.warning('removal of orphan archive status file "%s" failed too many times, '
                                    "will try again later", ready_path)
                        return MAX_BACKOFF
                    time.sleep(1.0)
                    continue
            if self.archive_one(name):
                self.failures = 0
                continue
            self.failures += 1
            tries_this_file += 1
            if self.failures % NUM_ARCHIVE_RETRIES == 0:
                log.warning('archiving write-ahead log file "%s" failed too many times, will try again later', name)
            if final:
                if tries_this_file >= NUM_ARCHIVE_RETRIES:
                    return None
                self.sleep_interruptibly(1.0)
                continue
            return self.backoff()

    def sleep_interruptibly(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def archive_one(self, name: str) -> bool:
        """pgarch_archiveXlog + pgarch_archiveDone. Raises ArchiverFatal."""
        rel = os.path.join("pg_wal", name)
        cmd = expand_command(self.command(), rel, name)
        set_title(f"archiver archiving {name}")
        log.debug('executing archive command "%s"', cmd)
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=self.datadir, close_fds=True)
        except OSError as e:
            raise ArchiverFatal(f'could not execute archive command "{cmd}": {e.strerror}') from None
        while True:
            try:
                rc = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - Python retries waitpid itself
                continue
        seconds = round(time.monotonic() - t0, 6)
        if rc != 0:
            fatal = failure_is_fatal(rc)
            text = describe_failure(rc)
            detail = f"The failed archive command was: {cmd}"
            with self.shared.archiver.locked():
                a = self.shared.archiver
                a.set(failed_count=(a.get("failed_count") + 1) & 0xFFFFFFFF, last_failed_wal=name,
                      last_failed_time=now_us())
            fields = {"signal": -rc} if rc < 0 else {"exit_code": rc}
            self.ctx.events.emit("archive_failed", file=name, seconds=seconds, fatal=fatal, **fields)
            set_title(f"archiver failed on {name}")
            if fatal:
                raise ArchiverFatal(f"{text}\nDETAIL:  {detail}")
            log.info("%s\nDETAIL:  %s", text, detail)
            return False
        try:
            mark_done(self.status_dir, name)
        except FileNotFoundError:
            pass   # someone else (a previous archiver) finished it
        log.debug('archived write-ahead log file "%s"', name)
        with self.shared.archiver.locked():
            a = self.shared.archiver
            a.set(archived_count=a.get("archived_count") + 1, last_archived_wal=name,
                  last_archived_time=now_us())
        self.ctx.events.emit("archived", file=name, seconds=seconds)
        set_title(f"archiver last was {name}")
        return True


def main(ctx: ChildContext) -> int:
    child_start(ctx, "archiver")
    arch = Archiver(ctx)
    try:
        return arch.run()
    except ArchiverFatal as e:
        log.critical("%s", e)
        return 1
    finally:
        if arch.waitset is not None:
            arch.waitset.close()
