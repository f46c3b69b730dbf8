"""WalReader: reads PostgreSQL 15 WAL record by record, with PostgreSQL's checks.

Owns the read side of the page/record format: page header validation
(XLogReaderValidatePageHeader, including the long header's system
identifier, segment size and block size, and the timeline-sequence check),
record header validation and the prev-link chain (ValidXLogRecordHeader),
reassembly of records split across pages and segments (xlp_rem_len,
XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD), the CRC
(ValidXLogRecord), following XLOG_SWITCH to the next segment, and
XLogFindNextRecord for starting at an arbitrary point.

Where bytes come from is the caller's business: a callable
open_segment(tli, segno) returns a segment's bytes (possibly a prefix of a
segment still being written) or None. A missing segment, a short one, or
bytes past `read_upto` make read_record() return None with error None
("no more WAL yet"); invalid WAL makes it return None with `error` set to
PostgreSQL's message. Either way the next call retries at the same place
(re-reading the segment when it may have changed: after an error, when it
was short, or when read_upto moved on), so a reader can follow WAL as it
arrives.  The opener may return a buffer with a usable length (the
standby's concurrent guard), or a read-only mmap of the file, so that
asking again costs nothing when the file stays the same.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Callable, Iterator

import google_crc32c

from . import constants as C
from .errors import WalError
from .lsn import XLOG_BLCKSZ, format_lsn, maxalign, segment_name, valid_segsize
from .page import validate_page_header
from .record import DecodedRecord, decode_body

# What open_segment returns: the segment's bytes (a prefix while it is being written), or a
# buffer of the whole file (bytes, or an mmap that shows later writes) with how much of it may
# be read, or None when there is no such segment.
SegmentBytes = "bytes | mmap.mmap | tuple[bytes | mmap.mmap, int] | None"
OpenSegment = Callable[[int, int], SegmentBytes]

_crc_value = google_crc32c.value
_crc_extend = google_crc32c.extend
_HDR = C.XLOG_RECORD_STRUCT
_U32 = struct.Struct("<I")
_PHD = C.SHORT_PHD_STRUCT

_BLCK = XLOG_BLCKSZ
_SZREC = C.SIZE_OF_XLOG_RECORD
_LONGF = C.XLP_LONG_HEADER
_CONTF = C.XLP_FIRST_IS_CONTRECORD
_OVERWRITEF = C.XLP_FIRST_IS_OVERWRITE_CONTRECORD
_PAGE_MASK = _BLCK - 1
_CRC_OFF = C.XL_CRC_OFFSET
_MAX_BUILTIN = C.RM_MAX_BUILTIN_ID
_MIN_CUSTOM = C.RM_MIN_CUSTOM_ID
_RM_XLOG = C.RM_XLOG_ID
_SWITCH = C.XLOG_SWITCH
_ID_SHORT = C.XLR_BLOCK_ID_DATA_SHORT
_new_tuple = tuple.__new__  # DecodedRecord without NamedTuple's Python-level __new__ (hot path)


class _NeedData(Exception):
    """The WAL needed is not (yet) available: not an error in the WAL."""


class _Restart(Exception):
    """XLP_FIRST_IS_OVERWRITE_CONTRECORD: read again from that page."""

    def __init__(self, page_ptr: int) -> None:
        self.page_ptr = page_ptr


def dir_segment_opener(pg_wal: str, segsize: int) -> OpenSegment:
    """open_segment for a directory of segment files (pg_wal, an archive copy)."""

    def open_segment(tli: int, segno: int) -> bytes | None:
        path = os.path.join(pg_wal, segment_name(tli, segno, segsize))
        try:
            with open(path, "rb") as f:
                return f.read(segsize)
        except FileNotFoundError:
            return None

    return open_segment


class WalReader:
    """Sequential record reader over WAL segments of one timeline at a time.

    `tli` may be changed between reads: the next segment opened is looked
    up on the new timeline (timeline switches are the caller's policy).
    """

    def __init__(self, open_segment: OpenSegment, segsize: int, tli: int, start_lsn: int, *,
                 expected_sysid: int | None = None, read_upto: int | None = None) -> None:
        if not valid_segsize(segsize):
            raise ValueError(f"invalid WAL segment size {segsize}")
        self._open = open_segment
        self.segsize = segsize
        self.tli = tli
        self.expected_sysid = expected_sysid
        self._read_upto = read_upto
        self.error: str | None = None
        self.error_lsn: int | None = None  # the record position the error is about
        self.waiting_for: int | None = None  # LSN of the data we lacked when we returned None
        self.end_of_valid_wal = start_lsn
        self.last_record_lsn = 0  # ReadRecPtr: start of the last record returned (0: none)
        self.overwritten_lsn = 0  # set when a record was skipped by an OVERWRITE_CONTRECORD
        # Set when reading failed inside a record spanning pages (PG's abortedRecPtr /
        # missingContrecPtr): new WAL should then begin at missing_contrecord_lsn with an
        # XLOG_OVERWRITE_CONTRECORD (WalWriter.insert_overwrite_contrecord), not overwrite
        # the first part of the aborted record, which may already be archived or streamed.
        self.aborted_record_lsn = 0
        self.missing_contrecord_lsn = 0
        self._next = start_lsn
        self._prev_rec: int | None = None  # None: random access, check prev-link loosely
        self._seg: bytes | mmap.mmap = b""
        self._seg_usable = 0  # bytes of _seg the opener let us read
        self._segno = -1
        self._seg_tli = -1
        self._seg_limit = 0  # number of usable bytes in _seg
        self._load_upto: int | None = None  # read_upto when _seg was loaded: bytes past it may be stale
        self._valid_page = -1
        self._latest_page_ptr = 0
        self._latest_page_tli = 0
        self._assembling_page = 0
        self._seg_base = 0  # LSN of _seg's first byte
        # True while the last read_record() returned a record and nothing that
        # invalidates read_record's fast path (segment, timeline, limit) changed.
        self._streak = False

    @classmethod
    def from_dir(cls, pg_wal: str, segsize: int, tli: int, start_lsn: int, **kw: object) -> "WalReader":
        return cls(dir_segment_opener(pg_wal, segsize), segsize, tli, start_lsn, **kw)  # type: ignore[arg-type]

    @property
    def read_upto(self) -> int | None:
        """WAL at or past this LSN counts as not yet available (e.g. the walreceiver's flush LSN)."""
        return self._read_upto

    @read_upto.setter
    def read_upto(self, lsn: int | None) -> None:
        self._read_upto = lsn
        self._streak = False
        if self._segno >= 0:
            self._set_limit()

    # -- positioning -----------------------------------------------------------
    @property
    def next_lsn(self) -> int:
        """Where the next read_record() starts."""
        return self._next

    def begin_read(self, lsn: int) -> None:
        """XLogBeginRead: next read at lsn, a record start or a page boundary."""
        self._next = lsn
        self._prev_rec = None
        self._streak = False
        self.end_of_valid_wal = lsn
        self.last_record_lsn = 0
        self.error = None

    def find_first_record(self, lsn: int | None = None) -> int | None:
        """XLogFindNextRecord: the first record starting at or after lsn.

        Skips continuation data of a record begun earlier (following
        xlp_rem_len across pages), then reads forward. On success the reader
        is positioned at the record found, and its LSN returned; else None
        with `error` set (or None if WAL ran out).
        """
        if lsn is None:
            lsn = self._next
        self.error = None
        tmp = lsn
        try:
            while True:
                page = tmp - tmp % _BLCK
                seg, off = self._page(page, C.SIZE_OF_SHORT_PHD)
                _, info, _, _, rem = _PHD.unpack_from(seg, off)
                hsize = C.SIZE_OF_LONG_PHD if info & _LONGF else C.SIZE_OF_SHORT_PHD
                if info & _CONTF:
                    if maxalign(rem) >= _BLCK - hsize:
                        tmp = page + _BLCK
                        continue
                    tmp = page + hsize + maxalign(rem)
                else:
                    tmp = page + hsize
                break
        except _NeedData:
            self._drop_segment()
            return None
        except WalError as e:
            self._fail(e)
            return None
        self.begin_read(tmp)
        while True:
            rec = self.read_record()
            if rec is None:
                return None
            if rec.lsn >= lsn:
                self.begin_read(rec.lsn)
                return rec.lsn

    # -- reading -------------------------------------------------------------
    def read_records(self, limit: int = 256) -> list[DecodedRecord]:
        """Up to `limit` next records; [] exactly when read_record() would return None.

        Replay's hot loop: records that lie whole on a page already validated
        are decoded here with the checks of the general path, in one loop;
        anything else (a new page, a record crossing pages, XLOG_SWITCH, bad
        data, missing data) goes through read_record().  After an empty list
        see `error`, `waiting_for`, `end_of_valid_wal` as after None.
        """
        out: list[DecodedRecord] = []
        append = out.append
        unpack = _HDR.unpack_from
        crc_value, crc_extend, new = _crc_value, _crc_extend, _new_tuple
        n = 0
        while n < limit:
            if self._streak and self._seg_tli == self.tli:
                seg = self._seg
                base = self._seg_base
                seg_limit = self._seg_limit
                page = self._valid_page
                page_end = page + _BLCK
                prev = self._prev_rec
                start = self._next
                while n < limit:
                    p = start - base
                    # Not at the page's start (that needs the header checks) and its header here.
                    if not page < start <= page_end - _SZREC or p + _SZREC > seg_limit:
                        break
                    tot_len, xid, rprev, xl_info, rmid, crc = unpack(seg, p)
                    q = p + tot_len
                    end = start + tot_len
                    if (tot_len < _SZREC or end > page_end or q > seg_limit or rprev != prev
                            or _MAX_BUILTIN < rmid < _MIN_CUSTOM or (rmid == _RM_XLOG and (xl_info & 0xF0) == _SWITCH)):
                        break
                    body = seg[p + _SZREC:q]
                    if crc_extend(crc_value(body), seg[p:p + _CRC_OFF]) != crc:
                        break
                    nxt = (end + 7) & ~7
                    blen = tot_len - _SZREC
                    if blen >= 2 and body[0] == _ID_SHORT and blen - 2 == body[1]:
                        append(new(DecodedRecord, (start, end, nxt, tot_len, xid, rprev, xl_info, rmid, crc,
                                                   body[2:], (), 0, 0, 0)))
                    else:
                        append(decode_body(start, end, nxt, tot_len, xid, rprev, xl_info, rmid, crc, body))
                    n += 1
                    prev = start
                    start = nxt
                self._prev_rec = self.last_record_lsn = prev
                self._next = self.end_of_valid_wal = start
                if n >= limit:
                    break
            rec = self.read_record()
            if rec is None:
                break
            append(rec)
            n += 1
        return out

    def read_record(self) -> DecodedRecord | None:
        """The next record, or None (see `error`, `waiting_for`, `end_of_valid_wal`)."""
        self._streak = False
        self.error = None
        self.error_lsn = None
        self.waiting_for = None
        self.aborted_record_lsn = 0
        self.missing_contrecord_lsn = 0
        start = self._next
        while True:
            try:
                rec = self._read_one(start)
                break
            except _Restart as r:
                # The record we were assembling was overwritten: read what is
                # at the page with the flag instead (its prev-link is the
                # same as the lost record's).
                self.overwritten_lsn = start
                start = r.page_ptr
            except _NeedData as e:
                # Keep the segment cached: _page re-reads it once more WAL may be there.
                self.waiting_for = e.args[0] if e.args else None
                return None
            except WalError as e:
                self._fail(e)
                return None
        self._prev_rec = rec.lsn
        self._next = rec.next_lsn
        self.end_of_valid_wal = rec.next_lsn
        self.last_record_lsn = rec.lsn
        self._streak = True
        return rec

    def __iter__(self) -> Iterator[DecodedRecord]:
        while True:
            rec = self.read_record()
            if rec is None:
                return
            yield rec

    def _fail(self, e: WalError) -> None:
        self.error = e.message
        self.error_lsn = e.lsn
        self._drop_segment()

    def _drop_segment(self) -> None:
        # Re-open on the next attempt: the file may have grown or been replaced.
        self._seg = b""
        self._seg_usable = 0
        self._segno = -1
        self._seg_limit = 0
        self._valid_page = -1
        self._streak = False

    # -- pages ---------------------------------------------------------------
    def _load_segment(self, segno: int) -> None:
        data = self._open(self.tli, segno)
        if data is None:
            raise _NeedData(segno * self.segsize)
        if isinstance(data, tuple):
            data, usable = data
        else:
            usable = len(data)
        self._seg = data
        self._seg_usable = min(usable, len(data))
        self._segno = segno
        self._seg_base = segno * self.segsize
        self._seg_tli = self.tli
        self._valid_page = -1
        self._load_upto = self._read_upto
        self._set_limit()

    def _set_limit(self) -> None:
        limit = min(self._seg_usable, self.segsize)
        start = self._segno * self.segsize
        # Bytes past read_upto are not ours to read yet; bytes past the read_upto
        # in force when we loaded the segment may have changed since (a
        # walreceiver writes into a full-size file).
        for bound in (self._read_upto, self._load_upto):
            if bound is not None:
                limit = min(limit, bound - start)
        self._seg_limit = max(0, limit)

    def _may_have_grown(self) -> bool:
        if self._seg_usable < self.segsize:
            return True
        return self._load_upto is not None and (self._read_upto is None or self._read_upto > self._load_upto)

    def _page(self, page_ptr: int, need: int) -> tuple[bytes, int]:
        """The segment bytes holding the page at page_ptr, its header validated.

        `need` bytes of the page must be available. Returns (segment bytes,
        offset of the page in them).
        """
        segsize = self.segsize
        segno = page_ptr // segsize
        off = page_ptr - segno * segsize
        if segno != self._segno or self._seg_tli != self.tli:
            self._load_segment(segno)
            if off != 0:
                # As ReadPageInternal: on entering a segment, check its first
                # page's long header even when reading further in.
                self._check_page(segno * segsize, 0, _BLCK)
        if off + need > self._seg_limit:
            if self._may_have_grown():
                self._load_segment(segno)
                if off != 0:
                    self._check_page(segno * segsize, 0, _BLCK)
            if off + need > self._seg_limit:
                raise _NeedData(page_ptr + need)
        if self._valid_page != page_ptr:
            self._check_page(page_ptr, off, need)
            self._valid_page = page_ptr
        return self._seg, off

    def _check_page(self, page_ptr: int, off: int, need: int) -> None:
        seg = self._seg
        hneed = C.SIZE_OF_SHORT_PHD
        if off + hneed > self._seg_limit:
            raise _NeedData(page_ptr + hneed)
        if seg[off + 2] & _LONGF and off + C.SIZE_OF_LONG_PHD > self._seg_limit:
            raise _NeedData(page_ptr + C.SIZE_OF_LONG_PHD)
        err = validate_page_header(seg, off, page_ptr, self.segsize, self._seg_tli, self.expected_sysid)
        if err is not None:
            raise WalError(err, page_ptr)
        tli = _U32.unpack_from(seg, off + 4)[0]
        if page_ptr > self._latest_page_ptr:
            if tli < self._latest_page_tli:
                raise WalError(
                    f"out-of-sequence timeline ID {tli} (after {self._latest_page_tli}) in log segment "
                    f"{segment_name(self._seg_tli, page_ptr // self.segsize, self.segsize)}, "
                    f"offset {page_ptr % self.segsize}", page_ptr)
        self._latest_page_ptr = page_ptr
        self._latest_page_tli = tli

    # -- records ---------------------------------------------------------------
    def _check_header(self, rec_ptr: int, tot_len: int, rmid: int, prev: int) -> None:
        """ValidXLogRecordHeader."""
        if tot_len < _SZREC:
            raise WalError(f"invalid record length at {format_lsn(rec_ptr)}: wanted {_SZREC}, got {tot_len}",
                           rec_ptr)
        if not (rmid <= C.RM_MAX_BUILTIN_ID or rmid >= C.RM_MIN_CUSTOM_ID):
            raise WalError(f"invalid resource manager ID {rmid} at {format_lsn(rec_ptr)}", rec_ptr)
        if self._prev_rec is None:
            # Random access: the prev-link can only be checked loosely.
            bad = not prev < rec_ptr
        else:
            bad = prev != self._prev_rec
        if bad:
            raise WalError(f"record with incorrect prev-link {format_lsn(prev)} at {format_lsn(rec_ptr)}",
                           rec_ptr)

    def _read_one(self, rec_ptr: int) -> DecodedRecord:
        page_ptr = rec_ptr - rec_ptr % _BLCK
        rec_off = rec_ptr - page_ptr
        off = page_ptr - self._segno * self.segsize
        if page_ptr == self._valid_page and rec_off and off + rec_off + _SZREC <= self._seg_limit \
                and self._seg_tli == self.tli:
            seg = self._seg  # fast path: same page as the last record, already checked
        else:
            seg, off = self._page(page_ptr, min(rec_off + _SZREC, _BLCK) if rec_off else C.SIZE_OF_SHORT_PHD)
        info = seg[off + 2] | (seg[off + 3] << 8)
        hsize = C.SIZE_OF_LONG_PHD if info & _LONGF else C.SIZE_OF_SHORT_PHD
        if rec_off == 0:
            rec_ptr += hsize
            rec_off = hsize
            if off + rec_off + _SZREC > self._seg_limit:
                seg, off = self._page(page_ptr, rec_off + _SZREC)
        elif rec_off < hsize:
            raise WalError(f"invalid record offset at {format_lsn(rec_ptr)}", rec_ptr)
        if info & _CONTF and rec_off == hsize:
            raise WalError(f"contrecord is requested by {format_lsn(rec_ptr)}", rec_ptr)

        p = off + rec_off
        room = _BLCK - rec_off
        if room >= _SZREC:
            tot_len, xid, prev, xl_info, rmid, crc = _HDR.unpack_from(seg, p)
            self._check_header(rec_ptr, tot_len, rmid, prev)
            gotheader = True
        else:
            tot_len = _U32.unpack_from(seg, p)[0]
            if tot_len < _SZREC:
                raise WalError(f"invalid record length at {format_lsn(rec_ptr)}: wanted {_SZREC}, "
                               f"got {tot_len}", rec_ptr)
            gotheader = False

        segsize = self.segsize
        if tot_len <= room:
            # The whole record is on this page.
            if p + tot_len > self._seg_limit:
                seg, off = self._page(page_ptr, rec_off + tot_len)
                p = off + rec_off
            body = seg[p + _SZREC:p + tot_len]
            if _crc_extend(_crc_value(body), seg[p:p + C.XL_CRC_OFFSET]) != crc:
                raise WalError(f"incorrect resource manager data checksum in record at {format_lsn(rec_ptr)}",
                               rec_ptr)
            end = rec_ptr + tot_len
        else:
            # Reassemble a record that continues on following pages.
            if off + _BLCK > self._seg_limit:
                # The first fragment runs to the end of this page: all of it must be there.
                seg, off = self._page(page_ptr, _BLCK)
                p = off + rec_off
            head = (xid, prev, xl_info, rmid, crc) if gotheader else None
            try:
                end, body, (xid, prev, xl_info, rmid, crc) = self._reassemble(
                    rec_ptr, page_ptr, tot_len, seg[p:p + room], head)
            except (WalError, _NeedData):
                # As PG's abortedRecPtr / missingContrecPtr.
                self.aborted_record_lsn = rec_ptr
                self.missing_contrecord_lsn = self._assembling_page
                raise
        nxt = (end + 7) & ~7
        if rmid == C.RM_XLOG_ID and (xl_info & C.XLR_RMGR_INFO_MASK) == C.XLOG_SWITCH:
            # Pretend it extends to the end of its segment.
            nxt = -(-nxt // segsize) * segsize
        return decode_body(rec_ptr, end, nxt, tot_len, xid, prev, xl_info, rmid, crc, body)

    def _reassemble(self, rec_ptr: int, page_ptr: int, tot_len: int, first: bytes,
                    head: tuple[int, int, int, int, int] | None
                    ) -> tuple[int, bytes, tuple[int, int, int, int, int]]:
        """Collect the continuation pieces of a record; returns (end, body, header fields)."""
        pieces = [first]
        got = len(first)
        pptr = page_ptr
        end = 0
        while got < tot_len:
            pptr += _BLCK
            self._assembling_page = pptr
            left = tot_len - got
            seg, off = self._page(pptr, min(left + C.SIZE_OF_SHORT_PHD, _BLCK))
            _, pinfo, _, _, rem = _PHD.unpack_from(seg, off)
            if pinfo & _OVERWRITEF:
                raise _Restart(pptr)
            if not pinfo & _CONTF:
                raise WalError(f"there is no contrecord flag at {format_lsn(rec_ptr)}", rec_ptr)
            if rem == 0 or tot_len != rem + got:
                raise WalError(f"invalid contrecord length {rem} (expected {left}) at "
                               f"{format_lsn(rec_ptr)}", rec_ptr)
            ph = C.SIZE_OF_LONG_PHD if pinfo & _LONGF else C.SIZE_OF_SHORT_PHD
            n = _BLCK - ph
            if rem < n:
                n = rem
            if off + ph + n > self._seg_limit:
                seg, off = self._page(pptr, ph + n)
            pieces.append(seg[off + ph:off + ph + n])
            got += n
            if head is None:
                # The header was split across pages: check it now that it is whole.
                tot2, xid, prev, xl_info, rmid, crc = _HDR.unpack_from(b"".join(pieces), 0)
                self._check_header(rec_ptr, tot2, rmid, prev)
                head = (xid, prev, xl_info, rmid, crc)
            end = pptr + ph + n
        rec = b"".join(pieces)
        body = rec[_SZREC:]
        assert head is not None
        if _crc_extend(_crc_value(body), rec[:C.XL_CRC_OFFSET]) != head[4]:
            raise WalError(f"incorrect resource manager data checksum in record at {format_lsn(rec_ptr)}",
                           rec_ptr)
        return end, body, head


def find_first_record(open_segment: OpenSegment, segsize: int, tli: int, lsn: int, *,
                      expected_sysid: int | None = None) -> tuple[int | None, WalReader]:
    """Convenience: a reader positioned at the first record at or after lsn.

    Returns (lsn of that record or None, the reader); on None see reader.error.
    """
    reader = WalReader(open_segment, segsize, tli, lsn, expected_sysid=expected_sysid)
    return reader.find_first_record(lsn), reader
