"""WAL records: building them, decoding them, and the payloads we write.

Owns the XLogRecord format of PostgreSQL 15 (xlogrecord.h): the 24-byte
header, the block-reference and main-data fragment headers, the CRC-32C
rule (data after the header first, then the header up to xl_crc), and
DecodeXLogRecord's checks with PostgreSQL's messages. Also the payload
codecs of the records walswitch writes: checkpoints, end-of-recovery,
commit/abort, and our key/value records (rmgr 128).

Page headers and the placement of records in pages are not here: see
writer.py and reader.py.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import NamedTuple, Union

import google_crc32c

from . import constants as C
from .errors import WalError
from .lsn import DEFAULT_SEGSIZE, advance, format_lsn, maxalign, segment_start, segno_of

__all__ = [
    "WalError", "build_record", "record_crc", "DecodedRecord", "BlockRef", "decode_record",
    "CheckPoint", "EndOfRecovery", "OverwriteContrecord", "XactCommit", "XactAbort", "KvPut", "KvDelete",
    "decode_payload", "timestamptz_now", "timestamptz_from_unix", "timestamptz_to_unix",
    "checkpoint_record", "end_of_recovery_record", "commit_record", "abort_record",
    "kv_put_record", "kv_delete_record", "kv_role_record", "switch_record",
]

_crc_value = google_crc32c.value
_crc_extend = google_crc32c.extend

# Header up to (not including) xl_crc: the part the CRC covers.
_HDR_PRE = struct.Struct("<IIQBB2x")
_HDR = C.XLOG_RECORD_STRUCT
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_RFN_BLK = struct.Struct("<IIII")  # spcNode, dbNode, relNode, then BlockNumber
_DATA_LONG = struct.Struct("<BI")

# Main data size limit: the whole record must stay under MaxAllocSize.
MAX_MAIN_DATA = C.MAX_ALLOC_SIZE - C.SIZE_OF_XLOG_RECORD - 5

# PostgreSQL's TimestampTz: microseconds since 2000-01-01 00:00:00 UTC.
POSTGRES_EPOCH_UNIX = 946684800


def timestamptz_from_unix(t: float) -> int:
    return int(round((t - POSTGRES_EPOCH_UNIX) * 1_000_000))


def timestamptz_to_unix(ts: int) -> float:
    return ts / 1_000_000 + POSTGRES_EPOCH_UNIX


def timestamptz_now() -> int:
    return (time.time_ns() // 1000) - POSTGRES_EPOCH_UNIX * 1_000_000


# ----------------------------------------------------------------------------
# building

def build_record(rmid: int, info: int, xid: int, prev_lsn: int, main_data: bytes = b"") -> bytes:
    """One XLogRecord as PostgreSQL's XLogRecordAssemble lays it out, no block refs.

    Main data gets an XLR_BLOCK_ID_DATA_SHORT header up to 255 bytes, a
    DATA_LONG header above, and none at all when empty (as XLOG_SWITCH).
    """
    head, body = build_record_parts(rmid, info, xid, prev_lsn, main_data)
    return head + body


def build_record_parts(rmid: int, info: int, xid: int, prev_lsn: int, main_data: bytes = b""
                       ) -> tuple[bytes, bytes]:
    """``build_record`` as (header with its data-block header, main data), not joined: the
    writer copies a large record's data straight onto its pages (a 16 MiB record: one copy less)."""
    if type(main_data) is not bytes:
        main_data = bytes(main_data)
    n = len(main_data)
    if n == 0:
        frag = b""
    elif n <= 255:
        frag = bytes((C.XLR_BLOCK_ID_DATA_SHORT, n))
    elif n <= MAX_MAIN_DATA:
        frag = _DATA_LONG.pack(C.XLR_BLOCK_ID_DATA_LONG, n)
    else:
        raise ValueError(f"WAL record main data too long: {n} bytes")
    tot = C.SIZE_OF_XLOG_RECORD + len(frag) + n
    pre = _HDR_PRE.pack(tot, xid, prev_lsn, info, rmid)
    crc = _crc_extend(_crc_extend(_crc_value(frag), main_data), pre)
    return b"".join((pre, _U32.pack(crc), frag)), main_data


