"""WalWriter -> WalReader: framing across pages and segments, switches, resuming, damage."""
from __future__ import annotations

import os
import random
import struct
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from xlog import constants as C
from xlog.lsn import XLOG_BLCKSZ, format_lsn, segment_name, skip_page_header
from xlog.reader import WalReader, find_first_record
from xlog.record import (CheckPoint, DecodedRecord, EndOfRecovery, KvPut, OverwriteContrecord,
                         checkpoint_record, decode_payload, end_of_recovery_record)
from xlog.writer import WalWriter, copy_segment_prefix, init_segment_file

MB = 1024 * 1024
SEG = MB
SYSID = 7312345678901234567
START = SEG  # segment 1, as initdb starts


def new_writer(d: str, start: int = START, prev: int = 0, tli: int = 1, segsize: int = SEG,
               done: list | None = None) -> WalWriter:
    cb = (lambda segno, path: done.append((segno, path))) if done is not None else None
    return WalWriter(d, tli, segsize, SYSID, start, prev, cb)


# Every test that reads through read_all runs twice: record by record (read_record)
# and in batches (read_records, replay's path), which must see exactly the same.
_MODE = {"batched": False}


@pytest.fixture(autouse=True, params=["read_record", "read_records"])
def read_mode(request):
    _MODE["batched"] = request.param == "read_records"
    yield request.param
    _MODE["batched"] = False


def drain(r: WalReader) -> list[DecodedRecord]:
    """The records r has now, by the current mode."""
    if not _MODE["batched"]:
        return list(r)
    out: list[DecodedRecord] = []
    limits = (1, 7, 256)
    while recs := r.read_records(limits[len(out) % 3]):
        out.extend(recs)
    return out


def read_all(d: str, start: int = START, tli: int = 1, segsize: int = SEG,
             **kw: object) -> tuple[list[DecodedRecord], WalReader]:
    r = WalReader.from_dir(d, segsize, tli, start, **kw)
    return drain(r), r


def seg_path(d: str, segno: int, tli: int = 1) -> str:
    return os.path.join(d, segment_name(tli, segno, SEG))


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def page_header(path: str, offset: int) -> tuple[int, int, int, int, int]:
    with open(path, "rb") as f:
        f.seek(offset)
        return C.SHORT_PHD_STRUCT.unpack(f.read(24))


def expected_end_error(end: int) -> str | None:
    """What the reader says at the zeroed end of our WAL, by where that end is."""
    if end % SEG == 0:
        return None  # the next segment file does not exist: just no more WAL
    if end % XLOG_BLCKSZ == 0:
        return (f"invalid magic number 0000 in log segment {segment_name(1, end // SEG, SEG)}, "
                f"offset {end % SEG}")
    return f"invalid record length at {format_lsn(end)}: wanted 24, got 0"


