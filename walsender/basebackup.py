"""Server side of BASE_BACKUP (run inside a walsender): PostgreSQL 15's protocol and options.

Entry point ``send(ws, options)``, after PostgreSQL's SendBaseBackup / perform_base_backup
(basebackup.c); the wire format is written by walsender/basebackup_stream.py; clients are
PostgreSQL 15's pg_basebackup and walswitch/basebackup.py.

Options (``parse_options``, parse_basebackup_options' checks, messages and SQLSTATEs):
LABEL, PROGRESS, CHECKPOINT 'fast'|'spread', WAIT, WAL, MAX_RATE (32..1048576 kB/s),
TABLESPACE_MAP, VERIFY_CHECKSUMS, MANIFEST 'yes'|'no'|'force-encode', MANIFEST_CHECKSUMS,
TARGET 'client', COMPRESSION 'none'.  Refused with 0A000: TARGET 'server'/'blackhole', any
compression, and WAIT true while archive_mode is on (walswitch cannot wait for the archiving of
the backup's last segment; pg_basebackup -X stream and -X fetch send WAIT false).  Both
checkpoint types are one immediate checkpoint here (walswitch's checkpoints write no buffers).
VERIFY_CHECKSUMS has nothing to verify (no data-page checksums), as on PostgreSQL without them.

Steps:
1. ask the backend for a checkpoint (``shared.pm checkpoint_requested`` + its latch) and wait
   for a newer one (at most CHECKPOINT_WAIT seconds, else the last one);
2. read the control file once: its checkpoint and redo point are the backup's start;
3. snapshot the key/value store with SQLite's online backup API into a ``pgsql_tmp`` directory
   of the data directory (consistent; its applied LSN is at or after the redo point);
4. end point = the WAL flush position after the snapshot; with WAL, open every segment from
   the start's through the end's at once, so a checkpoint removing them cannot take them;
5. result set (start, tli); tablespace result set (one row: NULL, NULL, size in kB with
   PROGRESS); the COPY stream with one archive ``base.tar``: backup_label, tablespace_map
   (empty: no tablespaces), the data directory as PostgreSQL's sendDir walks it (EXCLUDE_FILES,
   EXCLUDE_DIR_CONTENTS, temporary files, pg_wal's contents), the snapshot in place of
   base/kv.sqlite, with WAL the segments and their ``.done`` and history files, and the
   control file last; the manifest; CopyDone; result set (end, tli).

backup_label has PostgreSQL's lines plus END WAL LOCATION and END TIMELINE (a walswitch primary
writes no backup-end record): the startup (xlog/backup_label.py) makes the standby consistent
there.  Refused on a standby (PostgreSQL can back up a standby; we do not).
"""
from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Protocol

from libpq import protocol as P
from utils import elog
from walsender.basebackup_stream import CHECKSUM_TYPES, CopyStream, Manifest, TarWriter, entry_size
from xlog.backup_label import TEMP_PREFIX, BackupLabel
from xlog.control import CONTROL_FILE_NAME, CONTROL_FILE_SIZE, ControlFile, control_path
from xlog.lsn import format_lsn, is_history_file_name, parse_segment_name, segment_name, segno_of


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
OIDOID = 26                            # pg_type.oid of oid (the tablespace result set's spcoid)
STORE = "base/kv.sqlite"
CONTROL = f"global/{CONTROL_FILE_NAME}"
# basebackup.c's excludeFiles (a trailing * matches a prefix), plus ours: signal files (the client
# decides what the copy is: pg_basebackup -R / walswitch basebackup -R), postgresql.auto.conf (walswitch
# has no ALTER SYSTEM; a copied primary_conninfo would override the one walswitch basebackup -R writes
# to walswitch.conf; pg_basebackup -R writes its own), the store's SQLite side files (the snapshot
# replaces the store) and the control file (sent last, as read at the start).
EXCLUDE_FILES = ("postgresql.auto.conf.tmp", "current_logfiles.tmp", "pg_internal.init*", "backup_label",
                 "tablespace_map", "backup_manifest", "postmaster.pid", "postmaster.opts",
                 "standby.signal", "recovery.signal", "promote", "promote_requested", "postgresql.auto.conf",
                 f"{STORE}-wal", f"{STORE}-shm", f"{STORE}-journal", STORE, CONTROL)
