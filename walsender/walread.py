"""Reading WAL for a walsender (PostgreSQL's WALRead and its segment-open callback).

One segment file open at a time, read with pread; a segment older than the oldest one kept
(``shared.xlog.oldest_kept_segno``), or gone, is PostgreSQL's 58P01 "requested WAL segment ... has
already been removed", checked again after the read (CheckXLogRemoved), since a checkpoint may
remove it while we read.  On a historic timeline, the segment holding the switch point is read
from the next timeline's copy.  Mixed into WalSender, which owns the attributes below.
"""
from __future__ import annotations

import os
from typing import Any

from libpq import protocol as P
from xlog.lsn import segment_name, segno_of


class WalRead:
    pg_wal: str
    shared: Any
    send_tli: int
    send_tli_historic: bool
    send_tli_valid_upto: int
    send_tli_next: int
    segfile: tuple[int, int, int] | None    # (timeline, segno, fd) of the open segment

    def close_segment(self) -> None:
        if self.segfile is not None:
            try:
                os.close(self.segfile[2])
            except OSError:
                pass
            self.segfile = None

    def open_segment(self, segno: int, segsize: int) -> int:
        tli = self.send_tli
        if self.send_tli_historic and segno == segno_of(self.send_tli_valid_upto, segsize):
            # The segment holding the switchpoint is read from the new timeline's copy.
            tli = self.send_tli_next
        if self.segfile is not None and self.segfile[0] == tli and self.segfile[1] == segno:
            return self.segfile[2]
        self.close_segment()
        name = segment_name(tli, segno, segsize)
        oldest = int(self.shared.xlog.get("oldest_kept_segno") or 0)
        if segno < oldest:
            raise self.removed_error(segno, segsize)
        try:
            fd = os.open(os.path.join(self.pg_wal, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self.removed_error(segno, segsize) from None
        except OSError as e:
            raise P.SQLError("58030", f'could not open file "pg_wal/{name}": {e.strerror}') from None
        self.segfile = (tli, segno, fd)
        return fd

    def removed_error(self, segno: int, segsize: int) -> P.SQLError:
        name = segment_name(self.send_tli, segno, segsize)
        return P.SQLError("58P01", f"requested WAL segment {name} has already been removed")

    def read_wal(self, start: int, nbytes: int, segsize: int) -> bytes:
        segno = segno_of(start, segsize)
        fd = self.open_segment(segno, segsize)
        off = start % segsize
        try:
            data = os.pread(fd, nbytes, off)
        except OSError as e:
            raise P.SQLError("58030", f'could not read from log segment '
                                      f'{segment_name(self.send_tli, segno, segsize)}, offset {off}: '
                                      f'{e.strerror}') from None
        if len(data) != nbytes:
            raise P.SQLError("XX001", f"could not read from log segment {segment_name(self.send_tli, segno, segsize)}"
                                      f", offset {off}: read {len(data)} of {nbytes}")
        # The segment may have been removed while we read it (CheckXLogRemoved).
        if segno < int(self.shared.xlog.get("oldest_kept_segno") or 0):
            raise self.removed_error(segno, segsize)
        return data
