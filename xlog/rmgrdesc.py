"""Record descriptions in pg_waldump's words: rmgr names, record type names, details.

Owns the identify tables of PostgreSQL 15's built-in resource managers
(checked against PostgreSQL 15's pg_waldump), the detail text for the
records walswitch writes (XLOG checkpoints, switch, end-of-recovery;
XACT commit/abort; our KV records) and the short block-reference suffix
pg_waldump prints. Other rmgrs get their type name and no detail.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
import time

from . import constants as C
from .lsn import format_lsn
from .record import CheckPoint, DecodedRecord, EndOfRecovery, KvDelete, KvPut, POSTGRES_EPOCH_UNIX

# rmid -> {info & ~XLR_INFO_MASK (after the rmgr's own mask): name}
_XLOG = {0x00: "CHECKPOINT_SHUTDOWN", 0x10: "CHECKPOINT_ONLINE", 0x20: "NOOP", 0x30: "NEXTOID",
         0x40: "SWITCH", 0x50: "BACKUP_END", 0x60: "PARAMETER_CHANGE", 0x70: "RESTORE_POINT",
         0x80: "FPW_CHANGE", 0x90: "END_OF_RECOVERY", 0xA0: "FPI_FOR_HINT", 0xB0: "FPI",
         0xD0: "OVERWRITE_CONTRECORD"}
_XACT = {0x00: "COMMIT", 0x10: "PREPARE", 0x20: "ABORT", 0x30: "COMMIT_PREPARED",
         0x40: "ABORT_PREPARED", 0x50: "ASSIGNMENT", 0x60: "INVALIDATION"}
_HEAP = {0x00: "INSERT", 0x80: "INSERT+INIT", 0x10: "DELETE", 0x20: "UPDATE", 0xA0: "UPDATE+INIT",
         0x30: "TRUNCATE", 0x40: "HOT_UPDATE", 0xC0: "HOT_UPDATE+INIT", 0x50: "HEAP_CONFIRM",
         0x60: "LOCK", 0x70: "INPLACE"}
_HEAP2 = {0x00: "REWRITE", 0x10: "PRUNE", 0x20: "VACUUM", 0x30: "FREEZE_PAGE", 0x40: "VISIBLE",
          0x50: "MULTI_INSERT", 0xD0: "MULTI_INSERT+INIT", 0x60: "LOCK_UPDATED", 0x70: "NEW_CID"}
_BTREE = {0x00: "INSERT_LEAF", 0x10: "INSERT_UPPER", 0x20: "INSERT_META", 0x30: "SPLIT_L",
          0x40: "SPLIT_R", 0x50: "INSERT_POST", 0x60: "DEDUP", 0x70: "DELETE", 0x80: "UNLINK_PAGE",
          0x90: "UNLINK_PAGE_META", 0xA0: "NEWROOT", 0xB0: "MARK_PAGE_HALFDEAD", 0xC0: "VACUUM",
          0xD0: "REUSE_PAGE", 0xE0: "META_CLEANUP"}
_HASH = {0x00: "INIT_META_PAGE", 0x10: "INIT_BITMAP_PAGE", 0x20: "INSERT", 0x30: "ADD_OVFL_PAGE",
         0x40: "SPLIT_ALLOCATE_PAGE", 0x50: "SPLIT_PAGE", 0x60: "SPLIT_COMPLETE",
         0x70: "MOVE_PAGE_CONTENTS", 0x80: "SQUEEZE_PAGE", 0x90: "DELETE", 0xA0: "SPLIT_CLEANUP",
         0xB0: "UPDATE_META_PAGE", 0xC0: "VACUUM_ONE_PAGE"}
_GIN = {0x10: "CREATE_PTREE", 0x20: "INSERT", 0x30: "SPLIT", 0x40: "VACUUM_PAGE", 0x50: "DELETE_PAGE",
        0x60: "UPDATE_META_PAGE", 0x70: "INSERT_LISTPAGE", 0x80: "DELETE_LISTPAGE",
        0x90: "VACUUM_DATA_LEAF_PAGE"}
_GIST = {0x00: "PAGE_UPDATE", 0x10: "DELETE", 0x20: "PAGE_REUSE", 0x30: "PAGE_SPLIT",
         0x60: "PAGE_DELETE", 0x70: "ASSIGN_LSN"}
_SPGIST = {0x10: "ADD_LEAF", 0x20: "MOVE_LEAFS", 0x30: "ADD_NODE", 0x40: "SPLIT_TUPLE",
           0x50: "PICKSPLIT", 0x60: "VACUUM_LEAF", 0x70: "VACUUM_ROOT", 0x80: "VACUUM_REDIRECT"}
_BRIN = {0x00: "CREATE_INDEX", 0x10: "INSERT", 0x90: "INSERT+INIT", 0x20: "UPDATE", 0xA0: "UPDATE+INIT",
         0x30: "SAMEPAGE_UPDATE", 0x40: "REVMAP_EXTEND", 0x50: "DESUMMARIZE"}
_KV = {C.KV_PUT: "KV_PUT", C.KV_DELETE: "KV_DELETE", C.KV_ROLE: "ROLE"}

_IDENTIFY: dict[int, dict[int, str]] = {
    C.RM_XLOG_ID: _XLOG,
    C.RM_SMGR_ID: {0x10: "CREATE", 0x20: "TRUNCATE"},
    C.RM_CLOG_ID: {0x00: "ZEROPAGE", 0x10: "TRUNCATE"},
    C.RM_DBASE_ID: {0x00: "CREATE_FILE_COPY", 0x10: "CREATE_WAL_LOG", 0x20: "DROP"},
    C.RM_TBLSPC_ID: {0x00: "CREATE", 0x10: "DROP"},
    C.RM_MULTIXACT_ID: {0x00: "ZERO_OFF_PAGE", 0x10: "ZERO_MEM_PAGE", 0x20: "CREATE_ID", 0x30: "TRUNCATE_ID"},
    C.RM_RELMAP_ID: {0x00: "UPDATE"},
    C.RM_STANDBY_ID: {0x00: "LOCK", 0x10: "RUNNING_XACTS", 0x20: "INVALIDATIONS"},
    C.RM_HEAP2_ID: _HEAP2,
    C.RM_HEAP_ID: _HEAP,
    C.RM_BTREE_ID: _BTREE,
    C.RM_HASH_ID: _HASH,
    C.RM_GIN_ID: _GIN,
    C.RM_GIST_ID: _GIST,
    C.RM_SEQ_ID: {0x00: "LOG"},
    C.RM_SPGIST_ID: _SPGIST,
    C.RM_BRIN_ID: _BRIN,
    C.RM_COMMIT_TS_ID: {0x00: "ZEROPAGE", 0x10: "TRUNCATE"},
    C.RM_REPLORIGIN_ID: {0x00: "SET", 0x10: "DROP"},
    C.RM_LOGICALMSG_ID: {0x00: "MESSAGE"},
    C.RM_KV_ID: _KV,
}


def identify(rmid: int, info: int) -> str | None:
    """rm_identify: the record type name, None when unknown (pg_waldump: "UNKNOWN (%x)")."""
    op = info & C.XLR_RMGR_INFO_MASK
    if rmid == C.RM_XACT_ID:
        return _XACT.get(op & C.XLOG_XACT_OPMASK)
    if rmid == C.RM_GENERIC_ID:
        return "Generic"
    table = _IDENTIFY.get(rmid)
    return table.get(op) if table else None


def timestamptz_to_str(ts: int) -> str:
    """pg_waldump's frontend timestamptz_to_str: local time, microseconds, zone abbreviation."""
    secs = int(ts / 1_000_000) + POSTGRES_EPOCH_UNIX  # C integer division truncates
    usec = int(ts - int(ts / 1_000_000) * 1_000_000)
    lt = time.localtime(secs)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', lt)}.{usec:06d} {time.strftime('%Z', lt)}"