# basebackup.c's excludeDirContents (the directory is kept, empty), plus ours: the server's logs and
# events, armed fault-injection points, and the latency trace (utils/lagtrace.py).
EXCLUDE_DIR_CONTENTS = ("pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
                        "pg_subtrans", "pg_wal", "log", "inject", "pg_lagtrace")


# ---------------------------------------------------------------- options
@dataclass
class BackupOptions:
    label: str = "base backup"
    progress: bool = False
    fast_checkpoint: bool = False
    wait: bool = True
    include_wal: bool = False
    max_rate: int = 0                   # kB/s; 0: unthrottled
    tablespace_map: bool = False
    verify_checksums: bool = True
    manifest: str = "no"                # no | yes | force-encode
    manifest_checksums: str = "NONE"
    target: str = "client"


MAX_RATE_LOWER, MAX_RATE_UPPER = 32, 1048576
TARGETS = ("client", "server", "blackhole")
COMPRESSIONS = ("none", "gzip", "lz4", "zstd")
_PARSE_BOOL_TRUE = ("t", "tr", "tru", "true", "y", "ye", "yes", "on", "1")
_PARSE_BOOL_FALSE = ("f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0")


def _syntax(msg: str) -> P.SQLError:
    return P.SQLError("42601", msg)


def def_boolean(name: str, arg: object) -> bool:
    """defGetBoolean: no argument is true; 0/1; true/false/on/off in any case."""
    if arg is None:
        return True
    if isinstance(arg, int) and not isinstance(arg, bool) and arg in (0, 1):
        return bool(arg)
    if isinstance(arg, str) and arg.lower() in ("true", "on", "false", "off"):
        return arg.lower() in ("true", "on")
    raise _syntax(f"{name} requires a Boolean value")


def def_string(name: str, arg: object) -> str:
    if arg is None:
        raise _syntax(f"{name} requires a parameter")
    return str(arg)


def parse_options(options: tuple[tuple[str, object], ...] | list[tuple[str, object]]) -> BackupOptions:
    """parse_basebackup_options: PostgreSQL 15's checks, in its order; then what walswitch refuses."""
    opt = BackupOptions()
    seen: set[str] = set()
    target_detail: str | None = None
    compression = "none"
    compression_detail: str | None = None
    for name, arg in options:
        if name in seen:
            raise _syntax(f'duplicate option "{name}"')
        seen.add(name)
        if name == "label":
            opt.label = def_string(name, arg)
        elif name in ("progress", "wait", "wal", "tablespace_map", "verify_checksums"):
            value = def_boolean(name, arg)
            attr = {"wal": "include_wal"}.get(name, name)
            setattr(opt, attr, value)
        elif name == "checkpoint":
            kind = def_string(name, arg).lower()
            if kind not in ("fast", "spread"):
                raise _syntax(f'unrecognized checkpoint type: "{arg}"')
            opt.fast_checkpoint = kind == "fast"
        elif name == "max_rate":
            if not isinstance(arg, (int, float)) or isinstance(arg, bool):
                raise _syntax(f"{name} requires a numeric value")
            rate = int(arg)
            if not MAX_RATE_LOWER <= rate <= MAX_RATE_UPPER:
                raise P.SQLError("22003", f'{rate} is outside the valid range for parameter "MAX_RATE" '
                                          f"({MAX_RATE_LOWER} .. {MAX_RATE_UPPER})")
            opt.max_rate = rate
        elif name == "manifest":
            value_s = def_string(name, arg).lower()
            if value_s in _PARSE_BOOL_TRUE:
                opt.manifest = "yes"
            elif value_s in _PARSE_BOOL_FALSE:
                opt.manifest = "no"
            elif value_s == "force-encode":
                opt.manifest = "force-encode"
            else:
                raise _syntax(f'unrecognized manifest option: "{arg}"')
        elif name == "manifest_checksums":
            kind = def_string(name, arg).upper()
            if kind not in CHECKSUM_TYPES:
                raise _syntax(f'unrecognized checksum algorithm: "{arg}"')
            opt.manifest_checksums = kind
        elif name == "target":
            opt.target = def_string(name, arg).lower()
        elif name == "target_detail":
            target_detail = def_string(name, arg)
        elif name == "compression":
            compression = def_string(name, arg).lower()
            if compression not in COMPRESSIONS:
                raise _syntax(f'unrecognized compression algorithm: "{arg}"')
        elif name == "compression_detail":
            compression_detail = def_string(name, arg)
        else:
            raise _syntax(f'unrecognized base backup option: "{name}"')
    if opt.manifest == "no" and "manifest_checksums" in seen:
        raise _syntax("manifest checksums require a backup manifest")
    if "manifest_checksums" not in seen and opt.manifest != "no":
        opt.manifest_checksums = "CRC32C"
    if opt.target not in TARGETS:
        raise P.SQLError("0A000", f'unrecognized target: "{opt.target}"')
    if opt.target == "server" and target_detail is None:
        raise _syntax('target "server" requires a target detail')
    if opt.target != "server" and target_detail is not None:
        raise _syntax(f'target "{opt.target}" does not accept a target detail')
    if compression == "none" and compression_detail is not None:
        raise _syntax("compression detail cannot be specified unless compression is enabled")
    # What walswitch does not do: refused, never ignored.
    if opt.target != "client":
        raise P.SQLError("0A000", f'BASE_BACKUP target "{opt.target}" is not supported by walswitch')
    if compression != "none":
        raise P.SQLError("0A000", f'BASE_BACKUP compression "{compression}" is not supported by walswitch')
    return opt


