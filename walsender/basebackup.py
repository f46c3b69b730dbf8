"""Server side of our BASE_BACKUP replication command (run inside a walsender).

The wire format is in walsender/walsender.py's header; the client is
walswitch/basebackup.py.  Steps, after PostgreSQL's do_pg_backup_start /
perform_base_backup / do_pg_backup_stop, made simpler by what walswitch
keeps on disk (a control file, one SQLite store, WAL):

1. ask the backend for an immediate checkpoint (``shared.pm
   checkpoint_requested`` + its latch) and wait for a new checkpoint to be
   published (at most CHECKPOINT_WAIT seconds; otherwise use the last one);
2. read the control file once: its checkpoint and redo point are the
   backup's start (``backup_label``'s CHECKPOINT LOCATION and START WAL
   LOCATION);
3. snapshot the key/value store with SQLite's online backup API (a
   consistent copy whose applied LSN is at or after the redo point);
4. end point = the WAL flush position after the snapshot; open every WAL
   segment from the redo point's through the end point's right away, so a
   checkpoint removing them meanwhile cannot take them from us;
5. send the tar stream: walswitch.conf, global/walswitch_control, the
   snapshot as base/kv.sqlite, pg_wal/ (the segments and every timeline
   history file), pg_wal/archive_status/, backup_label.

Not included: postmaster.pid, standby.signal, promote, log/, anything else.
Refused on a standby (PostgreSQL can back up a standby; we do not).
"""
from __future__ import annotations

import io
import os
import sqlite3
import tarfile
import tempfile
import time
from typing import Any, Protocol

from libpq import protocol as P
from utils import elog
from xlog.control import CONTROL_FILE_NAME, CONTROL_FILE_SIZE, ControlFile, control_path
from xlog.lsn import format_lsn, is_history_file_name, segment_name, segno_of


class BackupSender(Protocol):
    """What BASE_BACKUP needs of the walsender that runs it (walsender/walsender.py's WalSender)."""
    ctx: Any
    shared: Any
    pg_wal: str
    out: bytearray
    shutdown_requested: bool

    def queue(self, data: bytes) -> None: ...
    def flush_all(self) -> None: ...
    def segsize(self) -> int: ...
    def flush_position(self) -> tuple[int, int]: ...
    def check_postmaster(self) -> None: ...

log = elog.logger()

CHECKPOINT_WAIT = 30.0
COPY_CHUNK = 64 * 1024
# Files of the data directory besides walswitch.conf that a standby made from the backup needs
# (TLS certificate and key, client authentication), copied as PostgreSQL's base backup copies them.
# postgresql.auto.conf is not copied: walswitch has no ALTER SYSTEM, and a copied primary_conninfo there
# would override the one `walswitch basebackup -R` appends to walswitch.conf.
DATA_DIR_FILES = ("root.crt", "server.crt", "server.key", "pg_hba.conf", "pg_ident.conf")


class _CopyWriter(io.RawIOBase):
    """A file object whose writes become CopyData messages on the walsender's socket."""

    def __init__(self, ws: BackupSender):
        super().__init__()
        self.ws = ws
        self.sent = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        data = bytes(b)
        for i in range(0, len(data), COPY_CHUNK):
            self.ws.queue(P.copy_data(data[i:i + COPY_CHUNK]))
        self.sent += len(data)
        if len(self.ws.out) >= 1 << 20:
            self.ws.flush_all()
        return len(data)


def request_checkpoint(ws: BackupSender) -> bool:
    """Ask the backend for a checkpoint; True once a newer one is published."""
    shared = ws.shared
    before = shared.xlog.get("checkpoint_lsn")
    pm = shared.pm
    with pm.locked():
        pm.set(checkpoint_requested=pm.get("checkpoint_requested") + 1)
    shared.latches["backend"].set()
    deadline = time.monotonic() + CHECKPOINT_WAIT
    while time.monotonic() < deadline:
        if shared.xlog.get("checkpoint_lsn") != before:
            return True
        ws.check_postmaster()
        if ws.shutdown_requested:
            raise P.SQLError("57P01", "terminating connection due to administrator command")
        time.sleep(0.02)
    log.info("checkpoint for base backup was not completed within %g s; using the last one", CHECKPOINT_WAIT)
    return False