def _quote(s: str, limit: int = 64) -> str:
    # One line per record: escape control characters, cut long keys.
    if len(s) <= limit and s.isprintable() and '"' not in s:
        return '"' + s + '"'      # the common case, without the copies below
    out = s if len(s) <= limit else s[:limit] + "..."
    if not out.isprintable():
        out = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in out)
    return '"' + out.replace('"', '\\"') + '"'


def _xlog_desc(rec: DecodedRecord) -> str:
    op = rec.info & C.XLR_RMGR_INFO_MASK
    d = rec.main_data
    if op in (C.XLOG_CHECKPOINT_SHUTDOWN, C.XLOG_CHECKPOINT_ONLINE) and len(d) >= CheckPoint.SIZE:
        cp = CheckPoint.unpack(d)
        return (f"redo {format_lsn(cp.redo)}; tli {cp.this_tli}; prev tli {cp.prev_tli}; "
                f"fpw {'true' if cp.full_page_writes else 'false'}; "
                f"xid {cp.next_xid_epoch}:{cp.next_xid32}; oid {cp.next_oid}; multi {cp.next_multi}; "
                f"offset {cp.next_multi_offset}; oldest xid {cp.oldest_xid} in DB {cp.oldest_xid_db}; "
                f"oldest multi {cp.oldest_multi} in DB {cp.oldest_multi_db}; "
                f"oldest/newest commit timestamp xid: {cp.oldest_commit_ts_xid}/{cp.newest_commit_ts_xid}; "
                f"oldest running xid {cp.oldest_active_xid}; "
                f"{'shutdown' if op == C.XLOG_CHECKPOINT_SHUTDOWN else 'online'}")
    if op == C.XLOG_NEXTOID and len(d) >= 4:
        return str(struct.unpack_from("<I", d)[0])
    if op == C.XLOG_END_OF_RECOVERY and len(d) >= 16:
        e = EndOfRecovery.unpack(d)
        return f"tli {e.this_tli}; prev tli {e.prev_tli}; time {timestamptz_to_str(e.end_time)}"
    if op == C.XLOG_OVERWRITE_CONTRECORD and len(d) >= 16:
        lsn, t = struct.unpack_from("<Qq", d)
        return f"lsn {format_lsn(lsn)}; time {timestamptz_to_str(t)}"
    if op == C.XLOG_BACKUP_END and len(d) >= 8:
        return format_lsn(struct.unpack_from("<Q", d)[0])
    if op == C.XLOG_RESTORE_POINT and len(d) >= 8:
        name = d[8:].split(b"\0", 1)[0]
        return name.decode("utf-8", "replace")
    if op == C.XLOG_FPW_CHANGE and len(d) >= 1:
        return "true" if d[0] else "false"
    if op == C.XLOG_PARAMETER_CHANGE and len(d) >= 24:
        mc, mwp, mws, mpx, mlx, wl, hints, cts = struct.unpack_from("<iiiiii??", d)
        level = {0: "minimal", 1: "replica", 2: "logical"}.get(wl, "?")
        return (f"max_connections={mc} max_worker_processes={mwp} max_wal_senders={mws} "
                f"max_prepared_xacts={mpx} max_locks_per_xact={mlx} wal_level={level} "
                f"wal_log_hints={'on' if hints else 'off'} track_commit_timestamp={'on' if cts else 'off'}")
    return ""