def payload(i: int, n: int) -> bytes:
    return (i.to_bytes(4, "little") * (n // 4 + 1))[:n]


# --- round trips ------------------------------------------------------------------

SIZES = st.one_of(st.integers(0, 300), st.integers(8000, 8300), st.integers(16000, 17000),
                  st.integers(0, 70000), st.sampled_from([255, 256, 8123, 8131, 1_100_000]))
OPS = st.lists(st.one_of(SIZES, SIZES, SIZES, st.sampled_from(["switch", "flush", "reopen"])),
               min_size=1, max_size=60)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_round_trip_random_sizes(ops: list) -> None:
    with tempfile.TemporaryDirectory() as d:
        done: list = []
        w = new_writer(d, done=done)
        expect = []
        for i, op in enumerate(ops):
            if op == "switch":
                before = w.insert_lsn
                nxt = w.switch()
                assert nxt % SEG == 0 and nxt >= before
                if before % SEG:
                    expect.append(("switch", None))
            elif op == "flush":
                assert w.flush() == w.insert_lsn == w.flush_lsn
            elif op == "reopen":
                # Resume in a new writer where this one stopped (mid-page, on a boundary, ...).
                w.close()
                w = new_writer(d, start=w.insert_lsn, prev=w.prev_lsn, done=done)
            else:
                start, end = w.insert(C.RM_KV_ID, C.KV_PUT, i, payload(i, op))
                assert start == skip_page_header(start, SEG) and end % 8 == 0 and end > start
                expect.append((start, payload(i, op)))
        w.close()
        recs, r = read_all(d)
        assert len(recs) == len(expect)
        prev = 0
        for rec, (start, data) in zip(recs, expect):
            assert rec.prev == prev
            prev = rec.lsn
            if start == "switch":
                assert rec.is_switch and rec.next_lsn % SEG == 0
            else:
                assert rec.lsn == start and rec.main_data == data
        assert r.end_of_valid_wal == w.insert_lsn
        assert r.error == expected_end_error(w.insert_lsn)
        # Every completed segment was reported once, in order, after its flush.
        assert [s for s, _ in done] == list(range(1, w.flush_lsn // SEG))
        assert all(os.path.getsize(p) == SEG for _, p in done)


@pytest.mark.timeout(60)
def test_record_ending_exactly_at_page_boundary_and_header_split() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        # First record at 0x100028: 24 + 5 + n bytes filling the first page exactly.
        s1, e1 = w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(XLOG_BLCKSZ - 40 - 29))
        assert (s1, e1) == (START + 40, START + XLOG_BLCKSZ)
        assert w.insert_lsn == START + XLOG_BLCKSZ and w.next_record_lsn == START + XLOG_BLCKSZ + 24
        s2, e2 = w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"x")
        assert s2 == START + XLOG_BLCKSZ + 24
        # Next: a record ending 8 bytes before the page end, so the following
        # header is split 8/16 across the boundary.
        room = START + 2 * XLOG_BLCKSZ - 8 - e2
        s3, e3 = w.insert(C.RM_KV_ID, C.KV_PUT, 3, bytes(room - 29))
        assert e3 == START + 2 * XLOG_BLCKSZ - 8
        s4, e4 = w.insert(C.RM_XACT_ID, C.XLOG_XACT_COMMIT, 3, bytes(8))
        assert s4 == e3
        w.close()
        path = seg_path(d, 1)
        magic, info, tli, addr, rem = page_header(path, XLOG_BLCKSZ)
        assert (magic, info, tli, addr, rem) == (C.XLOG_PAGE_MAGIC, C.XLP_BKP_REMOVABLE, 1, START + XLOG_BLCKSZ, 0)
        magic, info, tli, addr, rem = page_header(path, 2 * XLOG_BLCKSZ)
        assert info == C.XLP_BKP_REMOVABLE | C.XLP_FIRST_IS_CONTRECORD and rem == 34 - 8
        recs, r = read_all(d)
        assert [x.lsn for x in recs] == [s1, s2, s3, s4]
        assert recs[0].end_lsn == START + XLOG_BLCKSZ and recs[0].next_lsn == START + XLOG_BLCKSZ
        assert recs[3].end_lsn == START + 2 * XLOG_BLCKSZ + 24 + 26


@pytest.mark.timeout(60)
def test_multi_segment_record_page_headers_and_segment_callbacks() -> None:
    with tempfile.TemporaryDirectory() as d:
        done: list = []
        w = new_writer(d, done=done)
        w.insert(*checkpoint_record(CheckPoint(START + 40, 1, 1), shutdown=True))
        value = "v" * 3_000_000
        s, e = w.insert(C.RM_KV_ID, C.KV_PUT, 10, KvPut("big", value).pack())
        tot = 24 + 5 + 8 + 3 + 3_000_000
        assert done == []  # nothing is reported before it is flushed
        w.write()
        assert done == []
        w.flush()
        assert [x for x, _ in done] == [1, 2]  # the record ends in segment 3
        assert done[0][1] == seg_path(d, 1)
        w.close()
        # Every page after the record's first holds the rest of it, rem_len counting down.
        got = XLOG_BLCKSZ - (s % XLOG_BLCKSZ)
        page = s - s % XLOG_BLCKSZ + XLOG_BLCKSZ
        while got < tot:
            segno, off = divmod(page, SEG)
            magic, info, tli, addr, rem = page_header(seg_path(d, segno), off)
            hsize = 40 if off == 0 else 24
            assert addr == page and rem == tot - got
            assert info == C.XLP_BKP_REMOVABLE | C.XLP_FIRST_IS_CONTRECORD | (C.XLP_LONG_HEADER if off == 0 else 0)
            if off == 0:
                sysid, segsz, blcksz = struct.unpack_from("<QII", open(seg_path(d, segno), "rb").read(40), 24)
                assert (sysid, segsz, blcksz) == (SYSID, SEG, XLOG_BLCKSZ)
            got += min(XLOG_BLCKSZ - hsize, tot - got)
            page += XLOG_BLCKSZ
        recs, r = read_all(d)
        assert len(recs) == 2 and decode_payload(recs[1]) == KvPut("big", value)
        assert recs[1].end_lsn == e - (-recs[1].end_lsn % 8) and recs[1].tot_len == tot
        assert not [n for n in os.listdir(d) if n.startswith("xlogtemp")]


@pytest.mark.timeout(60)
def test_next_segment_is_prepared_ahead() -> None:
    """Entering a segment prepares the next one (zero-filled, fsynced, 0600) under a temp name
    in a thread; the writer puts it in place when it gets there.  pg_wal never shows a segment
    beyond the end of WAL, and nothing is left behind."""
    with tempfile.TemporaryDirectory() as d:
        w = WalWriter(d, 1, SEG, SYSID, START, 0, prealloc=True)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, KvPut("a", "1").pack())
        w.flush()
        w._prealloc[1].join()
        tmp = w._prealloc_path()
        assert os.path.getsize(tmp) == SEG and os.stat(tmp).st_mode & 0o777 == 0o600
        with open(tmp, "rb") as f:
            assert not any(f.read())
        assert not os.path.exists(seg_path(d, 2))
        value = "v" * (SEG // 2)
        for i in range(5):                              # on into segment 3
            w.insert(C.RM_KV_ID, C.KV_PUT, 1, KvPut(f"k{i}", value).pack())
        w.close()
        assert w.insert_lsn // SEG == 3
        assert sorted(os.listdir(d)) == [segment_name(1, s, SEG) for s in (1, 2, 3)]
        recs, r = read_all(d)
        assert [decode_payload(x) for x in recs[1:]] == [KvPut(f"k{i}", value) for i in range(5)]
        assert r.error == expected_end_error(w.insert_lsn)


@pytest.mark.timeout(60)
def test_switch_zero_fills_rest_and_noop_at_segment_start() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(100))
        nxt = w.switch()
        assert nxt == 2 * SEG and w.insert_lsn == nxt == w.flush_lsn
        assert w.switch() == nxt  # nothing inserted in the new segment: no-op
        s, _ = w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"after")
        assert s == nxt + 40
        w.close()
        recs, r = read_all(d)
        assert [x.is_switch for x in recs] == [False, True, False]
        sw = recs[1]
        assert sw.tot_len == 24 and sw.next_lsn == 2 * SEG and sw.main_data == b""
        with open(seg_path(d, 1), "rb") as f:
            data = f.read()
        assert len(data) == SEG and not any(data[sw.end_lsn - SEG:])  # zeros, page headers too
        assert recs[2].prev == sw.lsn


