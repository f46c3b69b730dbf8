"""LSNs and WAL segment arithmetic, with PostgreSQL 15's naming rules.

Owns: the text form of an LSN ("%X/%X"), segment numbers, segment and
timeline-history file names, and the page-walking arithmetic that tells
where a run of record bytes ends once page headers are accounted for.
Nothing here touches files.
"""
from __future__ import annotations

import re

XLOG_BLCKSZ = 8192
DEFAULT_SEGSIZE = 1024 * 1024 * 16
MIN_SEGSIZE = 1024 * 1024
MAX_SEGSIZE = 1024 * 1024 * 1024

# Page header sizes duplicated from constants.py on purpose: this module must
# stay import-free so that every other module can use it.
_SHORT_PHD = 24
_LONG_PHD = 40
MAXALIGN = 8

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SEG_RE = re.compile(r"^[0-9A-F]{24}$")
_HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")


def format_lsn(lsn: int) -> str:
    """PostgreSQL's LSN_FORMAT_ARGS with "%X/%X": 0x16B3748 -> "0/16B3748"."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(s: str) -> int:
    """Inverse of format_lsn; accepts 1-8 hex digits on each side like pg_lsn_in."""
    m = _LSN_RE.match(s.strip()) if isinstance(s, str) else None
    if m is None:
        raise ValueError(f'invalid input syntax for type pg_lsn: "{s}"')
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def maxalign(n: int) -> int:
    return (n + MAXALIGN - 1) & ~(MAXALIGN - 1)


def valid_segsize(n: int) -> bool:
    """PostgreSQL's IsValidWalSegSize: a power of two from 1 MB to 1 GB."""
    return isinstance(n, int) and MIN_SEGSIZE <= n <= MAX_SEGSIZE and (n & (n - 1)) == 0


def _check_segsize(segsize: int) -> None:
    if not valid_segsize(segsize):
        raise ValueError(f"invalid WAL segment size {segsize}: must be a power of two between 1 MB and 1 GB")


def segments_per_xlogid(segsize: int) -> int:
    return 0x100000000 // segsize


def segno_of(lsn: int, segsize: int) -> int:
    """XLByteToSeg: the segment holding byte `lsn`."""
    return lsn // segsize


def segment_start(segno: int, segsize: int) -> int:
    return segno * segsize


def segment_offset(lsn: int, segsize: int) -> int:
    return lsn & (segsize - 1)


def segment_name(tli: int, segno: int, segsize: int) -> str:
    """XLogFileName: timeline, then the segment number split by segments-per-xlogid."""
    _check_segsize(segsize)
    per = segments_per_xlogid(segsize)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def is_segment_name(name: str) -> bool:
    """IsXLogFileName: exactly 24 upper-case hex digits."""
    return bool(_SEG_RE.match(name))


def parse_segment_name(name: str, segsize: int) -> tuple[int, int]:
    """XLogFromFileName: (tli, segno). Raises ValueError on a malformed name."""
    _check_segsize(segsize)
    if not is_segment_name(name):
        raise ValueError(f'invalid WAL segment file name "{name}"')
    tli = int(name[0:8], 16)
    log = int(name[8:16], 16)
    seg = int(name[16:24], 16)
    per = segments_per_xlogid(segsize)
    if seg >= per:
        raise ValueError(f'invalid WAL segment file name "{name}" for segment size {segsize}')
    return tli, log * per + seg


def history_file_name(tli: int) -> str:
    return f"{tli:08X}.history"


def is_history_file_name(name: str) -> bool:
    return bool(_HISTORY_RE.match(name))


def page_header_size_at(page_ptr: int, segsize: int) -> int:
    """Header size of the page starting at page_ptr: long on a segment's first page."""
    return _LONG_PHD if page_ptr % segsize == 0 else _SHORT_PHD


def skip_page_header(pos: int, segsize: int) -> int:
    """A position as a record start: past the page header when on a page boundary.

    Mirrors XLogBytePosToRecPtr vs XLogBytePosToEndRecPtr: the same point in the
    WAL stream is "segment start" as an end pointer and "+40" as a start pointer.
    """
    if pos % XLOG_BLCKSZ == 0:
        return pos + page_header_size_at(pos, segsize)
    return pos


def advance(pos: int, nbytes: int, segsize: int) -> int:
    """Where nbytes of record data written from `pos` end, page headers included.

    `pos` is where the bytes start (a page boundary means a page header comes
    first). The result is the end pointer: exactly at a page boundary when the
    data fills its last page.
    """
    while True:
        off = pos % XLOG_BLCKSZ
        if off == 0:
            pos += page_header_size_at(pos, segsize)
            off = pos % XLOG_BLCKSZ
        room = XLOG_BLCKSZ - off
        if nbytes <= room:
            return pos + nbytes
        nbytes -= room
        pos += room
