"""pg_wal/archive_status: the .ready / .done handshake between WAL producers and the archiver.

Owns PostgreSQL's protocol: whoever completes a segment (or writes a
.history file) creates archive_status/<name>.ready (XLogArchiveNotify);
the archiver, once archive_command succeeded, renames it to <name>.done
(pgarch_archiveDone). A .ready, and the archiver's rename to .done, are
fsynced with their directory, so a crash never forgets that a file still
needs archiving nor archives one twice.  The .done a standby writes for a
segment it restored or streamed (PostgreSQL's XLogArchiveForceDone, which
does not fsync either) is not: losing it to a crash only makes the standby
take the segment again from its source (its two fsyncs were 4.5 % of the
startup's samples in archive catch-up, py-spy on bench.catchup).
"""
from __future__ import annotations

import os

from .lsn import is_history_file_name
from .durable import fsync_dir

STATUS_DIR = "archive_status"


def status_dir(pg_wal: str) -> str:
    return os.path.join(pg_wal, STATUS_DIR)


def _touch_durably(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_ready(pg_wal: str, name: str) -> None:
    """XLogArchiveNotify: <name>.ready, unless already .ready or .done."""
    d = status_dir(pg_wal)
    os.makedirs(d, exist_ok=True)
    ready = os.path.join(d, name + ".ready")
    if os.path.exists(ready) or os.path.exists(os.path.join(d, name + ".done")):
        return
    _touch_durably(ready)
    fsync_dir(d)


def mark_done(pg_wal: str, name: str) -> None:
    """pgarch_archiveDone: rename .ready to .done (create .done if there was no .ready)."""
    d = status_dir(pg_wal)
    os.makedirs(d, exist_ok=True)
    ready = os.path.join(d, name + ".ready")
    done = os.path.join(d, name + ".done")
    try:
        os.rename(ready, done)
    except FileNotFoundError:
        _touch_durably(done)
    fsync_dir(d)


def force_done(pg_wal: str, name: str) -> None:
    """XLogArchiveForceDone: a standby's restored or streamed file is never archived from here
    (.ready becomes .done; else an empty .done), without fsync, as PostgreSQL."""
    d = status_dir(pg_wal)
    os.makedirs(d, exist_ok=True)
    done = os.path.join(d, name + ".done")
    try:
        os.rename(os.path.join(d, name + ".ready"), done)
    except FileNotFoundError:
        os.close(os.open(done, os.O_WRONLY | os.O_CREAT, 0o600))


def is_ready(pg_wal: str, name: str) -> bool:
    return os.path.exists(os.path.join(status_dir(pg_wal), name + ".ready"))


def is_done(pg_wal: str, name: str) -> bool:
    return os.path.exists(os.path.join(status_dir(pg_wal), name + ".done"))


def _list(pg_wal: str, suffix: str) -> list[str]:
    try:
        names = os.listdir(status_dir(pg_wal))
    except FileNotFoundError:
        return []
    out = [n[: -len(suffix)] for n in names if n.endswith(suffix)]
    # As pgarch_readyXlog: timeline history files first, then oldest segment first.
    out.sort(key=lambda n: (not is_history_file_name(n), n))
    return out


def list_ready(pg_wal: str) -> list[str]:
    """Names waiting for the archiver, history files first, then oldest segment first."""
    return _list(pg_wal, ".ready")


def list_done(pg_wal: str) -> list[str]:
    return _list(pg_wal, ".done")


def remove_status(pg_wal: str, name: str) -> None:
    """Forget a file's status (when the segment itself is removed or recycled)."""
    d = status_dir(pg_wal)
    for suffix in (".ready", ".done"):
        try:
            os.unlink(os.path.join(d, name + suffix))
        except FileNotFoundError:
            pass
