"""PostgreSQL 15 WAL constants: page and record header layout, flags, rmgr ids, info codes.

Owns the numbers we must match bit for bit (taken from PostgreSQL 15's
xlog_internal.h, xlogrecord.h, rmgrlist.h, pg_control.h, xact.h) plus the
info codes of our own key/value resource manager. Values only; no logic.
"""
from __future__ import annotations

import struct
from typing import Final

from .lsn import DEFAULT_SEGSIZE, XLOG_BLCKSZ  # noqa: F401  (re-exported)

BLCKSZ: Final = 8192  # heap page size: needed to interpret full-page images

# --- page header (xlog_internal.h) -------------------------------------------
XLOG_PAGE_MAGIC: Final = 0xD110  # PostgreSQL 15

XLP_FIRST_IS_CONTRECORD: Final = 0x0001
XLP_LONG_HEADER: Final = 0x0002
XLP_BKP_REMOVABLE: Final = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD: Final = 0x0008
XLP_ALL_FLAGS: Final = 0x000F

SIZE_OF_SHORT_PHD: Final = 24  # MAXALIGN(sizeof(XLogPageHeaderData)) = MAXALIGN(20)
SIZE_OF_LONG_PHD: Final = 40  # MAXALIGN(sizeof(XLogLongPageHeaderData)) = MAXALIGN(36)

# xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64, xlp_rem_len u32, pad
SHORT_PHD_STRUCT: Final = struct.Struct("<HHIQI4x")
# ... then xlp_sysid u64, xlp_seg_size u32, xlp_xlog_blcksz u32
LONG_PHD_STRUCT: Final = struct.Struct("<HHIQI4xQII")

# --- record header (xlogrecord.h) ---------------------------------------------
SIZE_OF_XLOG_RECORD: Final = 24
XL_CRC_OFFSET: Final = 20  # offsetof(XLogRecord, xl_crc)
# xl_tot_len u32, xl_xid u32, xl_prev u64, xl_info u8, xl_rmid u8, 2 pad, xl_crc u32
XLOG_RECORD_STRUCT: Final = struct.Struct("<IIQBB2xI")

XLR_INFO_MASK: Final = 0x0F
XLR_RMGR_INFO_MASK: Final = 0xF0
XLR_SPECIAL_REL_UPDATE: Final = 0x01
XLR_CHECK_CONSISTENCY: Final = 0x02

XLR_MAX_BLOCK_ID: Final = 32
XLR_BLOCK_ID_DATA_SHORT: Final = 255
XLR_BLOCK_ID_DATA_LONG: Final = 254
XLR_BLOCK_ID_ORIGIN: Final = 253
XLR_BLOCK_ID_TOPLEVEL_XID: Final = 252

BKPBLOCK_FORK_MASK: Final = 0x0F
BKPBLOCK_FLAG_MASK: Final = 0xF0
BKPBLOCK_HAS_IMAGE: Final = 0x10
BKPBLOCK_HAS_DATA: Final = 0x20
BKPBLOCK_WILL_INIT: Final = 0x40
BKPBLOCK_SAME_REL: Final = 0x80

BKPIMAGE_HAS_HOLE: Final = 0x01
BKPIMAGE_APPLY: Final = 0x02
BKPIMAGE_COMPRESS_PGLZ: Final = 0x04
BKPIMAGE_COMPRESS_LZ4: Final = 0x08
BKPIMAGE_COMPRESS_ZSTD: Final = 0x10
BKPIMAGE_COMPRESS_MASK: Final = BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD

SIZE_OF_BLOCK_HEADER: Final = 4  # id u8, fork_flags u8, data_length u16
SIZE_OF_BLOCK_IMAGE_HEADER: Final = 5  # length u16, hole_offset u16, bimg_info u8
SIZE_OF_REL_FILE_NODE: Final = 12  # spcNode, dbNode, relNode (u32 each)

# Largest record PostgreSQL will build (XLogRecordMaxSize in later releases;
# in 15 the reader's limit is MaxAllocSize).
MAX_ALLOC_SIZE: Final = 0x3FFFFFFF

FORK_NAMES: Final = ("main", "fsm", "vm", "init")