def _xact_desc(rec: DecodedRecord) -> str:
    op = rec.info & C.XLOG_XACT_OPMASK
    d = rec.main_data
    if op in (C.XLOG_XACT_COMMIT, C.XLOG_XACT_ABORT) and len(d) >= 8:
        # Only xact_time: the optional xinfo parts (subxacts, rels, invals) are not described.
        return timestamptz_to_str(struct.unpack_from("<q", d)[0])
    return ""


_II = struct.Struct("<II")


def _kv_put_desc(rec: DecodedRecord) -> str:
    # Lengths from the header: no need to decode a multi-MB value to describe it.
    d = rec.main_data
    try:
        if len(d) < 8:
            raise ValueError(f"KV_PUT record data too short: {len(d)} bytes")
        klen, vlen = _II.unpack_from(d)
        key = d[8:8 + klen].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as e:
        return f"invalid: {e}"
    return f"key {_quote(key)}; value {'NULL' if vlen == 0xFFFFFFFF else f'{vlen} bytes'}"


def _kv_desc(rec: DecodedRecord) -> str:
    op = rec.info & C.XLR_RMGR_INFO_MASK
    d = rec.main_data
    if op == C.KV_PUT:
        return _kv_put_desc(rec)
    try:
        if op == C.KV_DELETE:
            return f"key {_quote(KvDelete.unpack(d).key)}"
        if op == C.KV_ROLE:
            # Never the attributes: they hold the password verifier.
            role = KvPut.unpack(d)
            return f"role {_quote(role.key)}; {'drop' if role.value is None else 'set'}"
    except (ValueError, UnicodeDecodeError) as e:
        return f"invalid: {e}"
    return ""