def _segment_file(pg_wal: str, segno: int, tli: int, segsize: int) -> tuple[str, int] | None:
    """(name, fd) of the segment on `tli`, else on the newest older timeline that has it."""
    for t in range(tli, 0, -1):
        name = segment_name(t, segno, segsize)
        try:
            return name, os.open(os.path.join(pg_wal, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    return None


# BASE_BACKUP options PostgreSQL 15 knows (new syntax, and the legacy keywords).  Of these walswitch does
# LABEL, an immediate checkpoint (CHECKPOINT 'fast', legacy FAST) and no wait for WAL archiving
# (WAIT false, legacy NOWAIT); any other is refused, never ignored.
PG_OPTIONS = {"label", "progress", "checkpoint", "wait", "wal", "max_rate", "tablespace_map",
              "verify_checksums", "manifest", "manifest_checksums", "target", "target_detail", "compression",
              "compression_detail", "fast", "nowait", "noverify_checksums"}


def check_options(options: dict[str, str | None]) -> None:
    for name, value in options.items():
        if name not in PG_OPTIONS:
            raise P.SQLError("42601", f'option "{name}" not recognized')
        v = (value or "").lower()
        if name in ("label", "fast", "nowait"):
            continue
        if name == "checkpoint":
            if v not in ("fast", "spread"):
                raise P.SQLError("22023", f'unrecognized checkpoint type: "{value}"')
            if v == "fast":
                continue
        if name == "wait" and v in ("false", "off", "0", "no"):
            continue
        what = f"{name.upper()} {value}" if value is not None else name.upper()
        raise P.SQLError("0A000", f"BASE_BACKUP option {what} is not supported by walswitch")


def send(ws: BackupSender, options: dict[str, str | None]) -> None:
    check_options(options)
    shared = ws.shared
    if shared.xlog.get("in_recovery"):
        raise P.SQLError("55000", "base backups from a standby are not supported by walswitch")
    label = options.get("label") or "walswitch base backup"
    segsize = ws.segsize()
    start_time = time.time()
    request_checkpoint(ws)
    with open(control_path(ws.ctx.datadir), "rb") as f:
        control_bytes = f.read(CONTROL_FILE_SIZE)
    cf = ControlFile.unpack(control_bytes)
    start_lsn, ckpt_lsn, tli = cf.redo_lsn, cf.checkpoint_lsn, cf.timeline
    start_seg = segment_name(tli, segno_of(start_lsn, segsize), segsize)
    pg_wal = ws.pg_wal
    fds: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(prefix="walswitch_bb_") as tmp:
        snap = os.path.join(tmp, "kv.sqlite")
        src = sqlite3.connect(os.path.join(ws.ctx.datadir, "base", "kv.sqlite"), timeout=30)
        dst = sqlite3.connect(snap)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")   # one self-contained file
        finally:
            dst.close()
            src.close()
        end_lsn, end_tli = ws.flush_position()
        last_segno = segno_of(end_lsn - 1 if end_lsn % segsize == 0 else end_lsn, segsize)
        try:
            for segno in range(segno_of(start_lsn, segsize), last_segno + 1):
                got = _segment_file(pg_wal, segno, end_tli, segsize)
                if got is None:
                    raise P.SQLError("58P01", f"requested WAL segment {segment_name(tli, segno, segsize)} "
                                              "has already been removed")
                fds.append(got)
            histories = sorted(n for n in os.listdir(pg_wal) if is_history_file_name(n))
            # 1. the start point
            ws.queue(P.row_description([("recptr", P.TEXTOID), ("tli", P.INT8OID)]))
            ws.queue(P.data_row([format_lsn(start_lsn), str(tli)]))
            ws.queue(P.command_complete("SELECT"))
            # 2. the tar stream
            ws.queue(P.copy_out_response(0))
            out = _CopyWriter(ws)
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_dir(tar, "global")
                _add_dir(tar, "base")
                _add_dir(tar, "pg_wal")
                _add_dir(tar, "pg_wal/archive_status")
                _add_bytes(tar, "walswitch.conf",
                           _read(os.path.join(ws.ctx.datadir, "walswitch.conf")))
                for name in DATA_DIR_FILES:      # as pg_basebackup copies them: the server's own files
                    try:
                        _add_bytes(tar, name, _read(os.path.join(ws.ctx.datadir, name)))
                    except FileNotFoundError:
                        pass
                _add_bytes(tar, f"global/{CONTROL_FILE_NAME}", control_bytes)
                if os.path.exists(os.path.join(ws.ctx.datadir, "pg_hba.conf")):
                    _add_bytes(tar, "pg_hba.conf", _read(os.path.join(ws.ctx.datadir, "pg_hba.conf")))
                with open(snap, "rb") as f:
                    _add_file(tar, "base/kv.sqlite", f, os.fstat(f.fileno()).st_size)
                for name in histories:
                    try:
                        _add_bytes(tar, f"pg_wal/{name}", _read(os.path.join(pg_wal, name)))
                    except FileNotFoundError:
                        pass
                for name, fd in fds:
                    with os.fdopen(os.dup(fd), "rb") as f:
                        _add_file(tar, f"pg_wal/{name}", f, segsize)
                label_text = (
                    f"START WAL LOCATION: {format_lsn(start_lsn)} (file {start_seg})\n"
                    f"CHECKPOINT LOCATION: {format_lsn(ckpt_lsn)}\n"
                    "BACKUP METHOD: streamed\n"
                    "BACKUP FROM: primary\n"
                    f"START TIME: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(start_time))}\n"
                    f"LABEL: {label}\n"
                    f"START TIMELINE: {tli}\n"
                    f"END WAL LOCATION: {format_lsn(end_lsn)}\n"
                    f"END TIMELINE: {end_tli}\n")
                _add_bytes(tar, "backup_label", label_text.encode())
            ws.queue(P.copy_done())
            # 3. the end point
            ws.queue(P.row_description([("recptr", P.TEXTOID), ("tli", P.INT8OID)]))
            ws.queue(P.data_row([format_lsn(end_lsn), str(end_tli)]))
            ws.queue(P.command_complete("SELECT"))
        finally:
            for _, fd in fds:
                os.close(fd)
    log.info('base backup "%s" sent: %s .. %s, %d WAL segments', label, format_lsn(start_lsn),
             format_lsn(end_lsn), len(fds))
    ws.ctx.events.emit("base_backup", label=label, start_lsn=format_lsn(start_lsn), end_lsn=format_lsn(end_lsn),
                       segments=len(fds))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _info(name: str, size: int, mode: int = 0o600) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = mode
    ti.mtime = int(time.time())
    return ti


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    ti = _info(name, 0, 0o700)
    ti.type = tarfile.DIRTYPE
    tar.addfile(ti)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, f: io.BufferedReader, size: int) -> None:
    tar.addfile(_info(name, size), f)