@pytest.mark.timeout(60)
@pytest.mark.parametrize("gap", [8, 16, 24, 32])
def test_switch_record_near_page_and_segment_end(gap: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        # Fill up to `gap` bytes before the end of the segment.
        while SEG * 2 - w.insert_lsn > 9000:
            w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(4000))
        left = SEG * 2 - gap - w.insert_lsn
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(left - 29 if left - 29 > 255 else left - 26))
        assert w.insert_lsn == SEG * 2 - gap
        nxt = w.switch()
        # A switch record that does not fit spills into the next segment and consumes it.
        assert nxt == (2 * SEG if gap >= 24 else 3 * SEG)
        w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"next")
        w.close()
        recs, r = read_all(d)
        assert recs[-2].is_switch and recs[-2].next_lsn == nxt and recs[-1].lsn == nxt + 40
        assert r.error == expected_end_error(w.insert_lsn)


@pytest.mark.timeout(60)
def test_default_16mb_segments() -> None:
    with tempfile.TemporaryDirectory() as d:
        seg = 16 * MB
        w = WalWriter(d, 1, seg, SYSID, seg, 0)
        starts = [w.insert(C.RM_KV_ID, C.KV_PUT, i, bytes(i * 997 % 30000))[0] for i in range(100)]
        assert w.switch() == 2 * seg
        w.close()
        assert os.listdir(d) == ["000000010000000000000001"] and os.path.getsize(os.path.join(d, os.listdir(d)[0])) == seg
        recs, r = read_all(d, start=seg, segsize=seg)
        assert [x.lsn for x in recs[:-1]] == starts and recs[-1].is_switch and r.error is None
        assert struct.unpack_from("<I", open(os.path.join(d, os.listdir(d)[0]), "rb").read(40), 32)[0] == seg