def describe(rec: DecodedRecord) -> str:
    """rm_desc: detail text (may be empty) for the records we know."""
    if rec.rmid == C.RM_XLOG_ID:
        return _xlog_desc(rec)
    if rec.rmid == C.RM_XACT_ID:
        return _xact_desc(rec)
    if rec.rmid == C.RM_KV_ID:
        return _kv_desc(rec)
    if rec.rmid >= C.RM_MIN_CUSTOM_ID:
        return f"rmid: {rec.rmid}"
    return ""


def block_refs_short(rec: DecodedRecord) -> str:
    """pg_waldump's short block reference list (", blkref #0: rel 1663/5/16384 blk 0 FPW")."""
    parts = []
    for b in rec.blocks:
        if b.forknum != 0:
            fork = C.FORK_NAMES[b.forknum] if b.forknum < len(C.FORK_NAMES) else "???"
            s = f", blkref #{b.block_id}: rel {b.spc_node}/{b.db_node}/{b.rel_node} fork {fork} blk {b.blkno}"
        else:
            s = f", blkref #{b.block_id}: rel {b.spc_node}/{b.db_node}/{b.rel_node} blk {b.blkno}"
        if b.has_image:
            s += " FPW" if b.apply_image else " FPW for WAL verification"
        parts.append(s)
    return "".join(parts)


def _head(rmid: int, info: int) -> tuple[str, str]:
    name = C.rmgr_name(rmid)
    ident = identify(rmid, info)
    if ident is None:
        ident = f"UNKNOWN ({info & ~C.XLR_INFO_MASK & 0xFF:x})"
    return f"rmgr: {name:<11} len (rec/tot): ", f", desc: {ident} "


def format_record_line(rec: DecodedRecord) -> str:
    """One line exactly in pg_waldump's layout (without the newline)."""
    return LineFormatter()(rec)


def _describer(rmid: int, info: int) -> Callable[[DecodedRecord], str]:
    """describe(), chosen once per (rmid, info)."""
    if rmid == C.RM_KV_ID and info & C.XLR_RMGR_INFO_MASK == C.KV_PUT:
        return _kv_put_desc
    return describe


class LineFormatter:
    """format_record_line with the per-(rmid, info) parts cached: waldump's hot loop."""

    def __init__(self) -> None:
        self._heads: dict[tuple[int, int], tuple[str, str, Callable[[DecodedRecord], str]]] = {}

    def __call__(self, rec: DecodedRecord) -> str:
        key = (rec.rmid, rec.info)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (*_head(rec.rmid, rec.info), _describer(rec.rmid, rec.info))
        lsn = rec.lsn
        prev = rec.prev
        line = "%s%6u/%6u, tx: %10u, lsn: %X/%08X, prev %X/%08X%s%s" % (
            head[0], rec.tot_len - rec.fpi_len, rec.tot_len, rec.xid, lsn >> 32, lsn & 0xFFFFFFFF,
            prev >> 32, prev & 0xFFFFFFFF, head[1], head[2](rec))
        return line + block_refs_short(rec) if rec.blocks else line