def record_crc(rec: bytes) -> int:
    """The CRC PostgreSQL's ValidXLogRecord expects for a whole record's bytes."""
    return _crc_extend(_crc_value(rec[C.SIZE_OF_XLOG_RECORD:]), rec[: C.XL_CRC_OFFSET])


# ----------------------------------------------------------------------------
# decoding

class BlockRef(NamedTuple):
    """A block reference as DecodeXLogRecord sees it (no page contents kept)."""

    block_id: int
    spc_node: int
    db_node: int
    rel_node: int
    forknum: int
    blkno: int
    has_image: bool
    image_len: int  # bimg_len: bytes of (possibly compressed) image in the record
    data_len: int
    apply_image: bool = False
    bimg_info: int = 0
    hole_offset: int = 0
    hole_length: int = 0
    flags: int = 0  # fork_flags & BKPBLOCK_FLAG_MASK

    @property
    def compressed(self) -> bool:
        return (self.bimg_info & C.BKPIMAGE_COMPRESS_MASK) != 0


class DecodedRecord(NamedTuple):
    """One valid record, where it lies and what it holds.

    lsn: start of the record header. end_lsn: just past its last byte (not
    aligned; page headers inside it counted). next_lsn: where reading goes on
    (MAXALIGN(end_lsn), or the next segment's start after XLOG_SWITCH); a
    next_lsn on a page boundary means "after that page's header".

    A NamedTuple, not a dataclass: replay builds one per record, and
    ``_new_tuple(DecodedRecord, (...))`` costs about a third of a dataclass's
    __init__ (measured: 0.3 us a record, a tenth of replay's Python time).
    """

    lsn: int
    end_lsn: int
    next_lsn: int
    tot_len: int
    xid: int
    prev: int
    info: int
    rmid: int
    crc: int
    main_data: bytes
    blocks: Sequence[BlockRef] = ()
    fpi_len: int = 0
    origin: int = 0
    toplevel_xid: int = 0

    @property
    def rm_info(self) -> int:
        """info without the XLR_INFO_MASK bits: the rmgr's record type."""
        return self.info & C.XLR_RMGR_INFO_MASK

    @property
    def rec_len(self) -> int:
        """pg_waldump's "rec" length: total minus full-page image bytes."""
        return self.tot_len - self.fpi_len

    @property
    def is_switch(self) -> bool:
        return self.rmid == C.RM_XLOG_ID and (self.info & C.XLR_RMGR_INFO_MASK) == C.XLOG_SWITCH


def _shortdata(lsn: int) -> WalError:
    return WalError(f"record with invalid length at {format_lsn(lsn)}", lsn)


# Hot-loop constants as plain globals (no attribute lookups per fragment).
_ID_SHORT = C.XLR_BLOCK_ID_DATA_SHORT
_ID_LONG = C.XLR_BLOCK_ID_DATA_LONG
_ID_ORIGIN = C.XLR_BLOCK_ID_ORIGIN
_ID_TOPXID = C.XLR_BLOCK_ID_TOPLEVEL_XID
_MAX_ID = C.XLR_MAX_BLOCK_ID
_HAS_IMAGE = C.BKPBLOCK_HAS_IMAGE
_HAS_DATA = C.BKPBLOCK_HAS_DATA
_SAME_REL = C.BKPBLOCK_SAME_REL
_HAS_HOLE = C.BKPIMAGE_HAS_HOLE
_APPLY = C.BKPIMAGE_APPLY
_COMPRESSED = C.BKPIMAGE_COMPRESS_MASK
_BLCKSZ = C.BLCKSZ
_FORK_FLAGS = struct.Struct("<BH")  # fork_flags, data_length
_new_tuple = tuple.__new__  # builds a BlockRef without NamedTuple's Python-level __new__ (hot path)
_IMG = struct.Struct("<HHB")  # length, hole_offset, bimg_info