@pytest.mark.timeout(30)
def test_segment_callback_failure_is_retried() -> None:
    with tempfile.TemporaryDirectory() as d:
        calls: list[int] = []

        def cb(segno: int, path: str) -> None:
            calls.append(segno)
            if len(calls) == 1:
                raise OSError("disk full")

        w = WalWriter(d, 1, SEG, SYSID, START, 0, cb)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(10))
        with pytest.raises(OSError):
            w.switch()
        w.insert(C.RM_KV_ID, C.KV_PUT, 2, bytes(10))
        w.flush()
        w.close()
        assert calls == [1, 1]


@pytest.mark.timeout(30)
def test_init_segment_file_never_clobbers() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = init_segment_file(d, 1, 5, SEG)
        assert os.path.getsize(path) == SEG and not any(open(path, "rb").read())
        patch(path, 100, b"written by someone")
        assert init_segment_file(d, 1, 5, SEG) == path
        assert open(path, "rb").read(118)[100:] == b"written by someone"
        with open(path, "r+b") as f:
            f.truncate(5000)  # a short file (a partial copy) is extended with zeros
        init_segment_file(d, 1, 5, SEG)
        data = open(path, "rb").read()
        assert len(data) == SEG and data[100:118] == b"written by someone" and not any(data[5000:])
        assert sorted(os.listdir(d)) == [segment_name(1, 5, SEG)]


# --- resuming -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_resume_mid_page_page_boundary_and_segment_boundary() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"a" * 100)
        w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"b" * 100)
        w.close()
        # Mid-page: the earlier bytes of the page must survive the rewrite.
        w2 = new_writer(d, start=w.insert_lsn, prev=w.prev_lsn)
        w2.insert(C.RM_KV_ID, C.KV_PUT, 3, b"c" * (XLOG_BLCKSZ - 300))  # ends near the page end
        w2.close()
        # At a page boundary exactly.
        w3 = new_writer(d, start=w2.insert_lsn, prev=w2.prev_lsn)
        fill = XLOG_BLCKSZ * 2 - (w3.insert_lsn % XLOG_BLCKSZ) - 29 - 24
        w3.insert(C.RM_KV_ID, C.KV_PUT, 4, bytes(fill % XLOG_BLCKSZ + 1000))
        w3.switch()
        w3.close()
        # At a segment boundary: the writer creates the new segment file.
        w4 = new_writer(d, start=w3.insert_lsn, prev=w3.prev_lsn)
        assert not os.path.exists(seg_path(d, 2))
        w4.insert(C.RM_XACT_ID, C.XLOG_XACT_COMMIT, 4, bytes(8))
        w4.close()
        assert os.path.getsize(seg_path(d, 2)) == SEG
        recs, r = read_all(d)
        assert [x.xid for x in recs] == [1, 2, 3, 4, 0, 4]
        assert recs[0].main_data == b"a" * 100 and recs[1].main_data == b"b" * 100
        assert r.end_of_valid_wal == w4.insert_lsn


@pytest.mark.timeout(30)
def test_resume_at_page_boundary_of_partially_written_page() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        s, e = w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(XLOG_BLCKSZ - 40 - 29))
        w.close()
        assert e % XLOG_BLCKSZ == 0
        w2 = new_writer(d, start=e, prev=s)
        s2, _ = w2.insert(C.RM_KV_ID, C.KV_PUT, 2, b"x")
        w2.close()
        assert s2 == e + 24
        assert [x.lsn for x in read_all(d)[0]] == [s, s2]


@pytest.mark.timeout(30)
def test_resume_errors() -> None:
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(Exception, match="cannot resume WAL at 0/100100"):
            new_writer(d, start=START + 0x100, prev=START + 40)
        with pytest.raises(ValueError, match="not MAXALIGNed"):
            new_writer(d, start=START + 41, prev=0)
        # Right after where the header goes on a page no one wrote yet: fine.
        w = new_writer(d, start=START + 40, prev=0x28)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"x")
        w.close()
        recs, _ = read_all(d)
        assert [x.lsn for x in recs] == [START + 40]


@pytest.mark.timeout(30)
def test_unflushed_records_are_lost_then_rewritten() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"kept")
        w.flush()
        kept_end, kept_prev = w.insert_lsn, w.prev_lsn
        w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"lost")
        w.close(flush=False)  # a crash before the write
        recs, r = read_all(d)
        assert [x.main_data for x in recs] == [b"kept"] and r.end_of_valid_wal == kept_end
        w2 = new_writer(d, start=r.end_of_valid_wal, prev=r.last_record_lsn)
        assert w2.prev_lsn == kept_prev
        w2.insert(C.RM_KV_ID, C.KV_PUT, 3, b"new")
        w2.close()
        assert [x.main_data for x in read_all(d)[0]] == [b"kept", b"new"]


