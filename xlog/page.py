"""WAL page headers (XLogPageHeaderData / XLogLongPageHeaderData) and their checks.

Owns packing the short (24-byte) and long (40-byte) page headers and
PostgreSQL 15's XLogReaderValidatePageHeader, with its messages. The
writer uses the packing side; the reader and pg_waldump-like tools the
checking side.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import constants as C
from .lsn import XLOG_BLCKSZ, format_lsn, segment_name, segno_of

_SHORT = C.SHORT_PHD_STRUCT
_LONG = C.LONG_PHD_STRUCT


@dataclass(slots=True)
class PageHeader:
    magic: int
    info: int
    tli: int
    pageaddr: int
    rem_len: int
    sysid: int = 0
    seg_size: int = 0
    xlog_blcksz: int = 0

    @property
    def is_long(self) -> bool:
        return bool(self.info & C.XLP_LONG_HEADER)

    @property
    def size(self) -> int:
        return C.SIZE_OF_LONG_PHD if self.info & C.XLP_LONG_HEADER else C.SIZE_OF_SHORT_PHD


def pack_page_header(pageaddr: int, tli: int, segsize: int, sysid: int, rem_len: int,
                     info_extra: int = C.XLP_BKP_REMOVABLE) -> bytes:
    """The header PostgreSQL's AdvanceXLInsertBuffer puts on a new page.

    Long header on a segment's first page. XLP_FIRST_IS_CONTRECORD when a
    record continues onto this page (rem_len > 0). XLP_BKP_REMOVABLE is set
    as PostgreSQL does when no base backup forces full-page writes.
    """
    info = info_extra
    if rem_len:
        info |= C.XLP_FIRST_IS_CONTRECORD
    if pageaddr % segsize == 0:
        return _LONG.pack(C.XLOG_PAGE_MAGIC, info | C.XLP_LONG_HEADER, tli, pageaddr, rem_len,
                          sysid, segsize, XLOG_BLCKSZ)
    return _SHORT.pack(C.XLOG_PAGE_MAGIC, info, tli, pageaddr, rem_len)


def unpack_page_header(buf: bytes, off: int = 0) -> PageHeader:
    magic, info, tli, addr, rem = _SHORT.unpack_from(buf, off)
    if info & C.XLP_LONG_HEADER and len(buf) - off >= C.SIZE_OF_LONG_PHD:
        _, _, _, _, _, sysid, segsz, blcksz = _LONG.unpack_from(buf, off)
        return PageHeader(magic, info, tli, addr, rem, sysid, segsz, blcksz)
    return PageHeader(magic, info, tli, addr, rem)


def page_header_size(info: int) -> int:
    """XLogPageHeaderSize: by the header's own XLP_LONG_HEADER flag."""
    return C.SIZE_OF_LONG_PHD if info & C.XLP_LONG_HEADER else C.SIZE_OF_SHORT_PHD


def validate_page_header(buf: bytes, off: int, recptr: int, segsize: int, seg_tli: int,
                         expected_sysid: int | None) -> str | None:
    """XLogReaderValidatePageHeader minus the timeline-sequence check.

    buf[off:] holds the page that should live at recptr (page-aligned), read
    from the segment file of timeline seg_tli (used only to name the file in
    messages). Returns None when valid, else PostgreSQL's message.
    """
    magic, info, tli, addr, rem = _SHORT.unpack_from(buf, off)
    segno = segno_of(recptr, segsize)
    offset = recptr % segsize
    if magic != C.XLOG_PAGE_MAGIC:
        return (f"invalid magic number {magic:04X} in log segment "
                f"{segment_name(seg_tli, segno, segsize)}, offset {offset}")
    if info & ~C.XLP_ALL_FLAGS:
        return (f"invalid info bits {info:04X} in log segment "
                f"{segment_name(seg_tli, segno, segsize)}, offset {offset}")
    if info & C.XLP_LONG_HEADER:
        _, _, _, _, _, sysid, segsz, blcksz = _LONG.unpack_from(buf, off)
        if expected_sysid and sysid != expected_sysid:
            return ("WAL file is from different database system: WAL file database system identifier "
                    f"is {sysid}, pg_control database system identifier is {expected_sysid}")
        if segsz != segsize:
            return "WAL file is from different database system: incorrect segment size in page header"
        if blcksz != XLOG_BLCKSZ:
            return "WAL file is from different database system: incorrect XLOG_BLCKSZ in page header"
    elif offset == 0:
        # The first page of a file must have the long header.
        return (f"invalid info bits {info:04X} in log segment "
                f"{segment_name(seg_tli, segno, segsize)}, offset {offset}")
    if addr != recptr:
        return (f"unexpected pageaddr {format_lsn(addr)} in log segment "
                f"{segment_name(seg_tli, segno, segsize)}, offset {offset}")
    return None
