"""Server log in PostgreSQL's style, through ``multiprocessing-logging``.

Lines look like PostgreSQL's with ``log_line_prefix = '%m [%p] '``::

    2026-11-25 10:00:00.123 UTC [4242] LOG:  restored log file "..." from archive

The postmaster installs the handlers (stderr and ``DIR/log/walswitch.log``)
and wraps them with ``install_mp_handler`` before it forks, so every child's
records travel through one queue to the postmaster's receiver thread and land
in order.  A child must call ``flush_child`` before an orderly exit, or the
records still in its queue's feeder thread are lost.

So the file is written by one thread of one process: the postmaster's
receiver thread (``LogFile.emit``).  The postmaster rotates it from its main
loop (``rotate_logfile``; when, see postmaster/syslogger.py) under the
handler's lock, which ``emit`` takes for every record.

Python levels map to PostgreSQL's severities: DEBUG -> DEBUG, INFO -> LOG,
WARNING -> WARNING, ERROR -> ERROR, CRITICAL -> FATAL.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Callable

import multiprocessing_logging

from utils import file_perm

LOGGER_NAME = "walswitch"
SEVERITY = {logging.DEBUG: "DEBUG", logging.INFO: "LOG", logging.WARNING: "WARNING",
            logging.ERROR: "ERROR", logging.CRITICAL: "FATAL"}
LEVELS = {"debug5": logging.DEBUG, "debug4": logging.DEBUG, "debug3": logging.DEBUG,
          "debug2": logging.DEBUG, "debug1": logging.DEBUG, "info": logging.INFO,
          "notice": logging.INFO, "log": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "fatal": logging.CRITICAL, "panic": logging.CRITICAL}


class PgFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ms = int(record.msecs)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{ms:03d} UTC"
        sev = SEVERITY.get(record.levelno, record.levelname)
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            msg += "\n" + record.exc_text
        return f"{stamp} [{record.process}] {sev}:  {msg}"


LOG_FILE = "walswitch.log"
# A rotated file: walswitch-YYYY-MM-DD_HHMMSS.log (UTC time of the rotation), .N before .log if taken.
_ROTATED = re.compile(r"^walswitch-(\d{4}-\d{2}-\d{2}_\d{6})(?:\.(\d+))?\.log$")


class LogFile(logging.FileHandler):
    """``DIR/log/walswitch.log``: created 0600 whatever the umask (PostgreSQL's log_file_mode
    default), appended to, renamed aside and reopened by ``rotate``.

    multiprocessing-logging's receiver thread calls ``emit`` directly, not ``handle``, so ``emit``
    takes the handler's lock itself: ``rotate`` (the postmaster's main thread) then never swaps the
    stream in the middle of a record.  Once the file reaches ``size_limit`` bytes, ``emit`` calls
    ``on_full`` (once per file): the postmaster's loop is woken to rotate it at once, rather than at
    its next turn, when a burst may have added a megabyte.
    """

    def __init__(self, path: str):
        self.size_limit = 0
        self.on_full: Callable[[], None] | None = None
        self._full_told = False
        super().__init__(path, mode="a")

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_perm.FILE_MODE)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:
            super().emit(record)
            if self.size_limit and not self._full_told and self.on_full is not None and self.size() >= self.size_limit:
                self._full_told = True
                self.on_full()

    def size(self) -> int:
        """Bytes in the current file (every record is flushed as it is written)."""
        with self.lock:
            if self.stream is None:
                return 0
            try:
                return os.fstat(self.stream.fileno()).st_size
            except (OSError, ValueError):
                return 0

    def rotate(self, when: float) -> str | None:
        """Rename the current file to its rotated name and continue in a new, empty file; return
        the rotated path (None when someone had removed the file: then only a new one is opened).
        Raises OSError (the current file is kept) when that cannot be done."""
        with self.lock:
            if self.stream is not None:
                self.stream.flush()
            target: str | None = rotated_path(os.path.dirname(self.baseFilename), when)
            try:
                os.rename(self.baseFilename, target)   # the open stream follows the old file
            except FileNotFoundError:
                target = None
            try:
                new = self._open()
            except OSError:
                if target is not None:
                    try:
                        os.rename(target, self.baseFilename)
                    except OSError:
                        pass
                raise
            old, self.stream = self.stream, new
            self._full_told = False
            if old is not None:
                old.close()
            return target


def rotated_path(logdir: str, when: float) -> str:
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.gmtime(when))
    path = os.path.join(logdir, f"walswitch-{stamp}.log")
    n = 0
    while os.path.exists(path):
        n += 1
        path = os.path.join(logdir, f"walswitch-{stamp}.{n}.log")
    return path


def log_files(datadir: str) -> list[str]:
    """The server log's files, oldest first: the rotated ones, then ``walswitch.log``."""
    logdir = os.path.join(datadir, "log")
    try:
        names = os.listdir(logdir)
    except FileNotFoundError:
        return []
    rotated = []
    for name in names:
        m = _ROTATED.match(name)
        if m:
            rotated.append(((m.group(1), int(m.group(2) or 0)), name))
    out = [os.path.join(logdir, name) for _key, name in sorted(rotated)]
    if LOG_FILE in names:
        out.append(os.path.join(logdir, LOG_FILE))
    return out