# --- damage: the reader stops at the last valid record with PG's message ---------------

def _three_records(d: str) -> list[tuple[int, int]]:
    w = new_writer(d)
    out = [w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"one" * 10), w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"two" * 10),
           w.insert(C.RM_KV_ID, C.KV_PUT, 3, b"three" * 10)]
    w.close()
    return out


@pytest.mark.timeout(30)
def test_corrupt_data_byte_gives_checksum_error() -> None:
    with tempfile.TemporaryDirectory() as d:
        (s1, e1), (s2, e2), (s3, e3) = _three_records(d)
        patch(seg_path(d, 1), s3 - START + 40, b"X")
        recs, r = read_all(d)
        assert [x.lsn for x in recs] == [s1, s2]
        assert r.error == f"incorrect resource manager data checksum in record at {format_lsn(s3)}"
        assert r.end_of_valid_wal == e2 == s3 and r.last_record_lsn == s2


@pytest.mark.timeout(30)
def test_torn_tail_zeroed() -> None:
    with tempfile.TemporaryDirectory() as d:
        (s1, e1), (s2, e2), (s3, e3) = _three_records(d)
        patch(seg_path(d, 1), s3 - START, bytes(e3 - s3))
        recs, r = read_all(d)
        assert [x.lsn for x in recs] == [s1, s2]
        assert r.error == f"invalid record length at {format_lsn(s3)}: wanted 24, got 0"


@pytest.mark.timeout(30)
def test_bad_prev_link_and_rmgr() -> None:
    with tempfile.TemporaryDirectory() as d:
        (s1, e1), (s2, e2), _ = _three_records(d)
        # A writer resumed with the wrong prev-link, as stale WAL would look.
        w = new_writer(d, start=e2, prev=1)
        w.insert(C.RM_KV_ID, C.KV_PUT, 9, b"bad")
        w.close()
        recs, r = read_all(d)
        assert len(recs) == 2 and r.error == f"record with incorrect prev-link 0/1 at {format_lsn(e2)}"
        # Random access (no previous record) only requires prev < lsn.
        r2 = WalReader.from_dir(d, SEG, 1, e2)
        assert r2.read_record() is not None
        w = new_writer(d, start=e2, prev=s2)
        w.insert(100, 0, 9, b"bad rmgr")
        w.close()
        recs, r = read_all(d)
        assert r.error == f"invalid resource manager ID 100 at {format_lsn(e2)}"


@pytest.mark.timeout(30)
def test_page_header_checks() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"x")
        w.switch()
        w.insert(C.RM_KV_ID, C.KV_PUT, 2, b"y")
        w.close()
        seg2 = open(seg_path(d, 2), "rb").read()
        # A stale (recycled) file: segment 1's bytes under segment 2's name.
        with open(seg_path(d, 2), "wb") as f:
            f.write(open(seg_path(d, 1), "rb").read())
        recs, r = read_all(d)
        assert len(recs) == 2
        assert r.error == "unexpected pageaddr 0/100000 in log segment 000000010000000000000002, offset 0"
        with open(seg_path(d, 2), "wb") as f:
            f.write(seg2)
        recs, r = read_all(d, expected_sysid=SYSID + 1)
        assert recs == [] and r.error == (
            "WAL file is from different database system: WAL file database system identifier is "
            f"{SYSID}, pg_control database system identifier is {SYSID + 1}")
        assert len(read_all(d, expected_sysid=SYSID)[0]) == 3
        # Reading 1 MB segments as if they were 2 MB.
        r = WalReader(lambda tli, segno: seg2 if segno == 0 else None, 2 * MB, 1, 0)
        assert r.read_record() is None
        assert r.error == "WAL file is from different database system: incorrect segment size in page header"
        # Bad magic, bad info bits, missing long header.
        patch(seg_path(d, 2), 0, struct.pack("<H", 0xD10D))
        assert read_all(d)[1].error == "invalid magic number D10D in log segment 000000010000000000000002, offset 0"
        patch(seg_path(d, 2), 0, struct.pack("<HH", C.XLOG_PAGE_MAGIC, 0x0106))
        assert read_all(d)[1].error == "invalid info bits 0106 in log segment 000000010000000000000002, offset 0"
        patch(seg_path(d, 2), 0, struct.pack("<HH", C.XLOG_PAGE_MAGIC, 0x0004))
        assert read_all(d)[1].error == "invalid info bits 0004 in log segment 000000010000000000000002, offset 0"