def decode_body(lsn: int, end_lsn: int, next_lsn: int, tot_len: int, xid: int, prev: int,
                info: int, rmid: int, crc: int, body: bytes) -> DecodedRecord:
    """DecodeXLogRecord over the bytes after the 24-byte header (CRC already checked)."""
    n = len(body)
    # Fast path: the common "main data only" record.
    if n >= 2 and body[0] == _ID_SHORT and n - 2 == body[1]:
        return _new_tuple(DecodedRecord, (lsn, end_lsn, next_lsn, tot_len, xid, prev, info, rmid, crc, body[2:],
                                          (), 0, 0, 0))
    pos = 0
    datatotal = 0
    main_len = 0
    blocks: list[BlockRef] = []
    max_block_id = -1
    spc = db = relnode = -1
    origin = 0
    toplevel = 0
    fpi_len = 0
    while n - pos > datatotal:
        block_id = body[pos]
        pos += 1
        if block_id <= _MAX_ID:
            if block_id <= max_block_id:
                raise WalError(f"out-of-order block_id {block_id} at {format_lsn(lsn)}", lsn)
            max_block_id = block_id
            if n - pos < 3:
                raise _shortdata(lsn)
            fork_flags, data_len = _FORK_FLAGS.unpack_from(body, pos)
            pos += 3
            has_data = fork_flags & _HAS_DATA
            if has_data and data_len == 0:
                raise WalError(f"BKPBLOCK_HAS_DATA set, but no data included at {format_lsn(lsn)}", lsn)
            if not has_data and data_len != 0:
                raise WalError(f"BKPBLOCK_HAS_DATA not set, but data length is {data_len} at {format_lsn(lsn)}",
                               lsn)
            datatotal += data_len
            if fork_flags & _HAS_IMAGE:
                if n - pos < 5:
                    raise _shortdata(lsn)
                bimg_len, hole_offset, bimg_info = _IMG.unpack_from(body, pos)
                pos += 5
                compressed = bimg_info & _COMPRESSED
                has_hole = bimg_info & _HAS_HOLE
                if compressed:
                    if has_hole:
                        if n - pos < 2:
                            raise _shortdata(lsn)
                        hole_length = _U16.unpack_from(body, pos)[0]
                        pos += 2
                    else:
                        hole_length = 0
                else:
                    hole_length = _BLCKSZ - bimg_len
                datatotal += bimg_len
                fpi_len += bimg_len
                if has_hole and (hole_offset == 0 or hole_length == 0 or bimg_len == _BLCKSZ):
                    raise WalError(
                        f"BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_length} "
                        f"block image length {bimg_len} at {format_lsn(lsn)}", lsn)
                if not has_hole and (hole_offset != 0 or hole_length != 0):
                    raise WalError(
                        f"BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length {hole_length} "
                        f"at {format_lsn(lsn)}", lsn)
                if compressed and bimg_len == _BLCKSZ:
                    raise WalError(f"BKPIMAGE_COMPRESSED set, but block image length {bimg_len} "
                                   f"at {format_lsn(lsn)}", lsn)
                if not has_hole and not compressed and bimg_len != _BLCKSZ:
                    # PostgreSQL 15 prints data_len here (sic); we mirror it.
                    raise WalError(
                        "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length "
                        f"is {data_len} at {format_lsn(lsn)}", lsn)
                has_image = True
                apply_image = (bimg_info & _APPLY) != 0
            else:
                has_image = apply_image = False
                bimg_len = hole_offset = hole_length = bimg_info = 0
            if not fork_flags & _SAME_REL:
                if n - pos < 16:
                    raise _shortdata(lsn)
                spc, db, relnode, blkno = _RFN_BLK.unpack_from(body, pos)
                pos += 16
            else:
                if spc < 0:
                    raise WalError(f"BKPBLOCK_SAME_REL set but no previous rel at {format_lsn(lsn)}", lsn)
                if n - pos < 4:
                    raise _shortdata(lsn)
                blkno = _U32.unpack_from(body, pos)[0]
                pos += 4
            blocks.append(_new_tuple(BlockRef, (block_id, spc, db, relnode, fork_flags & 0x0F, blkno, has_image,
                                                bimg_len, data_len, apply_image, bimg_info, hole_offset,
                                                hole_length, fork_flags & 0xF0)))
        elif block_id == _ID_SHORT:
            if n - pos < 1:
                raise _shortdata(lsn)
            main_len = body[pos]
            pos += 1
            datatotal += main_len
            break  # by convention the main data fragment is always last
        elif block_id == _ID_LONG:
            if n - pos < 4:
                raise _shortdata(lsn)
            main_len = _U32.unpack_from(body, pos)[0]
            pos += 4
            datatotal += main_len
            break
        elif block_id == _ID_ORIGIN:
            if n - pos < 2:
                raise _shortdata(lsn)
            origin = _U16.unpack_from(body, pos)[0]
            pos += 2
        elif block_id == _ID_TOPXID:
            if n - pos < 4:
                raise _shortdata(lsn)
            toplevel = _U32.unpack_from(body, pos)[0]
            pos += 4
        else:
            raise WalError(f"invalid block_id {block_id} at {format_lsn(lsn)}", lsn)
    if n - pos != datatotal:
        raise _shortdata(lsn)
    # Fragment payloads follow the headers in order: block images and data,
    # then the main data last.
    main = body[n - main_len:] if main_len else b""
    return DecodedRecord(lsn, end_lsn, next_lsn, tot_len, xid, prev, info, rmid, crc, main,
                         blocks, fpi_len, origin, toplevel)


