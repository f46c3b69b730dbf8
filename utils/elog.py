"""Server log in PostgreSQL's style, through ``multiprocessing-logging``.

Lines look like PostgreSQL's with ``log_line_prefix = '%m [%p] '``::

    2026-11-25 10:00:00.123 UTC [4242] LOG:  restored log file "..." from archive

The postmaster installs the handlers (stderr and ``DIR/log/walswitch.log``)
and wraps them with ``install_mp_handler`` before it forks, so every child's
records travel through one queue to the postmaster's receiver thread and land
in order.  A child must call ``flush_child`` before an orderly exit, or the
records still in its queue's feeder thread are lost.

Python levels map to PostgreSQL's severities: DEBUG -> DEBUG, INFO -> LOG,
WARNING -> WARNING, ERROR -> ERROR, CRITICAL -> FATAL.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import multiprocessing_logging

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


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup(datadir: str | None, level: str = "info", to_stderr: bool = True) -> None:
    """Postmaster only, before forking: handlers plus the multiprocessing wrapper."""
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
        fh = logging.FileHandler(os.path.join(datadir, "log", "walswitch.log"))
        fh.setFormatter(fmt)
        root.addHandler(fh)
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
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        try:
            h.close()
        except Exception:
            pass
        root.removeHandler(h)
