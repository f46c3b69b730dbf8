"""Checkpoints on a primary, run inside the backend (the single WAL inserter).

A checkpoint bounds crash recovery: after it, replay starts at its redo
point.  Steps, as PostgreSQL's CreateCheckPoint:

1. redo = the first record of the oldest open transaction (its changes are
   only applied at commit, so replay must see all of them), else the insert
   position;
2. make the key/value store durable (``KVStore.sync``): every commit before
   redo is applied (the backend applies before it acknowledges, and applies
   anything still queued before it calls us);
3. insert a CHECKPOINT_ONLINE (or _SHUTDOWN) record and flush it;
4. write the control file (checkpoint, redo, state, next xid), atomically;
5. publish redo/checkpoint in shared memory;
6. remove segments nobody needs any more (``removable_segments``).

Who runs it: the backend loop, on checkpoint_timeout, on WAL volume
(max_wal_size), when ``shared.pm checkpoint_requested`` changes, for the
CHECKPOINT statement and at shutdown.  It owns nothing between runs except
the statistics in ``CheckpointStats``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from utils import elog
from xlog import archive_status
from xlog.control import DBState, read_control, write_control
from xlog.lsn import format_lsn, is_segment_name, parse_segment_name, segno_of
from xlog.record import CheckPoint, checkpoint_record

log = elog.logger()


class CheckpointHost(Protocol):
    """What a checkpoint needs of the WAL inserter that runs it (backend/backend.py's Backend)."""
    ctx: Any
    config: Any
    shared: Any
    datadir: str
    pg_wal: str
    writer: Any
    store: Any
    ckpt_stats: "CheckpointStats"
    next_full_xid: int
    important_since_ckpt: bool

    def segsize(self) -> int: ...
    def apply_pending(self) -> None: ...
    def open_transaction_lsns(self) -> list[int]: ...
    def oldest_open_xid(self) -> int: ...
    def publish(self) -> None: ...


@dataclass
class CheckpointStats:
    prior_redo: int = 0
    estimate: float = 0.0
    last_end_lsn: int = 0           # insert position right after our last checkpoint record
    last_time: float = 0.0          # monotonic
    segments_added: int = 0         # completed since the last checkpoint (PG: "added")


def removable_segments(pg_wal: str, segsize: int, redo_lsn: int, current_lsn: int, wal_keep_size_mb: int,
                       archive_mode: str) -> tuple[list[str], int]:
    """Segments a checkpoint may delete, and the cutoff segment number.

    PostgreSQL's rule (KeepLogSeg + RemoveOldXlogFiles + XLogArchiveCheckDone):
    a segment goes if it is before the redo segment, before
    ``current segment - wal_keep_size``, and (archiving on) its
    ``.done`` exists; with neither ``.ready`` nor ``.done`` a ``.ready`` is
    created and the segment kept.  Timelines are ignored in the comparison.
    """
    cutoff = segno_of(redo_lsn, segsize)
    keep = (wal_keep_size_mb * 1024 * 1024) // segsize
    if keep > 0:
        cur = segno_of(current_lsn, segsize)
        cutoff = min(cutoff, max(1, cur - keep))
    out = []
    try:
        names = sorted(os.listdir(pg_wal))
    except FileNotFoundError:
        return [], cutoff
    for name in names:
        if not is_segment_name(name):
            continue
        try:
            _tli, segno = parse_segment_name(name, segsize)
        except ValueError:
            continue
        if segno >= cutoff:
            continue
        if archive_mode != "off":
            if archive_status.is_done(pg_wal, name):
                pass
            elif archive_status.is_ready(pg_wal, name):
                continue
            else:
                archive_status.mark_ready(pg_wal, name)
                continue
        out.append(name)
    return out, cutoff


def remove_segments(b: CheckpointHost, names: list[str]) -> int:
    """Unlink segments (and their archive status); publish oldest_kept_segno first."""
    if not names:
        return 0
    segsize = b.segsize()
    newest = max(parse_segment_name(n, segsize)[1] for n in names)
    x = b.shared.xlog
    with x.locked():
        if x.get("oldest_kept_segno") < newest + 1:
            x.set(oldest_kept_segno=newest + 1)
    removed = 0
    for name in names:
        try:
            os.unlink(os.path.join(b.pg_wal, name))
            removed += 1
        except FileNotFoundError:
            pass
        archive_status.remove_status(b.pg_wal, name)
    return removed


def create_checkpoint(b: CheckpointHost, reason: str, shutdown: bool = False, force: bool = True) -> bool:
    """Run one checkpoint; False if skipped (nothing happened since the last one)."""
    w = b.writer
    assert w is not None
    stats = b.ckpt_stats
    b.apply_pending()
    if not force and not shutdown and not b.important_since_ckpt:
        stats.last_time = time.monotonic()
        return False
    t0 = time.monotonic()
    kind = "shutdown" if shutdown else "online"
    if shutdown:
        log.info("shutting down")
    log.info("checkpoint starting: %s", reason)
    open_lsns = b.open_transaction_lsns()
    redo = min(open_lsns + [w.next_record_lsn])
    oldest_active = b.oldest_open_xid()
    t_write = time.monotonic()
    b.store.sync()
    t_sync = time.monotonic()
    tli = w.tli
    next_xid = b.next_full_xid
    cp = CheckPoint(redo=redo, this_tli=tli, prev_tli=tli, full_page_writes=True, next_xid=next_xid,
                    time=int(time.time()), oldest_active_xid=oldest_active or (next_xid & 0xFFFFFFFF))
    start, _end = w.insert(*checkpoint_record(cp, shutdown))
    w.flush()
    cf = read_control(b.datadir)
    cf = cf.with_changes(state=DBState.SHUTDOWNED if shutdown else DBState.IN_PRODUCTION,
                         checkpoint_lsn=start, redo_lsn=redo, timeline=tli, next_xid=next_xid)
    write_control(b.datadir, cf)
    with b.shared.xlog.locked() as x:
        x.set(redo_lsn=redo, checkpoint_lsn=start)
    b.publish()
    cfg = b.config
    names, _cutoff = removable_segments(b.pg_wal, w.segsize, redo, w.insert_lsn, cfg["wal_keep_size"],
                                        cfg["archive_mode"])
    removed = remove_segments(b, names)
    t_end = time.monotonic()
    distance = max(0, redo - stats.prior_redo) if stats.prior_redo else 0
    stats.estimate = distance if stats.estimate < distance else 0.90 * stats.estimate + 0.10 * distance
    stats.prior_redo = redo
    stats.last_end_lsn = w.insert_lsn
    stats.last_time = time.monotonic()
    b.important_since_ckpt = False
    added, stats.segments_added = stats.segments_added, 0
    sync_s = t_sync - t_write
    log.info("checkpoint complete: wrote 0 buffers (0.0%%); %d WAL file(s) added, %d removed, 0 recycled; "
             "write=%.3f s, sync=%.3f s, total=%.3f s; sync files=1, longest=%.3f s, average=%.3f s; "
             "distance=%d kB, estimate=%d kB", added, removed, t_write - t0, sync_s, t_end - t0,
             sync_s, sync_s, distance // 1024, int(stats.estimate) // 1024)
    b.ctx.events.emit("checkpoint", type=kind, reason=reason, lsn=format_lsn(start), redo=format_lsn(redo),
                      removed=removed, seconds=round(t_end - t0, 4))
    return True