_logfile: LogFile | None = None


def watch_logfile_size(limit: int, on_full: Callable[[], None] | None) -> None:
    """Postmaster: call ``on_full`` (from the log's receiver thread) when the file reaches ``limit``
    bytes (0: never)."""
    if _logfile is not None:
        with _logfile.lock:
            _logfile.size_limit = limit
            _logfile.on_full = on_full
            _logfile._full_told = False


def detach_logfile_in_child() -> None:
    """A freshly forked child: its copy of the log file's descriptor is pointed at /dev/null.

    The child never writes through it (its records go through the queue), but held open it would keep
    the file of the child's fork time alive after a rotation and after an administrator removes the
    rotated file (its disk space, as a deleted file still open).  dup2 rather than close: the stream
    object keeps a valid descriptor number, which nothing else can then be handed.
    """
    global _logfile
    f, _logfile = _logfile, None
    if f is None:
        return
    f.size_limit, f.on_full = 0, None
    stream = f.stream
    if stream is None:
        return
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)
    except (OSError, ValueError):
        pass


def logfile_size() -> int:
    """Postmaster: the current log file's size (0 without one)."""
    return _logfile.size() if _logfile is not None else 0


def rotate_logfile(when: float | None = None) -> str | None:
    """Postmaster: rotate the log file now; return the rotated file's path (None without a file).
    Raises OSError when the file could not be renamed or a new one opened (writing goes on in the
    current one)."""
    if _logfile is None:
        return None
    return _logfile.rotate(time.time() if when is None else when)


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup(datadir: str | None, level: str = "info", to_stderr: bool = True) -> None:
    """Postmaster only, before forking: handlers plus the multiprocessing wrapper."""
    global _logfile
    _logfile = None
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False
    fmt = PgFormatter()
    if to_stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        root.addHandler(h)
    if datadir:
        os.makedirs(os.path.join(datadir, "log"), exist_ok=True)
        fh = LogFile(os.path.join(datadir, "log", LOG_FILE))
        fh.setFormatter(fmt)
        root.addHandler(fh)
        _logfile = fh
    multiprocessing_logging.install_mp_handler(root)


def flush_child(timeout: float = 2.0) -> None:
    """Push out what this (child) process queued, before it exits.

    Bounded: a sibling SIGKILLed while it was writing to the queue's pipe leaves
    the queue's cross-process write lock taken, and an unbounded join would
    then hang this exit for ever.  The postmaster replaces the queue at the
    crash-restart such a kill causes (``restart_queue``).
    """
    for h in logging.getLogger(LOGGER_NAME).handlers:
        q = getattr(h, "queue", None)
        if q is not None:
            try:
                q.close()
                t = getattr(q, "_thread", None)
                if t is not None:
                    t.join(timeout)
            except Exception:
                pass


def restart_queue() -> None:
    """Postmaster, at a crash-restart: a new queue (a killed child may have wedged the old one).

    The old receiver thread is abandoned (a daemon thread, possibly blocked on a
    half-written record for good); lines a killed child had not sent are lost,
    which is why tests never depend on a log line of a process they kill.
    """
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        if isinstance(h, multiprocessing_logging.MultiProcessingHandler):
            h._is_closed = True
            root.removeHandler(h)
            root.addHandler(h.sub_handler)
    multiprocessing_logging.install_mp_handler(root)


def shutdown() -> None:
    """Postmaster, at exit: drain the queue and close the handlers."""
    global _logfile
    _logfile = None
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        try:
            h.close()
        except Exception:
            pass
        root.removeHandler(h)
