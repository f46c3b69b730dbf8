"""``walswitch basebackup -d CONNINFO -D DIR [-R]``: a standby's data directory from a running primary.

Client side of our ``BASE_BACKUP`` replication command (its format is in
walsender/walsender.py's header): a result set with the start point, a tar
stream of the data directory (control file, configuration, a consistent
SQLite snapshot, the WAL from the start point's segment to the end point's,
and ``backup_label``), and a result set with the end point.

The connection is libpq's, through the walreceiver's connection class
(walreceiver/libpqwalreceiver.py): a result set, CopyOut and a result set in
one command, which psycopg2 cannot read.

The control file is then made what PostgreSQL's backup_label makes of it at
the standby's first start: recovery begins at the backup's checkpoint, and the
standby is consistent once it has replayed up to the end point
(``min_recovery_point``).  ``-R`` writes ``standby.signal`` and appends
``primary_conninfo`` to ``walswitch.conf``, as ``pg_basebackup -R`` does.
"""
from __future__ import annotations

import io
import os
import tarfile
import time

import psycopg
from psycopg import pq

from walreceiver.libpqwalreceiver import ConnInfoError, WalRcvConn, WalRcvError

from xlog.control import DBState, read_control, write_control
from xlog.lsn import parse_lsn


class BaseBackupError(RuntimeError):
    pass


IO_TIMEOUT = 300.0   # seconds without progress before giving up, as the old client's socket timeout


def _fetch(conninfo: str) -> tuple[list[list[str | None]], io.BytesIO]:
    """BASE_BACKUP on a libpq replication connection (the walreceiver's, so passwords, passfiles, SCRAM,
    TLS and sslmode work as for pg_basebackup): the result sets (start and end points) and the CopyOut
    tar stream.  Non-blocking waits in select, which lets other threads of this process run meanwhile."""
    try:
        conn = WalRcvConn.connect(conninfo, "walswitch_basebackup", deadline=time.monotonic() + IO_TIMEOUT,
                                  interrupt_fds=[], check_interrupts=lambda: None)
    except ConnInfoError as e:
        raise BaseBackupError(f"invalid connection string: {e}") from None
    except WalRcvError as e:
        raise BaseBackupError(str(e)) from None
    rows: list[list[str | None]] = []
    tar_bytes = io.BytesIO()
    error = ""
    pgconn = conn.pgconn
    try:
        pgconn.send_query(b"BASE_BACKUP ( LABEL 'walswitch basebackup' )")
        conn.flush_out()
        while (res := conn.get_result(time.monotonic() + IO_TIMEOUT)) is not None:
            if res.status == pq.ExecStatus.TUPLES_OK:
                rows += [[None if (v := res.get_value(r, c)) is None else v.decode()
                          for c in range(res.nfields)] for r in range(res.ntuples)]
            elif res.status == pq.ExecStatus.COPY_OUT:
                while (n := _copy_out(conn, tar_bytes)) >= 0:
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
    return rows, tar_bytes


def _copy_out(conn: WalRcvConn, out: io.BytesIO) -> int:
    """Everything of the CopyOut stream that arrived: bytes written, 0 if nothing yet, -1 at its end."""
    pgconn = conn.pgconn
    total = 0
    pgconn.consume_input()
    while True:
        n, data = pgconn.get_copy_data(1)
        if n > 0:
            out.write(data)
            total += n
        elif n == 0:
            return total
        else:
            return -1


def basebackup(conninfo: str, datadir: str, write_recovery_conf: bool = False) -> dict:
    if os.path.exists(datadir) and os.listdir(datadir):
        raise BaseBackupError(f'directory "{datadir}" exists but is not empty')
    os.makedirs(datadir, mode=0o700, exist_ok=True)
    os.chmod(datadir, 0o700)
    rows, tar_bytes = _fetch(conninfo)
    if len(rows) < 2:
        raise BaseBackupError("server did not send the backup's start and end points")
    start_lsn, end_lsn = parse_lsn(rows[0][0] or "0/0"), parse_lsn(rows[-1][0] or "0/0")
    tar_bytes.seek(0)
    with tarfile.open(fileobj=tar_bytes, mode="r:") as tf:
        tf.extractall(datadir, filter="data")
    for sub in ("pg_wal/archive_status", "log", "global", "base"):
        os.makedirs(os.path.join(datadir, sub), mode=0o700, exist_ok=True)
    label = parse_backup_label(os.path.join(datadir, "backup_label"))
    cf = read_control(datadir)
    cf = cf.with_changes(state=DBState.IN_ARCHIVE_RECOVERY,
                         checkpoint_lsn=parse_lsn(label.get("CHECKPOINT LOCATION", "0/0")) or cf.checkpoint_lsn,
                         redo_lsn=label_start(label) or start_lsn,
                         min_recovery_point=max(end_lsn, parse_lsn(label.get("END WAL LOCATION", "0/0"))),
                         min_recovery_point_tli=cf.timeline, backup_start_lsn=start_lsn, backup_end_lsn=end_lsn)
    write_control(datadir, cf)
    try:
        os.unlink(os.path.join(datadir, "backup_label"))
    except FileNotFoundError:
        pass
    for stale in ("postmaster.pid", "standby.signal", "promote"):
        try:
            os.unlink(os.path.join(datadir, stale))
        except FileNotFoundError:
            pass
    if write_recovery_conf:
        with open(os.path.join(datadir, "standby.signal"), "w"):
            pass
        with open(os.path.join(datadir, "walswitch.conf"), "a", encoding="utf-8") as f:
            f.write("\n# added by walswitch basebackup -R\nprimary_conninfo = '" + conninfo.replace("'", "''") + "'\n")
    return {"start_lsn": start_lsn, "end_lsn": end_lsn}


def parse_backup_label(path: str) -> dict[str, str]:
    out = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                k, sep, v = line.partition(":")
                if sep:
                    out[k.strip()] = v.strip()
    except FileNotFoundError:
        pass
    return out


def label_start(label: dict[str, str]) -> int:
    v = label.get("START WAL LOCATION", "")
    return parse_lsn(v.split()[0]) if v else 0