def decode_record(buf: bytes, lsn: int, segsize: int = DEFAULT_SEGSIZE) -> DecodedRecord:
    """Validate and decode one whole record (its bytes without page headers).

    Checks as ValidXLogRecordHeader (length, rmgr id; the prev-link needs the
    reader's context and is checked there), ValidXLogRecord (CRC) and
    DecodeXLogRecord. end_lsn/next_lsn are computed as if the record lies at
    `lsn` in WAL of segment size `segsize`.
    """
    buf = bytes(buf)
    tot_len = int.from_bytes(buf[:4].ljust(4, b"\0"), "little")
    if tot_len < C.SIZE_OF_XLOG_RECORD or len(buf) < C.SIZE_OF_XLOG_RECORD:
        raise WalError(f"invalid record length at {format_lsn(lsn)}: wanted {C.SIZE_OF_XLOG_RECORD}, "
                       f"got {tot_len}", lsn)
    tot_len, xid, prev, info, rmid, crc = _HDR.unpack_from(buf, 0)
    if not C.rmgr_id_is_valid(rmid):
        raise WalError(f"invalid resource manager ID {rmid} at {format_lsn(lsn)}", lsn)
    if len(buf) < tot_len:
        raise WalError(f"record with invalid length at {format_lsn(lsn)}", lsn)
    body = buf[C.SIZE_OF_XLOG_RECORD:tot_len]
    if _crc_extend(_crc_value(body), buf[: C.XL_CRC_OFFSET]) != crc:
        raise WalError(f"incorrect resource manager data checksum in record at {format_lsn(lsn)}", lsn)
    end = advance(lsn, tot_len, segsize)
    nxt = maxalign(end)
    if rmid == C.RM_XLOG_ID and (info & C.XLR_RMGR_INFO_MASK) == C.XLOG_SWITCH:
        nxt = segment_start(segno_of(nxt + segsize - 1, segsize), segsize)
    return decode_body(lsn, end, nxt, tot_len, xid, prev, info, rmid, crc, body)


# ----------------------------------------------------------------------------
# payloads

_CHECKPOINT = struct.Struct("<QII?7xQIIIIIII4xqIII4x")
assert _CHECKPOINT.size == 88


@dataclass(slots=True)
class CheckPoint:
    """PostgreSQL 15's struct CheckPoint (pg_control.h), 88 bytes with padding.

    next_xid is a FullTransactionId (epoch << 32 | xid).
    """

    redo: int
    this_tli: int
    prev_tli: int
    full_page_writes: bool = True
    next_xid: int = 3  # FirstNormalTransactionId, epoch 0
    next_oid: int = 16384  # FirstNormalObjectId
    next_multi: int = 1
    next_multi_offset: int = 0
    oldest_xid: int = 3
    oldest_xid_db: int = 1
    oldest_multi: int = 1
    oldest_multi_db: int = 1
    time: int = 0  # pg_time_t: seconds since the Unix epoch
    oldest_commit_ts_xid: int = 0
    newest_commit_ts_xid: int = 0
    oldest_active_xid: int = 0

    SIZE = 88

    def pack(self) -> bytes:
        return _CHECKPOINT.pack(self.redo, self.this_tli, self.prev_tli, self.full_page_writes,
                                self.next_xid, self.next_oid, self.next_multi, self.next_multi_offset,
                                self.oldest_xid, self.oldest_xid_db, self.oldest_multi,
                                self.oldest_multi_db, self.time, self.oldest_commit_ts_xid,
                                self.newest_commit_ts_xid, self.oldest_active_xid)

    @classmethod
    def unpack(cls, data: bytes) -> "CheckPoint":
        if len(data) < _CHECKPOINT.size:
            raise WalError(f"checkpoint record data too short: {len(data)} bytes")
        return cls(*_CHECKPOINT.unpack_from(data, 0))

    @property
    def next_xid_epoch(self) -> int:
        return self.next_xid >> 32

    @property
    def next_xid32(self) -> int:
        return self.next_xid & 0xFFFFFFFF