@pytest.mark.timeout(30)
def test_timeline_going_backwards_between_pages() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d, tli=3)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, bytes(20000))
        w.close()
        patch(seg_path(d, 1, tli=3), XLOG_BLCKSZ + 4, struct.pack("<I", 2))
        recs, r = read_all(d, tli=3)
        assert r.error == "out-of-sequence timeline ID 2 (after 3) in log segment 000000030000000000000001, offset 8192"


@pytest.mark.timeout(30)
def test_broken_continuation() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        s1, _ = w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"x")
        s2, e2 = w.insert(C.RM_KV_ID, C.KV_PUT, 2, bytes(20000))
        w.close()
        path = seg_path(d, 1)
        good = open(path, "rb").read()
        # Continuation page lost (never written): zeros.
        patch(path, XLOG_BLCKSZ, bytes(XLOG_BLCKSZ))
        recs, r = read_all(d)
        assert [x.lsn for x in recs] == [s1]
        assert r.error == "invalid magic number 0000 in log segment 000000010000000000000001, offset 8192"
        assert r.aborted_record_lsn == s2 and r.missing_contrecord_lsn == START + XLOG_BLCKSZ
        assert r.end_of_valid_wal == s2
        # A page that does not continue the record.
        patch(path, 0, good)
        patch(path, XLOG_BLCKSZ + 2, struct.pack("<H", C.XLP_BKP_REMOVABLE))
        assert read_all(d)[1].error == f"there is no contrecord flag at {format_lsn(s2)}"
        patch(path, 0, good)
        patch(path, XLOG_BLCKSZ + 16, struct.pack("<I", 5))
        tot = 24 + 5 + 20000
        expected = tot - (XLOG_BLCKSZ - (s2 - START))
        assert read_all(d)[1].error == f"invalid contrecord length 5 (expected {expected}) at {format_lsn(s2)}"
        # Starting to read at a page that begins with continuation data.
        patch(path, 0, good)
        r = WalReader.from_dir(d, SEG, 1, START + XLOG_BLCKSZ)
        assert r.read_record() is None
        assert r.error == f"contrecord is requested by {format_lsn(START + XLOG_BLCKSZ + 24)}"
        r = WalReader.from_dir(d, SEG, 1, START + 0x20)
        assert r.read_record() is None and r.error == "invalid record offset at 0/100020"


@pytest.mark.timeout(30)
def test_overwrite_contrecord_after_lost_continuation() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        s1, _ = w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"first")
        s2, _ = w.insert(C.RM_KV_ID, C.KV_PUT, 2, bytes(3 * XLOG_BLCKSZ))
        w.close()
        patch(seg_path(d, 1), XLOG_BLCKSZ, bytes(3 * XLOG_BLCKSZ))  # the continuation never made it
        _, r = read_all(d)
        assert r.aborted_record_lsn == s2
        # As PG after crash recovery: new WAL begins where the continuation was missing.
        w2 = new_writer(d, start=r.missing_contrecord_lsn, prev=r.last_record_lsn)
        so, _ = w2.insert_overwrite_contrecord(r.aborted_record_lsn, overwrite_time=123)
        s3, _ = w2.insert(C.RM_KV_ID, C.KV_PUT, 3, b"after")
        w2.close()
        assert page_header(seg_path(d, 1), XLOG_BLCKSZ)[1] == C.XLP_BKP_REMOVABLE | C.XLP_FIRST_IS_OVERWRITE_CONTRECORD
        recs, r = read_all(d)
        assert [x.lsn for x in recs] == [s1, so, s3]
        assert decode_payload(recs[1]) == OverwriteContrecord(s2, 123) and recs[1].prev == s1
        assert r.overwritten_lsn == s2
        # The first part of the aborted record is still there, untouched.
        data = open(seg_path(d, 1), "rb").read()
        assert struct.unpack_from("<I", data, s2 - START)[0] == 24 + 5 + 3 * XLOG_BLCKSZ


# --- following WAL as it arrives, finding records, timelines ---------------------------