# ---------------------------------------------------------------- checkpoint, snapshot
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


def snapshot_store(datadir: str, dest: str) -> None:
    """A consistent single-file copy of the key/value store (SQLite's online backup API)."""
    src = sqlite3.connect(os.path.join(datadir, STORE), timeout=30)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")   # one self-contained file
    finally:
        dst.close()
        src.close()


def _segment_file(pg_wal: str, segno: int, tli: int, segsize: int) -> tuple[str, int] | None:
    """(name, fd) of the segment on `tli`, else on the newest older timeline that has it."""
    for t in range(tli, 0, -1):
        name = segment_name(t, segno, segsize)
        try:
            return name, os.open(os.path.join(pg_wal, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    return None


def open_wal(pg_wal: str, start_lsn: int, end_lsn: int, tli: int, segsize: int) -> list[tuple[str, int]]:
    fds: list[tuple[str, int]] = []
    last_segno = segno_of(end_lsn - 1 if end_lsn % segsize == 0 else end_lsn, segsize)
    try:
        for segno in range(segno_of(start_lsn, segsize), last_segno + 1):
            got = _segment_file(pg_wal, segno, tli, segsize)
            if got is None:
                raise P.SQLError("58P01", f"requested WAL segment {segment_name(tli, segno, segsize)} "
                                          "has already been removed")
            fds.append(got)
    except BaseException:
        for _, fd in fds:
            os.close(fd)
        raise
    return fds


# ---------------------------------------------------------------- the data directory walk
@dataclass(frozen=True)
class Entry:
    name: str          # path in the archive
    kind: str          # dir | file | link
    size: int = 0
    mode: int = 0o600
    mtime: float = 0.0
    target: str = ""   # of a link


def _excluded_file(rel: str) -> bool:
    """A name matches in any directory, as sendDir compares d_name; a path matches itself."""
    base = os.path.basename(rel)
    for pat in EXCLUDE_FILES:
        if "/" in pat:
            if rel == pat:
                return True
        elif base.startswith(pat[:-1]) if pat.endswith("*") else base == pat:
            return True
    return False


def scan_datadir(datadir: str) -> list[Entry]:
    """sendDir's walk (directories before their contents), applying the exclusion lists."""
    out: list[Entry] = []

    def walk(rel: str) -> None:
        path = os.path.join(datadir, rel) if rel else datadir
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(TEMP_PREFIX):
                continue
            r = f"{rel}/{name}" if rel else name
            try:
                st = os.lstat(os.path.join(datadir, r))
            except FileNotFoundError:
                continue                      # went away meanwhile: no error, as PostgreSQL
            if stat.S_ISLNK(st.st_mode) and r == "pg_wal":
                st = os.stat(os.path.join(datadir, r))   # a linked pg_wal is sent as a directory
            if stat.S_ISDIR(st.st_mode):
                out.append(Entry(r, "dir", mode=st.st_mode & 0o7777, mtime=st.st_mtime))
                if r in EXCLUDE_DIR_CONTENTS:
                    if r == "pg_wal":
                        out.append(Entry("pg_wal/archive_status", "dir", mode=st.st_mode & 0o7777,
                                         mtime=st.st_mtime))
                    continue
                walk(r)
            elif stat.S_ISREG(st.st_mode):
                if not _excluded_file(r):
                    out.append(Entry(r, "file", st.st_size, st.st_mode & 0o7777, st.st_mtime))
            elif stat.S_ISLNK(st.st_mode):
                out.append(Entry(r, "link", mtime=st.st_mtime, target=os.readlink(os.path.join(datadir, r))))
            else:
                log.warning('skipping special file "./%s"', r)

    walk("")
    # walswitch has no tablespaces, but PostgreSQL's tools expect the directory (pg_basebackup
    # syncs pg_tblspc at its end, and complains when it is missing).
    if not any(e.name == "pg_tblspc" for e in out):
        out.append(Entry("pg_tblspc", "dir", mode=0o700, mtime=time.time()))
    return out


# ---------------------------------------------------------------- the backup
@dataclass
class Backup:
    """What the start of a backup fixed: positions, the control file bytes, the snapshot."""
    start_lsn: int
    checkpoint_lsn: int
    tli: int
    end_lsn: int
    end_tli: int
    control_bytes: bytes
    snapshot: str
    start_time: float
    segsize: int

    def label_text(self, label: str) -> bytes:
        return BackupLabel(self.start_lsn, self.checkpoint_lsn, self.tli, label, self.start_time,
                           self.end_lsn, self.end_tli).render(self.segsize).encode()


def send(ws: BackupSender, raw_options: Any) -> None:
    opt = parse_options(raw_options)
    if ws.shared.xlog.get("in_recovery"):
        raise P.SQLError("55000", "base backups from a standby are not supported by walswitch")
    archive_mode = str(ws.ctx.config.get("archive_mode", "off"))
    if opt.wait and archive_mode != "off":
        raise P.SQLError("0A000", "BASE_BACKUP option WAIT true is not supported by walswitch while archive_mode "
                                  "is on", hint="Use WAIT false (pg_basebackup -X stream or -X fetch).")
    datadir = ws.ctx.datadir
    segsize = ws.segsize()
    start_time = time.time()
    request_checkpoint(ws)
    with open(control_path(datadir), "rb") as f:
        control_bytes = f.read(CONTROL_FILE_SIZE)
    cf = ControlFile.unpack(control_bytes)
    fds: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX + "_basebackup_", dir=datadir) as tmp:
        snap = os.path.join(tmp, "kv.sqlite")
        snapshot_store(datadir, snap)
        end_lsn, end_tli = ws.flush_position()
        b = Backup(cf.redo_lsn, cf.checkpoint_lsn, cf.timeline, end_lsn, end_tli, control_bytes, snap,
                   start_time, segsize)
        entries = scan_datadir(datadir)
        try:
            if opt.include_wal:
                fds = open_wal(ws.pg_wal, b.start_lsn, end_lsn, end_tli, segsize)
            _send_results_and_archive(ws, opt, b, entries, fds, segsize)
        finally:
            for _, fd in fds:
                os.close(fd)
    if opt.wait:
        ws.queue(P.notice_response("WAL archiving is not enabled; you must ensure that all required WAL segments "
                                   "are copied through other means to complete the backup"))
    # 3. the end point
    ws.queue(P.row_description([("recptr", P.TEXTOID), ("tli", P.INT8OID)]))
    ws.queue(P.data_row([format_lsn(b.end_lsn), str(b.end_tli)]))
    ws.queue(P.command_complete("SELECT"))
    log.info('base backup "%s" sent: %s .. %s, %d files, %d WAL segments', opt.label, format_lsn(b.start_lsn),
             format_lsn(b.end_lsn), sum(e.kind == "file" for e in entries) + 2, len(fds))
    ws.ctx.events.emit("base_backup", label=opt.label, start_lsn=format_lsn(b.start_lsn),
                       end_lsn=format_lsn(b.end_lsn), segments=len(fds), manifest=opt.manifest,
                       progress=opt.progress, wal=opt.include_wal)


def _estimate(entries: list[Entry], b: Backup, wal: int, segsize: int) -> int:
    """The archive's size in bytes, as PostgreSQL's size-only pass counts it (headers included)."""
    total = sum(entry_size(e.size) if e.kind == "file" else entry_size(0) for e in entries)
    total += entry_size(os.path.getsize(b.snapshot)) + entry_size(CONTROL_FILE_SIZE) + entry_size(512)
    total += wal * (entry_size(segsize) + entry_size(0))     # each segment and its .done
    return total


def _send_results_and_archive(ws: BackupSender, opt: BackupOptions, b: Backup, entries: list[Entry],
                              fds: list[tuple[str, int]], segsize: int) -> None:
    datadir = ws.ctx.datadir
    # 1. the start point, 2. the tablespaces (only the data directory: spcoid and spclocation NULL)
    ws.queue(P.row_description([("recptr", P.TEXTOID), ("tli", P.INT8OID)]))
    ws.queue(P.data_row([format_lsn(b.start_lsn), str(b.tli)]))
    ws.queue(P.command_complete("SELECT"))
    size = str(_estimate(entries, b, len(fds), segsize) // 1024) if opt.progress else None
    ws.queue(P.row_description([("spcoid", OIDOID), ("spclocation", P.TEXTOID), ("size", P.INT8OID)]))
    ws.queue(P.data_row([None, None, size]))
    ws.queue(P.command_complete("SELECT"))
    # 3. the archive and the manifest
    stream = CopyStream(ws, opt.max_rate)
    stream.begin()
    stream.begin_archive("base.tar", "")
    manifest = Manifest(opt.manifest_checksums, opt.manifest == "force-encode") if opt.manifest != "no" else None
    tar = TarWriter(stream, manifest)
    tar.add_bytes("backup_label", b.label_text(opt.label), mtime=b.start_time)
    if opt.tablespace_map:
        tar.add_bytes("tablespace_map", b"", mtime=b.start_time)
    for e in entries:
        if e.kind == "dir":
            tar.add_dir(e.name, e.mode, e.mtime)
            if e.name == "base":
                with open(b.snapshot, "rb") as f:
                    st = os.fstat(f.fileno())
                    tar.add_file(STORE, f, st.st_size, 0o600, st.st_mtime)
        elif e.kind == "link":
            tar.add_symlink(e.name, e.target, e.mtime)
        else:
            try:
                f = open(os.path.join(datadir, e.name), "rb")
            except FileNotFoundError:
                continue
            with f:
                tar.add_file(e.name, f, e.size, e.mode, e.mtime)
    if fds:
        _add_wal(tar, ws.pg_wal, fds, segsize, b.end_lsn)
    with open(control_path(datadir), "rb") as f:
        ctl_mtime = os.fstat(f.fileno()).st_mtime
    tar.add_bytes(CONTROL, b.control_bytes, mtime=ctl_mtime)
    tar.finish()
    stream.end_archive()
    if manifest is not None:
        stream.begin_manifest()
        stream.manifest_data(manifest.finish(b.start_lsn, b.tli, b.end_lsn, b.end_tli))
    stream.end()


def _add_wal(tar: TarWriter, pg_wal: str, fds: list[tuple[str, int]], segsize: int, end_lsn: int) -> None:
    """The WAL option: the segments as they are now (the last is valid up to the end point), every
    timeline history file; none of them in the manifest.  Completed segments are marked ``.done``
    (PostgreSQL marks the last one too, but for walswitch's startup ``.done`` also means the segment
    file is complete, and a restored copy must be able to replace the partial one)."""
    for name, fd in fds:
        with os.fdopen(os.dup(fd), "rb") as f:
            tar.add_file(f"pg_wal/{name}", f, segsize, 0o600, os.fstat(f.fileno()).st_mtime, in_manifest=False)
        if (parse_segment_name(name, segsize)[1] + 1) * segsize <= end_lsn:
            tar.add_bytes(f"pg_wal/archive_status/{name}.done", b"", in_manifest=False)
    for name in sorted(n for n in os.listdir(pg_wal) if is_history_file_name(n)):
        try:
            with open(os.path.join(pg_wal, name), "rb") as f:
                tar.add_file(f"pg_wal/{name}", f, os.fstat(f.fileno()).st_size, 0o600,
                             os.fstat(f.fileno()).st_mtime, in_manifest=False)
        except FileNotFoundError:
            pass