_EOR = struct.Struct("<qII")


@dataclass(slots=True)
class EndOfRecovery:
    """xl_end_of_recovery: end_time (TimestampTz), ThisTimeLineID, PrevTimeLineID."""

    end_time: int
    this_tli: int
    prev_tli: int

    def pack(self) -> bytes:
        return _EOR.pack(self.end_time, self.this_tli, self.prev_tli)

    @classmethod
    def unpack(cls, data: bytes) -> "EndOfRecovery":
        if len(data) < _EOR.size:
            raise WalError(f"end-of-recovery record data too short: {len(data)} bytes")
        return cls(*_EOR.unpack_from(data, 0))


_OVERWRITE = struct.Struct("<Qq")


@dataclass(slots=True)
class OverwriteContrecord:
    """xl_overwrite_contrecord: overwritten_lsn (the aborted record), overwrite_time."""

    overwritten_lsn: int
    overwrite_time: int

    def pack(self) -> bytes:
        return _OVERWRITE.pack(self.overwritten_lsn, self.overwrite_time)

    @classmethod
    def unpack(cls, data: bytes) -> "OverwriteContrecord":
        if len(data) < _OVERWRITE.size:
            raise WalError(f"overwrite-contrecord record data too short: {len(data)} bytes")
        return cls(*_OVERWRITE.unpack_from(data, 0))


_XACT_TIME = struct.Struct("<q")


@dataclass(slots=True)
class XactCommit:
    """xl_xact_commit with only xact_time (no XLOG_XACT_HAS_INFO: no subxacts, rels, invals)."""

    xact_time: int

    def pack(self) -> bytes:
        return _XACT_TIME.pack(self.xact_time)

    @classmethod
    def unpack(cls, data: bytes) -> "XactCommit":
        if len(data) < 8:
            raise WalError(f"commit record data too short: {len(data)} bytes")
        return cls(_XACT_TIME.unpack_from(data, 0)[0])


@dataclass(slots=True)
class XactAbort:
    """xl_xact_abort with only xact_time."""

    xact_time: int

    def pack(self) -> bytes:
        return _XACT_TIME.pack(self.xact_time)

    @classmethod
    def unpack(cls, data: bytes) -> "XactAbort":
        if len(data) < 8:
            raise WalError(f"abort record data too short: {len(data)} bytes")
        return cls(_XACT_TIME.unpack_from(data, 0)[0])


# Our KV layout: key_len u32, value_len u32 (0xFFFFFFFF = NULL), key, value, UTF-8.
_KV_PUT = struct.Struct("<II")
_KV_NULL = 0xFFFFFFFF


@dataclass(slots=True)
class KvPut:
    key: str
    value: str | None

    def pack(self) -> bytes:
        k = self.key.encode("utf-8")
        if self.value is None:
            return _KV_PUT.pack(len(k), _KV_NULL) + k
        v = self.value.encode("utf-8")
        return b"".join((_KV_PUT.pack(len(k), len(v)), k, v))

    @classmethod
    def unpack(cls, data: bytes) -> "KvPut":
        return cls(*kv_put_fields(data))


def kv_put_fields(data: bytes) -> tuple[str, str | None]:
    """(key, value) of a KV_PUT record's data, checked; replay calls this once per row."""
    n = len(data)
    if n < 8:
        raise WalError(f"KV_PUT record data too short: {n} bytes")
    klen, vlen = _KV_PUT.unpack_from(data, 0)
    if vlen == _KV_NULL:
        if n != 8 + klen:
            raise WalError(f"KV_PUT record data has length {n}, expected {8 + klen}")
        return data[8:n].decode("utf-8"), None
    if n != 8 + klen + vlen:
        raise WalError(f"KV_PUT record data has length {n}, expected {8 + klen + vlen}")
    return data[8:8 + klen].decode("utf-8"), data[8 + klen:].decode("utf-8")


