"""Rotation of the server log, as PostgreSQL's syslogger (postmaster/syslogger.c), done by the postmaster.

Where the log file is written.  The postmaster opens ``DIR/log/walswitch.log`` (``utils.elog.LogFile``,
a FileHandler) and wraps it with multiprocessing-logging before it forks anything.  From then on
every process, the postmaster included, only puts its records on that wrapper's queue; one receiver
thread in the postmaster takes them off and is the only writer of the file.  A child inherits a copy
of the handler object, never writes through it, and points its copy of the descriptor at /dev/null
right after the fork (``elog.detach_logfile_in_child``), so no child keeps a rotated file open.  So
rotating is the postmaster's business alone, and no child needs telling: its main loop
renames the file aside and opens a new one under the handler's lock, which the receiver thread takes
for every record, so each record lands whole in the old file or in the new one, none is lost or split,
and the order is the queue's.  (PostgreSQL needs a separate syslogger process because its children
write to a pipe that process reads; here the postmaster's receiver thread is that process.)

What asks for a rotation, as in PostgreSQL 15:

* ``SELECT pg_rotate_logfile()`` (superusers): the backend raises the PMSignal flag ``rotate_logfile``
  and sends SIGUSR1 to the postmaster (PostgreSQL's PMSIGNAL_ROTATE_LOGFILE).
* ``walswitch logrotate -D DIR`` (``pg_ctl logrotate``): writes ``DIR/logrotate`` and sends SIGUSR1;
  the postmaster removes the file when it sees it (CheckLogrotateSignal), and removes a stale one at
  start.
* ``log_rotation_size`` (kB, default 10MB, 0 off): the current file has reached it; checked at every
  turn of the postmaster's loop, and the receiver thread wakes the loop (the self-pipe) when a record
  takes the file past it, so the overshoot is the few records written meanwhile (PostgreSQL's
  syslogger checks after each read of its pipe).
* ``log_rotation_age`` (minutes, default 1d, 0 off): at the next multiple of the age counted from
  midnight UTC (PostgreSQL counts from midnight in log_timezone; walswitch logs in UTC); the loop's
  sleep is cut short to end then.  Any rotation sets the next one, and a reload that changes the age
  sets it again without rotating, as PostgreSQL.

Where walswitch differs: PostgreSQL opens a new file named from ``log_filename``; walswitch keeps the
current file's name, ``walswitch.log`` (tools and tests read it), and renames the old one
``walswitch-YYYY-MM-DD_HHMMSS.log`` (UTC time of the rotation; ``.1``, ``.2`` ... before ``.log`` when
taken); ``utils.elog.log_files`` lists them oldest first.  A rotation logs nothing (as PostgreSQL) but is
an event, ``log_rotated``, in ``events.jsonl``, which itself is never rotated.  A rotation that fails
(rename or open) is logged and the current file stays in use; as PostgreSQL, unless the cause was
running out of descriptors (EMFILE, ENFILE: tried again), size and age rotations are then off until a
reload, which also asks for one (``disabling automatic rotation (use SIGHUP to re-enable)``).  When
``walswitch.log`` was removed by hand, a rotation only opens a new one (no event: nothing was renamed).
"""
from __future__ import annotations

import errno
import os
import time
from typing import Callable

from utils import elog
from utils.config import Config
from utils.events import EventLog

log = elog.logger()

LOGROTATE_SIGNAL_FILE = "logrotate"


def next_rotation_time(age_minutes: int, now: float) -> float | None:
    """PostgreSQL's set_next_rotation_time, in UTC: the next multiple of the age after ``now``."""
    if age_minutes <= 0:
        return None
    interval = age_minutes * 60
    return (int(now) // interval + 1) * interval


class LogRotation:
    """The postmaster's part: decide when, and rotate."""

    def __init__(self, datadir: str, config: Config, events: EventLog, wake: Callable[[], None]):
        """``wake``: wakes the postmaster's loop (safe from another thread)."""
        self.datadir = datadir
        self.events = events
        self.wake = wake
        self.requested = False
        self.disabled = False         # PostgreSQL's rotation_disabled: size and age, after a failure
        self.age = config["log_rotation_age"]
        self.size_kb = config["log_rotation_size"]
        self.next_rotation = next_rotation_time(self.age, time.time())
        elog.watch_logfile_size(self.size_kb * 1024, wake)
        remove_signal_file(datadir)

    def request(self) -> None:
        """pg_rotate_logfile() (the PMSignal flag)."""
        self.requested = True

    def reload(self, config: Config) -> None:
        if config["log_rotation_size"] != self.size_kb:
            self.size_kb = config["log_rotation_size"]
            elog.watch_logfile_size(self.size_kb * 1024, self.wake)
        if config["log_rotation_age"] != self.age:
            self.age = config["log_rotation_age"]
            self.next_rotation = next_rotation_time(self.age, time.time())
        if self.disabled:
            self.disabled = False
            self.requested = True

    def sleep_time(self, longest: float) -> float:
        """The loop's sleep: ``longest``, or less when an age rotation is due sooner."""
        if self.next_rotation is None or self.disabled:
            return longest
        return max(0.0, min(longest, self.next_rotation - time.time()))

    def check(self) -> None:
        """Rotate if asked to, or if the file is too old or too big (once per turn of the loop)."""
        if check_signal_file(self.datadir):
            self.requested = True
        now = time.time()
        if self.requested:
            reason = "requested"
        elif self.disabled:
            return
        elif self.next_rotation is not None and now >= self.next_rotation:
            reason = "age"
        elif self.size_kb > 0 and elog.logfile_size() >= self.size_kb * 1024:
            reason = "size"
        else:
            return
        self.requested = False
        self.next_rotation = next_rotation_time(self.age, now)
        try:
            rotated = elog.rotate_logfile(now)
        except OSError as e:
            log.info("could not rotate log file \"%s\": %s",
                     os.path.join(self.datadir, "log", elog.LOG_FILE), e.strerror or e)
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                log.info("disabling automatic rotation (use SIGHUP to re-enable)")
                self.disabled = True
            return
        if rotated is not None:
            self.events.emit("log_rotated", reason=reason, file=os.path.basename(rotated))


def signal_file(datadir: str) -> str:
    return os.path.join(datadir, LOGROTATE_SIGNAL_FILE)


def check_signal_file(datadir: str) -> bool:
    """PostgreSQL's CheckLogrotateSignal + RemoveLogrotateSignalFiles: true (and the file removed)
    when ``walswitch logrotate`` left it."""
    try:
        os.unlink(signal_file(datadir))
        return True
    except OSError:          # absent (or not removable: then never a rotation per turn of the loop)
        return False


def remove_signal_file(datadir: str) -> None:
    try:
        os.unlink(signal_file(datadir))
    except OSError:
        pass