@pytest.mark.timeout(60)
def test_reader_waits_for_data_then_continues() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        starts = [w.insert(C.RM_KV_ID, C.KV_PUT, i, payload(i, random.Random(i).choice([10, 5000, 20000])))[0]
                  for i in range(400)]
        w.close()
        files = {n: open(seg_path(d, n), "rb").read() for n in range(1, w.insert_lsn // SEG + 1)}
        visible = [START]

        def opener(tli: int, segno: int) -> bytes | None:
            data = files.get(segno)
            if data is None or visible[0] <= segno * SEG:
                return None
            return data[:visible[0] - segno * SEG]  # a segment still being written

        r = WalReader(opener, SEG, 1, START)
        got = []
        step = random.Random(7)
        while visible[0] < w.insert_lsn:
            visible[0] = min(w.insert_lsn, visible[0] + step.randint(1, 30000))
            got.extend(x.lsn for x in drain(r))
            assert r.error is None and r.waiting_for is not None
        assert got == starts
        # The same with read_upto over complete files.
        r = WalReader.from_dir(d, SEG, 1, START, read_upto=starts[1] + 23)
        assert r.read_record() is not None and r.read_record() is None and r.error is None
        assert r.waiting_for == starts[1] + 24  # a whole record header is needed
        r.read_upto = None
        assert len(list(r)) == 399


@pytest.mark.timeout(60)
def test_reader_follows_a_preallocated_file_up_to_read_upto() -> None:
    """As a standby's startup behind its walreceiver: full-size files, filled as WAL arrives."""
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        rnd = random.Random(11)
        starts = [w.insert(C.RM_KV_ID, C.KV_PUT, i, payload(i, rnd.choice([10, 300, 9000, 40000])))[0]
                  for i in range(300)]
        w.close()
        final = {n: open(seg_path(d, n), "rb").read() for n in range(1, w.insert_lsn // SEG + 1)}
        disk = {n: bytearray(SEG) for n in final}  # zero-filled, as XLogFileInit leaves them
        flushed = START
        loads = []

        def opener(tli: int, segno: int) -> bytes | None:
            if segno not in disk or flushed <= segno * SEG:
                return None
            loads.append(segno)
            return bytes(disk[segno])

        r = WalReader(opener, SEG, 1, START, read_upto=flushed)
        got = []
        while flushed < w.insert_lsn:
            new = min(w.insert_lsn, flushed + rnd.randint(100, 50000))
            pos = flushed
            while pos < new:  # the walreceiver writes, then publishes its flush LSN
                segno = pos // SEG
                end = min(new, (segno + 1) * SEG)
                disk[segno][pos % SEG:end - segno * SEG] = final[segno][pos % SEG:end - segno * SEG]
                pos = end
            flushed = new
            r.read_upto = flushed
            got.extend(x.lsn for x in drain(r))
            assert r.error is None, r.error
        assert got == starts
        assert len(loads) < 3 * len(got)  # segments are re-read when more WAL arrived, not per record


@pytest.mark.timeout(60)
def test_find_first_record_skips_continuation() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"a")
        w.insert(C.RM_KV_ID, C.KV_PUT, 2, bytes(2_500_000))  # covers segment 2 entirely
        s3, _ = w.insert(C.RM_KV_ID, C.KV_PUT, 3, b"c")
        s4, _ = w.insert(C.RM_KV_ID, C.KV_PUT, 4, b"d")
        w.close()
        for start in (2 * SEG, 3 * SEG, 2 * SEG + 12345):
            lsn, r = find_first_record(lambda tli, segno: open(seg_path(d, segno), "rb").read()
                                       if os.path.exists(seg_path(d, segno)) else None, SEG, 1, start)
            assert lsn == s3
            assert [x.lsn for x in r] == [s3, s4]
        r = WalReader.from_dir(d, SEG, 1, START)
        assert r.find_first_record(s3 + 8) == s4 and r.read_record().lsn == s4


@pytest.mark.timeout(60)
def test_timeline_switch_mid_segment() -> None:
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        w.insert(C.RM_KV_ID, C.KV_PUT, 1, b"on tli 1")
        s_last, switchpoint = w.insert(C.RM_KV_ID, C.KV_PUT, 2, bytes(10000))
        w.insert(C.RM_KV_ID, C.KV_PUT, 3, b"only on tli 1")  # not part of timeline 2
        w.close()
        # Promotion: timeline 2's segment begins as a copy up to the switch point.
        copy_segment_prefix(d, 1, 2, 1, switchpoint, SEG)
        w2 = new_writer(d, start=switchpoint, prev=s_last, tli=2)
        eor, _ = w2.insert(*end_of_recovery_record(EndOfRecovery(0, 2, 1)))
        w2.insert(C.RM_KV_ID, C.KV_PUT, 4, b"on tli 2")
        w2.close()
        r = WalReader.from_dir(d, SEG, 1, START)
        assert r.read_record().xid == 1 and r.read_record().lsn == s_last
        r.tli = 2  # the history says timeline 2 starts here
        rest = list(r)
        assert [x.lsn for x in rest] == [eor, rest[1].lsn] and rest[1].main_data == b"on tli 2"
        assert r.error == expected_end_error(w2.insert_lsn)


# --- read_records (replay's batched path) against read_record ---------------------

def reader_state(r: WalReader) -> tuple:
    return (r.error, r.error_lsn, r.waiting_for, r.end_of_valid_wal, r.last_record_lsn, r.next_lsn)


DAMAGE = st.one_of(st.none(), st.tuples(st.just("flip"), st.integers(0, 2 * SEG - 1)),
                   st.tuples(st.just("cut"), st.integers(0, 2 * SEG - 1)))


@pytest.mark.timeout(180)
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(0, 300), st.integers(0, 9000), st.sampled_from(["switch"])),
                      min_size=1, max_size=400),
       damage=DAMAGE, limits=st.lists(st.integers(1, 300), min_size=1, max_size=5),
       upto_at=st.one_of(st.none(), st.floats(0, 1)))