@dataclass(slots=True)
class KvDelete:
    key: str

    def pack(self) -> bytes:
        k = self.key.encode("utf-8")
        return _U32.pack(len(k)) + k

    @classmethod
    def unpack(cls, data: bytes) -> "KvDelete":
        if len(data) < 4:
            raise WalError(f"KV_DELETE record data too short: {len(data)} bytes")
        klen = _U32.unpack_from(data, 0)[0]
        if len(data) != 4 + klen:
            raise WalError(f"KV_DELETE record data has length {len(data)}, expected {4 + klen}")
        return cls(data[4:].decode("utf-8"))


Payload = Union[CheckPoint, EndOfRecovery, OverwriteContrecord, XactCommit, XactAbort, KvPut, KvDelete]


def decode_payload(rec: DecodedRecord) -> Payload | None:
    """The typed payload of the records walswitch writes and replays; None for others."""
    op = rec.info & C.XLR_RMGR_INFO_MASK
    if rec.rmid == C.RM_KV_ID:
        if op == C.KV_PUT:
            return KvPut.unpack(rec.main_data)
        if op == C.KV_DELETE:
            return KvDelete.unpack(rec.main_data)
    elif rec.rmid == C.RM_XACT_ID:
        op &= C.XLOG_XACT_OPMASK
        if op == C.XLOG_XACT_COMMIT:
            return XactCommit.unpack(rec.main_data)
        if op == C.XLOG_XACT_ABORT:
            return XactAbort.unpack(rec.main_data)
    elif rec.rmid == C.RM_XLOG_ID:
        if op in (C.XLOG_CHECKPOINT_SHUTDOWN, C.XLOG_CHECKPOINT_ONLINE):
            return CheckPoint.unpack(rec.main_data)
        if op == C.XLOG_END_OF_RECOVERY:
            return EndOfRecovery.unpack(rec.main_data)
        if op == C.XLOG_OVERWRITE_CONTRECORD:
            return OverwriteContrecord.unpack(rec.main_data)
    return None


# (rmid, info, xid, main_data) tuples, ready for WalWriter.insert(*t).
RecordSpec = tuple[int, int, int, bytes]


def checkpoint_record(cp: CheckPoint, shutdown: bool) -> RecordSpec:
    info = C.XLOG_CHECKPOINT_SHUTDOWN if shutdown else C.XLOG_CHECKPOINT_ONLINE
    return (C.RM_XLOG_ID, info, 0, cp.pack())


def end_of_recovery_record(eor: EndOfRecovery) -> RecordSpec:
    return (C.RM_XLOG_ID, C.XLOG_END_OF_RECOVERY, 0, eor.pack())


def switch_record() -> RecordSpec:
    return (C.RM_XLOG_ID, C.XLOG_SWITCH, 0, b"")


def commit_record(xid: int, xact_time: int | None = None) -> RecordSpec:
    t = timestamptz_now() if xact_time is None else xact_time
    return (C.RM_XACT_ID, C.XLOG_XACT_COMMIT, xid, XactCommit(t).pack())


def abort_record(xid: int, xact_time: int | None = None) -> RecordSpec:
    t = timestamptz_now() if xact_time is None else xact_time
    return (C.RM_XACT_ID, C.XLOG_XACT_ABORT, xid, XactAbort(t).pack())


def kv_put_record(xid: int, key: str, value: str | None) -> RecordSpec:
    return (C.RM_KV_ID, C.KV_PUT, xid, KvPut(key, value).pack())


def kv_role_record(xid: int, name: str, attrs: str | None) -> RecordSpec:
    """A role created/changed (attrs JSON) or dropped (None); same layout as KV_PUT."""
    return (C.RM_KV_ID, C.KV_ROLE, xid, KvPut(name, attrs).pack())


def kv_delete_record(xid: int, key: str) -> RecordSpec:
    return (C.RM_KV_ID, C.KV_DELETE, xid, KvDelete(key).pack())
