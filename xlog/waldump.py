"""`walswitch waldump PATH...`: print WAL records one per line, as PostgreSQL 15's pg_waldump.

Owns the command line: which files to read (segment files, or every
segment file of a directory, in order), the segment size (from the first
file's long page header), the output lines (rmgrdesc.format_record_line)
and the ending: pg_waldump's error line and exit status 1 when reading
stopped on invalid WAL before the end of the given files; silence and
exit 0 when the files simply end, or when the last file ends in zeros.
Run as `python -m xlog.waldump PATH...` too.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass

from . import constants as C
from .lsn import format_lsn, is_segment_name, parse_segment_name, segment_start, valid_segsize
from .reader import WalReader
from .rmgrdesc import LineFormatter
from .walstats import WalStats

PROG = "walswitch waldump"


class _Fatal(Exception):
    pass


@dataclass(frozen=True)
class SegmentFile:
    tli: int
    segno: int
    path: str


def _collect(paths: list[str]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            try:
                names = sorted(n for n in os.listdir(p) if is_segment_name(n))
            except OSError as e:
                raise _Fatal(f'could not open directory "{p}": {e.strerror}')
            files.extend(os.path.join(p, n) for n in names)
        else:
            try:
                with open(p, "rb"):
                    pass
            except OSError as e:
                raise _Fatal(f'could not open file "{p}": {e.strerror}')
            files.append(p)
    if not files:
        raise _Fatal(f'no WAL segment files found in {", ".join(paths)}')
    return files


def _segsize_of(path: str) -> int:
    try:
        with open(path, "rb") as f:
            head = f.read(C.SIZE_OF_LONG_PHD)
    except OSError as e:
        raise _Fatal(f'could not read file "{path}": {e.strerror}')
    if len(head) < C.SIZE_OF_LONG_PHD:
        raise _Fatal(f'could not read file "{path}": read {len(head)} of {C.SIZE_OF_LONG_PHD}')
    segsize = struct.unpack_from("<I", head, 32)[0]
    if not valid_segsize(segsize):
        raise _Fatal("WAL segment size must be a power of two between 1 MB and 1 GB, but the WAL file "
                     f'"{os.path.basename(path)}" header specifies {segsize} bytes')
    return segsize


def _index(files: list[str], segsize: int) -> list[SegmentFile]:
    segs = []
    for p in files:
        name = os.path.basename(p)
        try:
            tli, segno = parse_segment_name(name, segsize)
        except ValueError:
            raise _Fatal(f'invalid WAL segment file name "{name}"')
        segs.append(SegmentFile(tli, segno, p))
    segs.sort(key=lambda s: (s.segno, s.tli))
    return segs


def _zero_tail(seg: SegmentFile, segsize: int, lsn: int) -> bool:
    """Is everything from lsn to the end of this file zeros (an unwritten tail)?"""
    off = lsn - segment_start(seg.segno, segsize)
    if not 0 <= off <= segsize:
        return False
    with open(seg.path, "rb") as f:
        f.seek(off)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False


def run(paths: list[str], out, stats: str | None = None) -> int:  # type: ignore[no-untyped-def]
    files = _collect(paths)
    segsize = _segsize_of(files[0])
    segs = _index(files, segsize)
    by_segno: dict[int, list[SegmentFile]] = {}
    for s in segs:
        by_segno.setdefault(s.segno, []).append(s)

    def open_segment(tli: int, segno: int) -> bytes | None:
        cands = by_segno.get(segno)
        if not cands:
            return None  # past the files given: the end, as pg_waldump's end pointer
        chosen = next((c for c in cands if c.tli == tli), cands[-1])
        with open(chosen.path, "rb") as f:
            return f.read(segsize)

    first = segs[0]
    start = segment_start(first.segno, segsize)
    reader = WalReader(open_segment, segsize, first.tli, start)
    found = reader.find_first_record(start)
    if found is None:
        # As pg_waldump, also when the files end inside a record that began earlier.
        raise _Fatal(f"could not find a valid record after {format_lsn(start)}")
    fmt = LineFormatter()
    summary = WalStats(per_record=stats == "record") if stats else None
    while True:
        recs = reader.read_records(4096)     # the replay fast path: records whole on a checked page
        if not recs:
            break
        if summary is not None:
            summary.add(recs)
        else:
            out.write("\n".join(map(fmt, recs)) + "\n")
    if summary is not None:
        out.write("\n".join(summary.lines()) + "\n")
    out.flush()
    if reader.error is None:
        return 0
    stop = reader.next_lsn
    last = segs[-1]
    if stop // segsize == last.segno and _zero_tail(last, segsize, stop):
        return 0
    sys.stderr.write(f"pg_waldump: error: error in WAL record at {format_lsn(reader.last_record_lsn)}: "
                     f"{reader.error}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Print the records of WAL segment files, as PostgreSQL's pg_waldump.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="WAL segment files, or directories holding them")
    parser.add_argument("-z", "--stats", action="store_const", const="rmgr",
                        help="show statistics instead of records (--stats=record: per record type)")
    parser.add_argument("--stats=record", dest="stats", action="store_const", const="record",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        return run(args.paths, sys.stdout, args.stats)
    except _Fatal as e:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except BrokenPipeError:
        # Output cut short (| head): not worth a traceback. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


if __name__ == "__main__":
    sys.exit(main())
