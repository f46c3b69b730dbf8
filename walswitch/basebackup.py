"""``walswitch basebackup -d CONNINFO -D DIR [-R]``: a standby's data directory from a running primary.

Client side of our ``BASE_BACKUP`` replication command (its format is in
walsender/walsender.py's header): a result set with the start point, a tar
stream of the data directory (control file, configuration, a consistent
SQLite snapshot, the WAL from the start point's segment to the end point's,
and ``backup_label``), and a result set with the end point.

psycopg2 cannot read a result set followed by CopyOut in one command, so this
speaks the protocol itself (a dozen message types, client side).

The control file is then made what PostgreSQL's backup_label makes of it at
the standby's first start: recovery begins at the backup's checkpoint, and the
standby is consistent once it has replayed up to the end point
(``min_recovery_point``).  ``-R`` writes ``standby.signal`` and appends
``primary_conninfo`` to ``walswitch.conf``, as ``pg_basebackup -R`` does.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import tarfile

import psycopg2.extensions

from xlog.control import DBState, read_control, write_control
from xlog.lsn import parse_lsn


class BaseBackupError(RuntimeError):
    pass


class MiniClient:
    """Just enough of libpq for a replication connection."""

    def __init__(self, conninfo: str):
        try:
            params = psycopg2.extensions.parse_dsn(conninfo)
        except psycopg2.ProgrammingError as e:
            raise BaseBackupError(f"invalid connection string: {str(e).strip()}") from None
        host = params.get("host", "127.0.0.1")
        port = int(params.get("port", 5432))
        self.user = params.get("user", "postgres")
        try:
            self.sock = socket.create_connection((host, port), timeout=float(params.get("connect_timeout", 30)))
        except OSError as e:
            raise BaseBackupError(f'connection to server at "{host}", port {port} failed: {e.strerror}') from None
        self.sock.settimeout(300)
        self.buf = bytearray()
        body = struct.pack("!I", 196608)
        for k, v in (("user", self.user), ("replication", "true"),
                     ("application_name", params.get("application_name", "walswitch_basebackup"))):
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            t, b = self.read()
            if t == b"E":
                raise BaseBackupError(self.error_text(b))
            if t == b"Z":
                break

    def recv(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise BaseBackupError("server closed the connection unexpectedly")
            self.buf += chunk

    def read(self) -> tuple[bytes, bytes]:
        self.recv(5)
        t = bytes(self.buf[:1])
        (n,) = struct.unpack_from("!I", self.buf, 1)
        self.recv(1 + n)
        body = bytes(self.buf[5:1 + n])
        del self.buf[:1 + n]
        return t, body

    @staticmethod
    def error_text(body: bytes) -> str:
        fields = {}
        for part in body.split(b"\0"):
            if part:
                fields[part[:1]] = part[1:].decode("utf-8", "replace")
        return f"{fields.get(b'S', 'ERROR')}:  {fields.get(b'M', '?')}"

    def query(self, sql: str) -> None:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)

    def close(self) -> None:
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()


def _data_row(body: bytes) -> list[str | None]:
    (n,) = struct.unpack_from("!H", body)
    out, pos = [], 2
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln].decode())
            pos += ln
    return out


def basebackup(conninfo: str, datadir: str, write_recovery_conf: bool = False) -> dict:
    if os.path.exists(datadir) and os.listdir(datadir):
        raise BaseBackupError(f'directory "{datadir}" exists but is not empty')
    os.makedirs(datadir, mode=0o700, exist_ok=True)
    os.chmod(datadir, 0o700)
    client = MiniClient(conninfo)
    rows: list[list[str | None]] = []
    tar_bytes = io.BytesIO()
    try:
        client.query("BASE_BACKUP ( LABEL 'walswitch basebackup' )")
        while True:
            t, b = client.read()
            if t == b"E":
                raise BaseBackupError(client.error_text(b))
            if t == b"D":
                rows.append(_data_row(b))
            elif t == b"d":
                tar_bytes.write(b)
            elif t == b"Z":
                break
    finally:
        client.close()
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