def test_read_records_same_as_read_record(sizes: list, damage, limits: list, upto_at: float | None) -> None:
    """Same records, same stop, same error and positions; damage anywhere (a flipped byte, a torn tail)."""
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        for i, n in enumerate(sizes):
            if n == "switch":
                w.switch()
            else:
                w.insert(C.RM_KV_ID if i % 3 else C.RM_XACT_ID, C.KV_PUT if i % 3 else C.XLOG_XACT_COMMIT, i,
                         payload(i, n))
        w.close()
        # read_upto anywhere in the WAL written (mid-record too, over complete files).
        upto = None if upto_at is None else START + int(upto_at * (w.insert_lsn - START))
        if damage is not None:
            kind, off = damage
            segno = 1 + off // SEG
            path = seg_path(d, segno)
            if os.path.exists(path):
                if kind == "flip":
                    with open(path, "r+b") as f:
                        f.seek(off % SEG)
                        b = f.read(1)
                        f.seek(off % SEG)
                        f.write(bytes([(b[0] ^ 0x5A) if b else 1]))
                else:
                    patch(path, off % SEG, bytes(SEG - off % SEG))

        one = WalReader.from_dir(d, SEG, 1, START, expected_sysid=SYSID, read_upto=upto)
        want = list(one)
        batched = WalReader.from_dir(d, SEG, 1, START, expected_sysid=SYSID, read_upto=upto)
        got: list = []
        k = 0
        while True:
            recs = batched.read_records(limits[k % len(limits)])
            k += 1
            assert len(recs) <= limits[(k - 1) % len(limits)]
            if not recs:
                break
            got.extend(recs)
        assert got == want
        assert reader_state(batched) == reader_state(one)
        # Both go on the same way once more WAL may be there (here: the limit lifted).
        if upto is not None:
            one.read_upto = batched.read_upto = None
            rest = list(one)
            more: list = []
            while recs := batched.read_records(limits[0]):
                more.extend(recs)
            assert more == rest and reader_state(batched) == reader_state(one)


@pytest.mark.timeout(60)
def test_read_records_follows_timeline_change_and_begin_read() -> None:
    """Changing tli or calling begin_read between batches is honoured (no stale fast path)."""
    with tempfile.TemporaryDirectory() as d:
        w = new_writer(d)
        starts = [w.insert(C.RM_KV_ID, C.KV_PUT, i, payload(i, 100))[0] for i in range(50)]
        w.close()
        r = WalReader.from_dir(d, SEG, 1, START)
        first = r.read_records(10)
        assert [x.lsn for x in first] == starts[:10]
        r.tli = 2            # no segment on timeline 2: nothing more, and no error
        assert r.read_records(10) == [] and r.error is None
        r.tli = 1
        assert [x.lsn for x in r.read_records(5)] == starts[10:15]
        r.begin_read(starts[3])
        assert [x.lsn for x in r.read_records(3)] == starts[3:6]

