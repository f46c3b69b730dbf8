"""The startup process: recovery.

On a primary it performs crash recovery and exits; on a standby
(``standby.signal``) it runs the WAL-source state machine of
startup/standby.py until promotion.

Crash recovery (``RecoveryState.CRASH_RECOVERY``): read the control file,
find the checkpoint record, and when the server was not shut down cleanly
replay every record from the checkpoint's redo point to the end of valid WAL
(the first record that fails validation; its reason is logged as
PostgreSQL does, e.g. ``invalid record length at 0/3000148: wanted 24, got
0``).  The invalid tail is then cleared (zeroed to the end of its segment,
later segments of the timeline removed), an end-of-recovery checkpoint is
written, and the end of WAL is published in shared memory for the backend,
the next WAL inserter.  Exit 0 tells the postmaster recovery is done; exit 1
(FATAL) ends the server.
"""
from __future__ import annotations

import contextlib
import os
import time

from shmem.states import RecoveryState
from startup.redo import Redo
from startup.standby import publish_end_of_wal, run_standby, set_state
from storage.kvstore import KVStore
from utils import elog
from utils.proc import ChildContext, set_title
from xlog import archive_status, backup_label
from xlog import constants as C
from xlog.control import ControlFile, ControlFileError, DBState, read_control, write_control
from xlog.lsn import format_lsn, is_segment_name, parse_segment_name, segment_name, segment_start, segno_of
from xlog.reader import WalReader
from xlog.record import CheckPoint
from xlog.writer import WalWriter

log = elog.logger()


class RecoveryError(RuntimeError):
    """FATAL during recovery: one line, the server stops."""


def main(ctx: ChildContext) -> int:
    ctx.shared.recovery.update(startup_pid=os.getpid())
    try:
        backup_label.remove_temp_files(ctx.datadir)
        remove_temp_xlog_files(os.path.join(ctx.datadir, "pg_wal"))
        # A copy made by pg_basebackup still has its backup_label: recovery starts at its checkpoint.
        label = backup_label.consume(ctx.datadir)
        if label is not None:
            log.info("starting backup recovery with redo LSN %s, checkpoint LSN %s, on timeline ID %d",
                     format_lsn(label.start_lsn), format_lsn(label.checkpoint_lsn), label.start_tli)
        cf = read_control(ctx.datadir)
    except (ControlFileError, backup_label.BackupLabelError) as e:
        log.critical("%s", e)
        return 1
    try:
        if os.path.exists(os.path.join(ctx.datadir, "standby.signal")):
            return run_standby(ctx, cf)
        return crash_recovery(ctx, cf)
    except RecoveryError as e:
        log.critical("%s", e)
        return 1


