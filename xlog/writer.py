"""WalWriter: the single WAL inserter's writer, laying records into PostgreSQL 15 pages.

Owns the bytes of WAL from its start position on: page headers (long on a
segment's first page, XLP_FIRST_IS_CONTRECORD and xlp_rem_len on pages a
record continues onto), the xl_prev chain, the in-memory buffer of not yet
written pages, segment file creation (zero-filled temp file, fsync, rename,
fsync directory, as XLogFileInit), write / fdatasync, XLOG_SWITCH, and
telling the caller when a segment is complete and durable.

Positions: `insert_lsn` and `flush_lsn` are end pointers, as PostgreSQL's
EndRecPtr: MAXALIGNed, and a value on a page boundary means the next record
starts after that page's header (see `next_record_lsn`). They equal the
reader's DecodedRecord.next_lsn / WalReader.end_of_valid_wal.

Not thread-safe: one process, one thread inserts (walswitch has one WAL
inserter). The buffer lives in this object only; nothing is shared.  The one
helper thread is the preallocator (``prealloc=True``: the backend's writer, not
the short-lived ones of init and the end of recovery): when the writer enters a
segment it prepares the next one (a zero-filled, fsynced temp file), as
PostgreSQL's checkpointer preallocates a segment ahead (PreallocXlogFiles), so the inserter does not stop
for 16 MB of zeros and an fsync at each segment boundary (10 to 30 ms here,
once per 16 MB of WAL, paid by every commit behind it).  Unlike PostgreSQL's,
the prepared file stays under its temp name until the writer reaches it and
links it into place: pg_wal never holds a segment beyond the end of WAL, so
readers, pg_waldump and a crash's cleanup see what they saw before."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable

from . import constants as C
from .durable import fsync_dir
from .errors import WalError
from .lsn import (XLOG_BLCKSZ, format_lsn, page_header_size_at, segment_name, segno_of,
                  skip_page_header, valid_segsize)
from .page import pack_page_header, validate_page_header
from .record import OverwriteContrecord, build_record_parts, timestamptz_now

SegmentCallback = Callable[[int, str], None]

_ZEROS = bytes(1 << 20)  # immutable: a source of zeros for file init and switch padding
_AUTO_WRITE_BYTES = 8 << 20  # write out when this much is buffered, as PG when wal_buffers fill


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(f"could not write to WAL file at offset {offset}: wrote {n}")
        mv = mv[n:]
        offset += n


def _write_zeros(fd: int, offset: int, length: int) -> None:
    while length > 0:
        n = min(length, len(_ZEROS))
        _pwrite_all(fd, memoryview(_ZEROS)[:n], offset)
        offset += n
        length -= n


def _prepare_file(tmp: str, fill: Callable[[int], None]) -> None:
    """Create `tmp`, fill it and fsync it (XLogFileInit's first half)."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fill(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)


def _put_in_place(pg_wal: str, tmp: str, path: str, replace: bool) -> None:
    """Rename or link a prepared file to its name, then fsync the directory.

    Without `replace`, an existing file wins (link, not rename, so a file
    someone else installed meanwhile, and may be writing, is never clobbered).
    """
    if replace:
        os.rename(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    fsync_dir(pg_wal)


def _install_file(pg_wal: str, final_name: str, fill: Callable[[int], None], replace: bool) -> str:
    """Create pg_wal/final_name durably: temp file, fill, fsync, rename, fsync dir."""
    path = os.path.join(pg_wal, final_name)
    tmp = os.path.join(pg_wal, f"xlogtemp.{os.getpid()}")
    _prepare_file(tmp, fill)
    _put_in_place(pg_wal, tmp, path, replace)
    return path


def init_segment_file(pg_wal: str, tli: int, segno: int, segsize: int) -> str:
    """XLogFileInit: a zero-filled segment file, created durably if it does not exist.

    An existing file is used as it is (PostgreSQL reuses recycled segments;
    readers tell old contents by their page addresses), but one shorter than
    a segment is extended with zeros.
    """
    name = segment_name(tli, segno, segsize)
    path = os.path.join(pg_wal, name)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return _install_file(pg_wal, name, lambda fd: _write_zeros(fd, 0, segsize), replace=False)
    if size < segsize:
        fd = os.open(path, os.O_RDWR)
        try:
            _write_zeros(fd, size, segsize - size)
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def copy_segment_prefix(pg_wal: str, src_tli: int, dst_tli: int, segno: int, upto_lsn: int,
                        segsize: int) -> str:
    """XLogFileCopy for a timeline switch: the new timeline's segment starts as a copy.

    Copies the bytes of segment `segno` of src_tli before upto_lsn (the
    switch point) into a new file of dst_tli, zero-filling the rest, so a
    WalWriter on the new timeline can resume at upto_lsn mid-page.
    """
    src = os.path.join(pg_wal, segment_name(src_tli, segno, segsize))
    n = upto_lsn - segno * segsize
    if not 0 <= n <= segsize:
        raise ValueError(f"{format_lsn(upto_lsn)} is not in segment {segment_name(src_tli, segno, segsize)}")
    with open(src, "rb") as f:
        head = f.read(n)
    if len(head) != n:
        raise WalError(f'could not read file "{src}": read {len(head)} of {n}')

    def fill(fd: int) -> None:
        _pwrite_all(fd, head, 0)
        _write_zeros(fd, n, segsize - n)

    # As XLogFileCopy: whatever the new timeline's file held before is replaced.
    return _install_file(pg_wal, segment_name(dst_tli, segno, segsize), fill, replace=True)


class WalWriter:
    """Appends records to WAL in pg_wal/, PostgreSQL 15 format, starting at start_lsn."""

    def __init__(self, pg_wal: str, tli: int, segsize: int, sysid: int, start_lsn: int, prev_lsn: int,
                 on_segment_complete: SegmentCallback | None = None, prealloc: bool = False) -> None:
        if not valid_segsize(segsize):
            raise ValueError(f"invalid WAL segment size {segsize}")
        if start_lsn % 8:
            raise ValueError(f"WAL start position {format_lsn(start_lsn)} is not MAXALIGNed")
        if prev_lsn >= skip_page_header(start_lsn, segsize) and start_lsn != 0:
            raise ValueError(f"prev-link {format_lsn(prev_lsn)} is not before {format_lsn(start_lsn)}")
        self.pg_wal = pg_wal
        self.tli = tli
        self.segsize = segsize
        self.sysid = sysid
        self._on_complete = on_segment_complete
        self._pos = start_lsn
        self._prev = prev_lsn
        self._buf_start = start_lsn - start_lsn % XLOG_BLCKSZ
        self._buf = bytearray()
        self._written = start_lsn
        self._flushed = start_lsn
        self._fds: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._next_report = segno_of(start_lsn, segsize)
        self._closed = False
        self._overwrite_page = -1
        self._prealloc_on = prealloc      # a short-lived writer would prepare a file only to drop it
        self._prealloc: tuple[int, threading.Thread] | None = None   # (segno, preparing thread)
        if start_lsn % XLOG_BLCKSZ:
            self._buf += self._read_back_partial_page(start_lsn)

    # -- positions -----------------------------------------------------------
    @property
    def insert_lsn(self) -> int:
        """End of inserted WAL (MAXALIGNed end pointer): the next record begins here."""
        return self._pos

    @property
    def next_record_lsn(self) -> int:
        """Where the next record's header will actually start (after a page header)."""
        return skip_page_header(self._pos, self.segsize)

    @property
    def prev_lsn(self) -> int:
        """Start of the last record inserted: the next record's xl_prev."""
        return self._prev

    @property
    def write_lsn(self) -> int:
        return self._written

    @property
    def flush_lsn(self) -> int:
        return self._flushed

    # -- inserting -----------------------------------------------------------
    def insert(self, rmid: int, info: int, xid: int, main_data: bytes = b"") -> tuple[int, int]:
        """Append one record; returns (start_lsn, end_lsn), end MAXALIGNed like XLogInsert's.

        Nothing is written to the file until write()/flush() (or the buffer
        grows past a few MB).
        """
        if self._closed:
            raise ValueError("WalWriter is closed")
        head, body = build_record_parts(rmid, info, xid, self._prev, main_data)
        start = skip_page_header(self._pos, self.segsize)
        self._append(head, body)
        self._prev = start
        if len(self._buf) >= _AUTO_WRITE_BYTES:
            self.write()
        return start, self._pos

    def _append(self, head: bytes, body: bytes) -> None:
        """Lay the record (head, then body) onto pages, a page header wherever a page begins."""
        pos = self._pos
        n = len(head) + len(body)
        po = pos % XLOG_BLCKSZ
        if po and XLOG_BLCKSZ - po >= n:
            # The common case: the record fits on the current page.
            buf = self._buf
            buf += head
            buf += body
            pos += n
        else:
            pos = self._append_across_pages(head, body, pos)
        pad = -pos % 8  # records are MAXALIGNed; padding never crosses a page
        if pad:
            self._buf += _ZEROS[:pad]
            pos += pad
        self._pos = pos

    def _append_across_pages(self, head: bytes, body: bytes, pos: int) -> int:
        # The pieces are gathered and the buffer grown once: growing a bytearray page by page
        # re-copies it as it goes (a 16 MiB record: 8 ms of the loop instead of 2).
        hlen = len(head)
        n = hlen + len(body)
        hv, bv = memoryview(head), memoryview(body)
        pieces: list[bytes | memoryview] = []
        off = 0
        while off < n:
            po = pos % XLOG_BLCKSZ
            if po == 0:
                # New page: its header says how much of a continued record is left.
                extra = C.XLP_BKP_REMOVABLE
                if pos == self._overwrite_page:
                    extra |= C.XLP_FIRST_IS_OVERWRITE_CONTRECORD
                hdr = pack_page_header(pos, self.tli, self.segsize, self.sysid, n - off if off else 0, extra)
                pieces.append(hdr)
                pos += len(hdr)
                po = len(hdr)
            take = min(XLOG_BLCKSZ - po, n - off)
            end = off + take
            if off < hlen:
                pieces.append(hv[off:min(end, hlen)])
            if end > hlen:
                pieces.append(bv[max(off, hlen) - hlen:end - hlen])
            off = end
            pos += take
        self._buf += b"".join(pieces)
        return pos

    def insert_overwrite_contrecord(self, aborted_lsn: int, overwrite_time: int | None = None
                                    ) -> tuple[int, int]:
        """XLOG_OVERWRITE_CONTRECORD, as CreateOverwriteContrecordRecord after a crash.

        When WAL ended inside a record spanning pages (reader.aborted_record_lsn),
        new WAL starts at the page where the record's continuation was missing
        (reader.missing_contrecord_lsn; create the writer there with prev_lsn =
        the last valid record). This must be the first record: its page gets
        XLP_FIRST_IS_OVERWRITE_CONTRECORD, so readers skip the aborted record.
        """
        if self._pos % XLOG_BLCKSZ or self._pos != self._written or self._buf:
            raise ValueError("the overwrite-contrecord record must be first, at a page boundary")
        t = timestamptz_now() if overwrite_time is None else overwrite_time
        self._overwrite_page = self._pos
        return self.insert(C.RM_XLOG_ID, C.XLOG_OVERWRITE_CONTRECORD, C.INVALID_XID,
                           OverwriteContrecord(aborted_lsn, t).pack())

    def switch(self) -> int:
        """XLOG_SWITCH: end the segment, flush; returns the next segment's start.

        The rest of the segment after the switch record is zeros, page headers
        included (PostgreSQL 15 zeroes them so archived segments compress).
        At a segment start with nothing inserted in it, a no-op (as
        ReserveXLogSwitch), but the WAL so far is still flushed.
        """
        if self._pos % self.segsize == 0:
            self.flush()
            return self._pos
        self.insert(C.RM_XLOG_ID, C.XLOG_SWITCH, C.INVALID_XID, b"")
        seg_end = -(-self._pos // self.segsize) * self.segsize
        self.write()
        if self._pos < seg_end:
            # write() zero-padded the page holding the record's end; zero the
            # remaining pages of the segment.
            page_end = -(-self._pos // XLOG_BLCKSZ) * XLOG_BLCKSZ
            if page_end < seg_end:
                segno = segno_of(page_end, self.segsize)
                _write_zeros(self._fd(segno), page_end % self.segsize, seg_end - page_end)
                self._dirty.add(segno)
            self._pos = self._written = seg_end
            self._buf = bytearray()
            self._buf_start = seg_end
        self.flush()
        return seg_end

    # -- writing -------------------------------------------------------------
    def write(self) -> None:
        """Write buffered WAL to the segment files (whole pages; no fsync)."""
        end = self._pos
        if end == self._written:
            return
        start = self._buf_start
        mv = memoryview(self._buf)
        cur = start
        while cur < end:
            segno = cur // self.segsize
            chunk_end = min(end, (segno + 1) * self.segsize)
            fd = self._fd(segno)
            data = mv[cur - start:chunk_end - start]
            foff = cur % self.segsize
            tail = -chunk_end % XLOG_BLCKSZ
            _pwrite_all(fd, data, foff)
            if tail:
                # The partial last page is written whole: our bytes, then zeros.
                _pwrite_all(fd, _ZEROS[:tail], foff + len(data))
            self._dirty.add(segno)
            cur = chunk_end
        mv.release()
        keep = end - end % XLOG_BLCKSZ
        if keep < end and keep >= start:
            self._buf = bytearray(self._buf[keep - start:])
            self._buf_start = keep
        else:
            self._buf = bytearray()
            self._buf_start = end
        self._written = end

    def flush(self) -> int:
        """write() then fdatasync every touched segment; returns flush_lsn.

        Then reports each segment that is now complete and durable, oldest
        first, to on_segment_complete(segno, path).
        """
        self.write()
        for segno in sorted(self._dirty):
            os.fdatasync(self._fds[segno])
        self._dirty.clear()
        self._flushed = self._written
        self._report_complete()
        return self._flushed

    def _report_complete(self) -> None:
        while (self._next_report + 1) * self.segsize <= self._flushed:
            segno = self._next_report
            fd = self._fds.pop(segno, None)
            if fd is not None:
                os.close(fd)
            if self._on_complete is not None:
                # If the callback fails, the segment is reported again at the next flush.
                self._on_complete(segno, self._path(segno))
            self._next_report = segno + 1

    def close(self, flush: bool = True) -> None:
        """Flush (unless told not to, e.g. to simulate a crash) and close the files."""
        if self._closed:
            return
        try:
            if flush:
                self.flush()
        finally:
            self._closed = True
            self._drop_prealloc()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> "WalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(flush=exc[0] is None)

    # -- files ---------------------------------------------------------------
    def _path(self, segno: int) -> str:
        return os.path.join(self.pg_wal, segment_name(self.tli, segno, self.segsize))

    def _fd(self, segno: int) -> int:
        fd = self._fds.get(segno)
        if fd is None:
            path = self._take_prealloc(segno) or init_segment_file(self.pg_wal, self.tli, segno, self.segsize)
            fd = os.open(path, os.O_RDWR)
            self._fds[segno] = fd
            self._start_prealloc(segno + 1)
        return fd

    def _prealloc_path(self) -> str:
        return os.path.join(self.pg_wal, f"xlogtemp.{os.getpid()}.next")

    def _start_prealloc(self, segno: int) -> None:
        if not self._prealloc_on or self._prealloc is not None or os.path.exists(self._path(segno)):
            return
        tmp = self._prealloc_path()

        def work() -> None:
            try:
                _prepare_file(tmp, lambda fd: _write_zeros(fd, 0, self.segsize))
            except OSError:
                pass   # the inserter creates the segment itself when it gets there (and reports failures)

        self._prealloc = (segno, threading.Thread(target=work, name="wal-prealloc", daemon=True))
        self._prealloc[1].start()

    def _take_prealloc(self, segno: int) -> str | None:
        """The prepared file put in place as `segno`, if it was prepared for it; else None."""
        if self._prealloc is None:
            return None
        for_segno, thread = self._prealloc
        thread.join()
        self._prealloc = None
        tmp = self._prealloc_path()
        if not os.path.exists(tmp):
            return None
        if for_segno != segno or os.path.exists(self._path(segno)):
            os.unlink(tmp)
            return None
        _put_in_place(self.pg_wal, tmp, self._path(segno), replace=False)
        return self._path(segno)

    def _drop_prealloc(self) -> None:
        if self._prealloc is not None:
            self._prealloc[1].join()
            self._prealloc = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._prealloc_path())

    def _read_back_partial_page(self, start_lsn: int) -> bytes:
        """The bytes already on the page where we resume, so rewrites keep them."""
        page = start_lsn - start_lsn % XLOG_BLCKSZ
        n = start_lsn - page
        segno = segno_of(page, self.segsize)
        path = self._path(segno)
        data = b""
        if os.path.exists(path):
            with open(path, "rb") as f:
                f.seek(page % self.segsize)
                data = f.read(n)
        hsize = page_header_size_at(page, self.segsize)
        if len(data) == n and n >= hsize:
            err = validate_page_header(data.ljust(C.SIZE_OF_LONG_PHD, b"\0"), 0, page, self.segsize,
                                       self.tli, self.sysid)
            if err is None:
                return data
            if any(data) or n != hsize:
                raise WalError(f"cannot resume WAL at {format_lsn(start_lsn)}: {err}", start_lsn)
        elif n != hsize:
            raise WalError(f'cannot resume WAL at {format_lsn(start_lsn)}: page {format_lsn(page)} '
                           f'is not in "{path}"', start_lsn)
        # Resuming right after where a page header belongs on a fresh page: make it.
        return pack_page_header(page, self.tli, self.segsize, self.sysid, 0)