# --- resource managers (rmgrlist.h, PostgreSQL 15) ----------------------------
RM_XLOG_ID: Final = 0
RM_XACT_ID: Final = 1
RM_SMGR_ID: Final = 2
RM_CLOG_ID: Final = 3
RM_DBASE_ID: Final = 4
RM_TBLSPC_ID: Final = 5
RM_MULTIXACT_ID: Final = 6
RM_RELMAP_ID: Final = 7
RM_STANDBY_ID: Final = 8
RM_HEAP2_ID: Final = 9
RM_HEAP_ID: Final = 10
RM_BTREE_ID: Final = 11
RM_HASH_ID: Final = 12
RM_GIN_ID: Final = 13
RM_GIST_ID: Final = 14
RM_SEQ_ID: Final = 15
RM_SPGIST_ID: Final = 16
RM_BRIN_ID: Final = 17
RM_COMMIT_TS_ID: Final = 18
RM_REPLORIGIN_ID: Final = 19
RM_GENERIC_ID: Final = 20
RM_LOGICALMSG_ID: Final = 21

# The names pg_waldump prints (the rm_name column of rmgrlist.h), by id.
BUILTIN_RMGR_NAMES: Final = (
    "XLOG", "Transaction", "Storage", "CLOG", "Database", "Tablespace",
    "MultiXact", "RelMap", "Standby", "Heap2", "Heap", "Btree", "Hash", "Gin",
    "Gist", "Sequence", "SPGist", "BRIN", "CommitTs", "ReplicationOrigin",
    "Generic", "LogicalMessage",
)
RM_MAX_BUILTIN_ID: Final = len(BUILTIN_RMGR_NAMES) - 1
RM_MIN_CUSTOM_ID: Final = 128
RM_MAX_CUSTOM_ID: Final = 255
RM_EXPERIMENTAL_ID: Final = 128

# Our key/value records: a custom rmgr in the range PostgreSQL reserves for
# experiments, so pg_waldump accepts them (and calls them "custom128").
RM_KV_ID: Final = RM_EXPERIMENTAL_ID
RM_KV: Final = RM_KV_ID


def rmgr_id_is_valid(rmid: int) -> bool:
    """RmgrIdIsValid: built-in or in the custom range (what ValidXLogRecordHeader checks)."""
    return 0 <= rmid <= RM_MAX_BUILTIN_ID or RM_MIN_CUSTOM_ID <= rmid <= RM_MAX_CUSTOM_ID


def rmgr_name(rmid: int) -> str:
    """The name pg_waldump prints: builtin name, or "custom%03d" for custom ids."""
    if 0 <= rmid <= RM_MAX_BUILTIN_ID:
        return BUILTIN_RMGR_NAMES[rmid]
    if RM_MIN_CUSTOM_ID <= rmid <= RM_MAX_CUSTOM_ID:
        return f"custom{rmid:03d}"
    return f"invalid{rmid}"


# --- RM_XLOG_ID info codes (pg_control.h) -------------------------------------
XLOG_CHECKPOINT_SHUTDOWN: Final = 0x00
XLOG_CHECKPOINT_ONLINE: Final = 0x10
XLOG_NOOP: Final = 0x20
XLOG_NEXTOID: Final = 0x30
XLOG_SWITCH: Final = 0x40
XLOG_BACKUP_END: Final = 0x50
XLOG_PARAMETER_CHANGE: Final = 0x60
XLOG_RESTORE_POINT: Final = 0x70
XLOG_FPW_CHANGE: Final = 0x80
XLOG_END_OF_RECOVERY: Final = 0x90
XLOG_FPI_FOR_HINT: Final = 0xA0
XLOG_FPI: Final = 0xB0
XLOG_OVERWRITE_CONTRECORD: Final = 0xD0

# --- RM_XACT_ID info codes (xact.h) -------------------------------------------
XLOG_XACT_COMMIT: Final = 0x00
XLOG_XACT_PREPARE: Final = 0x10
XLOG_XACT_ABORT: Final = 0x20
XLOG_XACT_COMMIT_PREPARED: Final = 0x30
XLOG_XACT_ABORT_PREPARED: Final = 0x40
XLOG_XACT_ASSIGNMENT: Final = 0x50
XLOG_XACT_INVALIDATIONS: Final = 0x60
XLOG_XACT_OPMASK: Final = 0x70
XLOG_XACT_HAS_INFO: Final = 0x80

# --- our RM_KV_ID info codes ---------------------------------------------------
KV_PUT: Final = 0x00
KV_DELETE: Final = 0x10
KV_ROLE: Final = 0x20          # a role row (storage/roles.py): name, JSON attributes or NULL = drop

INVALID_XID: Final = 0