def remove_temp_xlog_files(pg_wal: str) -> None:
    """RemoveTempXlogFiles: a segment being created (or preallocated) when a process died.
    No other process writes pg_wal before the startup process runs."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(pg_wal):
            if name.startswith("xlogtemp."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(pg_wal, name))


def read_checkpoint(pg_wal: str, cf: ControlFile):
    reader = WalReader.from_dir(pg_wal, cf.wal_segsize, cf.timeline, cf.checkpoint_lsn,
                                expected_sysid=cf.system_identifier)
    rec = reader.read_record()
    if rec is None or rec.rmid != C.RM_XLOG_ID or (rec.info & 0xF0) not in (
            C.XLOG_CHECKPOINT_SHUTDOWN, C.XLOG_CHECKPOINT_ONLINE):
        why = f": {reader.error}" if rec is None and reader.error else ""
        seg = segment_name(cf.timeline, segno_of(cf.checkpoint_lsn, cf.wal_segsize), cf.wal_segsize)
        if rec is None and not reader.error:
            why = (f': could not open file "pg_wal/{seg}": No such file or directory'
                   if not os.path.exists(os.path.join(pg_wal, seg)) else f": end of WAL in segment {seg}")
        raise RecoveryError(f"could not locate a valid checkpoint record at {format_lsn(cf.checkpoint_lsn)}{why}")
    return rec, CheckPoint.unpack(rec.main_data)


def crash_recovery(ctx: ChildContext, cf: ControlFile) -> int:
    pg_wal = os.path.join(ctx.datadir, "pg_wal")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cf.time))
    if cf.state == DBState.SHUTDOWNED:
        log.info("database system was shut down at %s", when)
    elif cf.state == DBState.IN_CRASH_RECOVERY:
        log.info("database system was interrupted while in recovery at %s", when)
    else:
        log.info("database system was interrupted; last known up at %s", when)
    ckpt_rec, ckpt = read_checkpoint(pg_wal, cf)
    need_redo = cf.state != DBState.SHUTDOWNED or ckpt.redo < cf.checkpoint_lsn
    set_state(ctx, RecoveryState.CRASH_RECOVERY, "startup")
    end_lsn, last_lsn = ckpt_rec.next_lsn, ckpt_rec.lsn
    next_xid = max(cf.next_xid, ckpt.next_xid)
    if need_redo:
        log.info("database system was not properly shut down; automatic recovery in progress")
        cf = cf.with_changes(state=DBState.IN_CRASH_RECOVERY)
        write_control(ctx.datadir, cf)
        end_lsn, last_lsn, max_xid = replay_to_end(ctx, cf, ckpt.redo)
        next_xid = max(next_xid, max_xid + 1)
        clear_invalid_tail(pg_wal, cf, end_lsn)
        mark_unarchived_segments(ctx, pg_wal, cf, end_lsn)
        cf, end_lsn, last_lsn = end_of_recovery_checkpoint(ctx, cf, end_lsn, last_lsn, next_xid)
    else:
        log.info("redo is not required")
        cf = cf.with_changes(state=DBState.IN_PRODUCTION, next_xid=next_xid)
        write_control(ctx.datadir, cf)
    publish_end_of_wal(ctx.shared, cf, end_lsn, last_lsn, in_recovery=False)
    set_state(ctx, RecoveryState.DONE, "end of WAL reached")
    return 0


def replay_to_end(ctx: ChildContext, cf: ControlFile, redo_lsn: int) -> tuple[int, int, int]:
    pg_wal = os.path.join(ctx.datadir, "pg_wal")
    store = KVStore(os.path.join(ctx.datadir, "base", "kv.sqlite"))
    redo = Redo(store, cf.timeline)
    reader = WalReader.from_dir(pg_wal, cf.wal_segsize, cf.timeline, redo_lsn,
                                expected_sysid=cf.system_identifier)
    log.info("redo starts at %s", format_lsn(redo_lsn))
    t0 = time.monotonic()
    last_lsn = 0
    end_lsn = redo_lsn
    n = 0
    while True:
        rec = reader.read_record()
        if rec is None:
            break
        redo.apply(rec)
        last_lsn, end_lsn = rec.lsn, rec.next_lsn
        n += 1
        if n % 5000 == 0:
            set_title(f"startup recovering {segment_name(cf.timeline, segno_of(rec.lsn, cf.wal_segsize), cf.wal_segsize)}")
    redo.flush()
    if reader.error:
        log.info("%s", reader.error)
    applied = store.applied_lsn()
    if applied > end_lsn:
        # WAL the store had already applied is gone (corrupted after it was flushed): new WAL
        # starts at end_lsn, and its commits must not be skipped as "already applied".
        log.warning("key/value store was applied up to %s, beyond the end of valid WAL at %s; "
                    "the transactions committed in between stay applied",
                    format_lsn(applied), format_lsn(end_lsn))
        store.set_applied(end_lsn, cf.timeline)
    store.sync()
    store.close()
    log.info("redo done at %s system usage: elapsed: %.2f s", format_lsn(last_lsn), time.monotonic() - t0)
    ctx.events.emit("redo_done", records=n, end_lsn=format_lsn(end_lsn), seconds=round(time.monotonic() - t0, 3))
    ctx.shared.recovery.update(replay_lsn=redo.last_end_lsn or end_lsn, replay_tli=cf.timeline)
    return end_lsn, last_lsn, redo.max_xid


def clear_invalid_tail(pg_wal: str, cf: ControlFile, end_lsn: int) -> None:
    """Zero what follows the end of valid WAL in its segment; drop later segments.

    Otherwise a torn record's continuation could be read as valid after the
    next crash, and the WAL writer would resume inside garbage.
    """
    segsize = cf.wal_segsize
    segno = segno_of(end_lsn, segsize)
    offset = end_lsn - segment_start(segno, segsize)
    path = os.path.join(pg_wal, segment_name(cf.timeline, segno, segsize))
    if offset and os.path.exists(path):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(segsize - offset), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    for name in os.listdir(pg_wal):
        if is_segment_name(name):
            tli, s = parse_segment_name(name, segsize)
            if tli == cf.timeline and (s > segno or (s == segno and offset == 0)):
                os.unlink(os.path.join(pg_wal, name))


def mark_unarchived_segments(ctx: ChildContext, pg_wal: str, cf: ControlFile, end_lsn: int) -> None:
    """A segment completed just before a crash may have neither .ready nor .done."""
    if ctx.config["archive_mode"] == "off":
        return
    end_segno = segno_of(end_lsn, cf.wal_segsize)
    status = os.path.join(pg_wal, "archive_status")
    for name in sorted(os.listdir(pg_wal)):
        if not is_segment_name(name):
            continue
        _tli, s = parse_segment_name(name, cf.wal_segsize)
        if s < end_segno and not os.path.exists(os.path.join(status, name + ".done")) \
                and not os.path.exists(os.path.join(status, name + ".ready")):
            archive_status.mark_ready(pg_wal, name)


def end_of_recovery_checkpoint(ctx: ChildContext, cf: ControlFile, end_lsn: int, last_lsn: int,
                               next_xid: int) -> tuple[ControlFile, int, int]:
    pg_wal = os.path.join(ctx.datadir, "pg_wal")
    writer = WalWriter(pg_wal, cf.timeline, cf.wal_segsize, cf.system_identifier, end_lsn, last_lsn)
    redo = writer.next_record_lsn
    ckpt = CheckPoint(redo=redo, this_tli=cf.timeline, prev_tli=cf.timeline, next_xid=next_xid,
                      time=int(time.time()))
    start, _end = writer.insert(C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN, 0, ckpt.pack())
    writer.flush()
    new_end, new_last = writer.insert_lsn, start
    writer.close()
    cf = cf.with_changes(state=DBState.IN_PRODUCTION, checkpoint_lsn=start, redo_lsn=redo, next_xid=next_xid)
    write_control(ctx.datadir, cf)
    log.info("checkpoint complete: end-of-recovery checkpoint at %s", format_lsn(start))
    ctx.events.emit("checkpoint", lsn=format_lsn(start), redo=format_lsn(redo), checkpoint="end-of-recovery")
    return cf, new_end, new_last
