"""``walswitch basebackup -d CONNINFO -D DIR [-R]``: a standby's data directory from a running primary.

Client side of PostgreSQL 15's ``BASE_BACKUP`` (the server is walsender/basebackup.py), as
pg_basebackup -X fetch reads it: the start point result set, the tablespace result set, then one
COPY stream whose CopyData messages start with a type byte (``n`` new archive, ``d`` its bytes,
``p`` progress, ``m`` the manifest follows), then the end point result set.  The archive (one
``base.tar``: configuration, control file, a consistent SQLite snapshot, the WAL from the start
point's segment to the end point's, ``backup_label``) is spooled to an unnamed temporary file in
DIR and unpacked; the manifest becomes ``DIR/backup_manifest``.

The connection is libpq's, through the walreceiver's connection class
(walreceiver/libpqwalreceiver.py), so passwords, passfiles, SCRAM, TLS and sslmode work as for
pg_basebackup.  ``backup_label`` is then applied to the control file (xlog/backup_label.py, what
the startup would do at the first start): recovery begins at the backup's checkpoint and the
standby is consistent once it has replayed up to the end point.  ``-R`` writes
``standby.signal`` and appends ``primary_conninfo`` to ``walswitch.conf``.
"""
from __future__ import annotations

import os
import struct
import tarfile
import tempfile
import time
from typing import BinaryIO

import psycopg
from psycopg import pq

from walreceiver.libpqwalreceiver import ConnInfoError, WalRcvConn, WalRcvError

from xlog import backup_label
from xlog.lsn import parse_lsn


class BaseBackupError(RuntimeError):
    pass


IO_TIMEOUT = 300.0   # seconds without progress before giving up, as the old client's socket timeout
COMMAND = "BASE_BACKUP ( LABEL 'walswitch basebackup', CHECKPOINT 'fast', WAL, WAIT false, MANIFEST 'no' )"


class _Receiver:
    """The COPY stream's messages, sorted into the archive file and the manifest."""

    def __init__(self, archive: BinaryIO):
        self.archive = archive
        self.manifest = bytearray()
        self.archives: list[str] = []
        self.in_manifest = False
        self.progress = 0

    def message(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == b"n":
            if self.in_manifest or self.archives:
                raise BaseBackupError("server sent more than one archive (walswitch expects base.tar only)")
            self.archives.append(body.split(b"\0", 1)[0].decode("utf-8", "replace"))
        elif kind == b"d":
            if self.in_manifest:
                self.manifest += body
            elif self.archives:
                self.archive.write(body)
            else:
                raise BaseBackupError("archive data before the start of an archive")
        elif kind == b"p" and len(body) == 8:
            self.progress = struct.unpack("!q", body)[0]
        elif kind == b"m":
            self.in_manifest = True
        else:
            raise BaseBackupError(f"unexpected message type {kind!r} in the COPY data stream")


def _fetch(conninfo: str, archive: BinaryIO) -> tuple[list[list[str | None]], _Receiver]:
    """BASE_BACKUP on a libpq replication connection: the result sets' rows (start point, the
    tablespace row, end point) and what the COPY stream carried.  Waits happen in select."""
    try:
        conn = WalRcvConn.connect(conninfo, "walswitch_basebackup", deadline=time.monotonic() + IO_TIMEOUT,
                                  interrupt_fds=[], check_interrupts=lambda: None)
    except ConnInfoError as e:
        raise BaseBackupError(f"invalid connection string: {e}") from None
    except WalRcvError as e:
        raise BaseBackupError(str(e)) from None
    rows: list[list[str | None]] = []
    recv = _Receiver(archive)
    error = ""
    pgconn = conn.pgconn
    try:
        pgconn.send_query(COMMAND.encode())
        conn.flush_out()
        while (res := conn.get_result(time.monotonic() + IO_TIMEOUT)) is not None:
            if res.status == pq.ExecStatus.TUPLES_OK:
                rows += [[None if (v := res.get_value(r, c)) is None else v.decode()
                          for c in range(res.nfields)] for r in range(res.ntuples)]
            elif res.status == pq.ExecStatus.COPY_OUT:
                while (n := _copy_out(conn, recv)) >= 0:
                    if n == 0:
                        conn.wait(False, time.monotonic() + IO_TIMEOUT)
            elif res.status == pq.ExecStatus.FATAL_ERROR:
                error = error or res.error_message.decode("utf-8", "replace").rstrip("\n")
    except psycopg.Error:
        raise BaseBackupError(pgconn.error_message.decode("utf-8", "replace").rstrip("\n")) from None
    except WalRcvError as e:
        raise BaseBackupError(str(e)) from None
    finally:
        conn.close()
    if error:
        raise BaseBackupError(error)
    return rows, recv


def _copy_out(conn: WalRcvConn, recv: _Receiver) -> int:
    """Everything of the COPY stream that arrived: messages handled, 0 if none yet, -1 at its end."""
    pgconn = conn.pgconn
    total = 0
    pgconn.consume_input()
    while True:
        n, data = pgconn.get_copy_data(1)
        if n > 0:
            recv.message(bytes(data))
            total += 1
        elif n == 0:
            return total
        else:
            return -1


def basebackup(conninfo: str, datadir: str, write_recovery_conf: bool = False) -> dict:
    if os.path.exists(datadir) and os.listdir(datadir):
        raise BaseBackupError(f'directory "{datadir}" exists but is not empty')
    os.makedirs(datadir, mode=0o700, exist_ok=True)
    os.chmod(datadir, 0o700)
    with tempfile.TemporaryFile(dir=datadir) as archive:
        rows, recv = _fetch(conninfo, archive)
        if len(rows) < 3 or not rows[0][0] or not rows[-1][0]:
            raise BaseBackupError("server did not send the backup's start and end points")
        start_lsn, end_lsn = parse_lsn(rows[0][0]), parse_lsn(rows[-1][0])
        archive.seek(0)
        with tarfile.open(fileobj=archive, mode="r:") as tf:
            tf.extractall(datadir, filter="data")
    for sub in ("pg_wal/archive_status", "log", "global", "base"):
        os.makedirs(os.path.join(datadir, sub), mode=0o700, exist_ok=True)
    if recv.manifest:
        fd = os.open(os.path.join(datadir, "backup_manifest"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(recv.manifest)
    try:
        label = backup_label.consume(datadir)
    except backup_label.BackupLabelError as e:
        raise BaseBackupError(str(e)) from None
    if label is None:
        raise BaseBackupError("the backup has no backup_label")
    if write_recovery_conf:
        with open(os.path.join(datadir, "standby.signal"), "w"):
            pass
        with open(os.path.join(datadir, "walswitch.conf"), "a", encoding="utf-8") as f:
            f.write("\n# added by walswitch basebackup -R\nprimary_conninfo = '" + conninfo.replace("'", "''") + "'\n")
    return {"start_lsn": start_lsn, "end_lsn": end_lsn, "progress": recv.progress}
