"""Record building and decoding (PG15's DecodeXLogRecord), CRC, payload codecs."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from xlog import constants as C
from xlog.errors import WalError
from xlog.lsn import format_lsn
from xlog.record import (CheckPoint, EndOfRecovery, KvDelete, KvPut, OverwriteContrecord, XactAbort,
                         XactCommit, build_record, commit_record, decode_payload, decode_record,
                         kv_put_record, record_crc, timestamptz_from_unix, timestamptz_to_unix)

LSN = 0x3000060


@pytest.mark.timeout(10)
def test_record_layout() -> None:
    cp = CheckPoint(redo=0x1000028, this_tli=1, prev_tli=1)
    rec = build_record(C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN, 0, 0, cp.pack())
    assert len(rec) == 114  # as pg_waldump shows for checkpoints: 24 + 2 + 88
    tot, xid, prev, info, rmid, crc = C.XLOG_RECORD_STRUCT.unpack_from(rec)
    assert (tot, xid, prev, info, rmid) == (114, 0, 0, 0, 0)
    assert rec[18:20] == b"\0\0"  # padding
    assert rec[24] == C.XLR_BLOCK_ID_DATA_SHORT and rec[25] == 88
    assert crc == record_crc(rec)
    # No main data: header only (XLOG_SWITCH is 24 bytes).
    assert len(build_record(C.RM_XLOG_ID, C.XLOG_SWITCH, 0, 5, b"")) == 24
    # 256 bytes need the long fragment header.
    long_rec = build_record(C.RM_KV_ID, C.KV_PUT, 9, 5, bytes(256))
    assert long_rec[24] == C.XLR_BLOCK_ID_DATA_LONG
    assert struct.unpack_from("<I", long_rec, 25)[0] == 256 and len(long_rec) == 24 + 5 + 256


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(rmid=st.sampled_from([0, 1, 10, 128, 200, 255]), info=st.integers(0, 255),
       xid=st.integers(0, 2**32 - 1), prev=st.integers(0, LSN - 1),
       data=st.one_of(st.binary(max_size=600), st.integers(0, 70000).map(lambda n: bytes([n % 251]) * n)))
def test_build_decode_round_trip(rmid: int, info: int, xid: int, prev: int, data: bytes) -> None:
    rec = build_record(rmid, info, xid, prev, data)
    d = decode_record(rec, LSN)
    assert (d.rmid, d.info, d.xid, d.prev, d.main_data, d.tot_len) == (rmid, info, xid, prev, data, len(rec))
    assert d.lsn == LSN and not d.blocks and d.fpi_len == 0 and d.rec_len == d.tot_len
    assert d.next_lsn % 8 == 0 and d.next_lsn >= d.end_lsn > d.lsn


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=300), where=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected(data: bytes, where: int, bit: int) -> None:
    rec = bytearray(build_record(C.RM_KV_ID, C.KV_PUT, 7, 0x100, data))
    pos = where % len(rec)
    if 20 <= pos < 24 or pos >= 4:
        rec[pos] ^= 1 << bit
        with pytest.raises(WalError) as ei:
            decode_record(bytes(rec), LSN)
        msg = str(ei.value)
        if pos == 17:  # xl_rmid: maybe an invalid one, caught first
            assert msg.startswith(("invalid resource manager ID", "incorrect resource manager data checksum"))
        else:
            assert msg == f"incorrect resource manager data checksum in record at {format_lsn(LSN)}"


@pytest.mark.timeout(10)
def test_header_errors() -> None:
    with pytest.raises(WalError, match=r"^invalid record length at 0/3000060: wanted 24, got 0$"):
        decode_record(bytes(24), LSN)
    rec = build_record(100, 0, 0, 0, b"x")  # 22..127 are neither builtin nor custom
    with pytest.raises(WalError, match=r"^invalid resource manager ID 100 at 0/3000060$"):
        decode_record(rec, LSN)
    assert decode_record(build_record(200, 0, 0, 0, b"x"), LSN).rmid == 200  # custom range: valid in PG15


# --- records with block references, built by hand as XLogRecordAssemble would ---------

def _assemble(fragments: bytes, payload: bytes, main: bytes = b"", rmid: int = C.RM_HEAP_ID) -> bytes:
    if main:
        fragments += bytes([C.XLR_BLOCK_ID_DATA_SHORT, len(main)])
    body = fragments + payload + main
    tot = 24 + len(body)
    pre = struct.pack("<IIQBB2x", tot, 42, 0x3000028, 0x00, rmid)
    rec = pre + b"\0\0\0\0" + body
    return pre + struct.pack("<I", record_crc(rec)) + body


def _blk(block_id: int, fork_flags: int, data_len: int, image: bytes = b"", rel: tuple | None = None,
         blkno: int = 0) -> bytes:
    out = struct.pack("<BBH", block_id, fork_flags, data_len) + image
    if rel is not None:
        out += struct.pack("<III", *rel)
    return out + struct.pack("<I", blkno)


@pytest.mark.timeout(10)
def test_block_refs_fpi_hole_compression_same_rel_origin_toplevel() -> None:
    rel = (1663, 5, 16384)
    hole = 1000
    img0 = struct.pack("<HHB", C.BLCKSZ - hole, 200, C.BKPIMAGE_HAS_HOLE | C.BKPIMAGE_APPLY)
    f0 = _blk(0, C.BKPBLOCK_HAS_IMAGE | C.BKPBLOCK_HAS_DATA, 10, img0, rel, blkno=7)
    # Compressed with a hole: the hole length follows the image header.
    img1 = struct.pack("<HHB", 300, 64, C.BKPIMAGE_HAS_HOLE | C.BKPIMAGE_COMPRESS_LZ4) + struct.pack("<H", 4000)
    f1 = _blk(1, C.BKPBLOCK_HAS_IMAGE | C.BKPBLOCK_SAME_REL | 1, 0, img1, None, blkno=9)
    # Compressed, no hole.
    img2 = struct.pack("<HHB", 500, 0, C.BKPIMAGE_COMPRESS_ZSTD | C.BKPIMAGE_APPLY)
    f2 = _blk(3, C.BKPBLOCK_HAS_IMAGE | C.BKPBLOCK_WILL_INIT, 0, img2, (1663, 5, 99), blkno=1)
    frags = (bytes([C.XLR_BLOCK_ID_ORIGIN]) + struct.pack("<H", 7) + f0 + f1 + f2
             + bytes([C.XLR_BLOCK_ID_TOPLEVEL_XID]) + struct.pack("<I", 4242))
    payload = bytes(C.BLCKSZ - hole) + bytes(10) + bytes(300) + bytes(500)
    rec = _assemble(frags, payload, main=b"main-data")
    d = decode_record(rec, LSN)
    assert d.main_data == b"main-data" and d.origin == 7 and d.toplevel_xid == 4242
    assert [b.block_id for b in d.blocks] == [0, 1, 3]
    b0, b1, b2 = d.blocks
    assert (b0.spc_node, b0.db_node, b0.rel_node, b0.forknum, b0.blkno) == (*rel, 0, 7)
    assert b0.has_image and b0.apply_image and b0.image_len == C.BLCKSZ - hole and b0.hole_length == hole
    assert b0.data_len == 10 and b0.hole_offset == 200
    assert (b1.spc_node, b1.db_node, b1.rel_node, b1.forknum, b1.blkno) == (*rel, 1, 9)  # SAME_REL
    assert b1.compressed and b1.hole_length == 4000 and b1.image_len == 300 and not b1.apply_image
    assert b2.rel_node == 99 and b2.hole_length == 0 and b2.compressed
    assert d.fpi_len == (C.BLCKSZ - hole) + 300 + 500
    assert d.rec_len == d.tot_len - d.fpi_len


@pytest.mark.timeout(10)
def test_block_ref_errors() -> None:
    rel = (1663, 5, 1)

    def err(frags: bytes, payload: bytes = b"") -> str:
        with pytest.raises(WalError) as ei:
            decode_record(_assemble(frags, payload), LSN)
        return str(ei.value)

    at = format_lsn(LSN)
    assert err(_blk(1, 0, 0, b"", rel) + _blk(1, 0, 0, b"", rel)) == f"out-of-order block_id 1 at {at}"
    assert err(_blk(0, C.BKPBLOCK_HAS_DATA, 0, b"", rel)) == f"BKPBLOCK_HAS_DATA set, but no data included at {at}"
    assert err(_blk(0, 0, 5, b"", rel), bytes(5)) == f"BKPBLOCK_HAS_DATA not set, but data length is 5 at {at}"
    assert err(_blk(0, C.BKPBLOCK_SAME_REL, 0)) == f"BKPBLOCK_SAME_REL set but no previous rel at {at}"
    assert err(bytes([40])) == f"invalid block_id 40 at {at}"
    img = struct.pack("<HHB", C.BLCKSZ - 100, 0, C.BKPIMAGE_HAS_HOLE)
    assert err(_blk(0, C.BKPBLOCK_HAS_IMAGE, 0, img, rel), bytes(C.BLCKSZ - 100)) == (
        f"BKPIMAGE_HAS_HOLE set, but hole offset 0 length 100 block image length {C.BLCKSZ - 100} at {at}")
    img = struct.pack("<HHB", C.BLCKSZ, 0, C.BKPIMAGE_COMPRESS_PGLZ)
    assert err(_blk(0, C.BKPBLOCK_HAS_IMAGE, 0, img, rel), bytes(C.BLCKSZ)) == (
        f"BKPIMAGE_COMPRESSED set, but block image length {C.BLCKSZ} at {at}")
    # Uncompressed and no hole flag but short: PG's implied hole length trips the no-hole check first.
    img = struct.pack("<HHB", 100, 0, 0)
    assert err(_blk(0, C.BKPBLOCK_HAS_IMAGE, 0, img, rel), bytes(100)) == (
        f"BKPIMAGE_HAS_HOLE not set, but hole offset 0 length {C.BLCKSZ - 100} at {at}")
    img = struct.pack("<HHB", 100, 5, C.BKPIMAGE_COMPRESS_LZ4)
    assert err(_blk(0, C.BKPBLOCK_HAS_IMAGE, 0, img, rel), bytes(100)) == (
        f"BKPIMAGE_HAS_HOLE not set, but hole offset 5 length 0 at {at}")
    # Payload shorter or longer than the headers announce.
    assert err(_blk(0, C.BKPBLOCK_HAS_DATA, 10, b"", rel), bytes(9)) == f"record with invalid length at {at}"
    # An extra byte is read as one more fragment header, as PG's loop does.
    assert err(_blk(0, C.BKPBLOCK_HAS_DATA, 10, b"", rel), bytes(11)) == f"out-of-order block_id 0 at {at}"
    assert err(struct.pack("<BBH", 0, 0, 0)) == f"record with invalid length at {at}"  # cut inside header


@pytest.mark.timeout(10)
def test_checkpoint_layout_matches_pg15() -> None:
    cp = CheckPoint(redo=0x1000028, this_tli=3, prev_tli=2, full_page_writes=True, next_xid=(1 << 32) | 729,
                    next_oid=16392, next_multi=5, next_multi_offset=6, oldest_xid=716, oldest_xid_db=1,
                    oldest_multi=7, oldest_multi_db=8, time=1700000000, oldest_commit_ts_xid=9,
                    newest_commit_ts_xid=10, oldest_active_xid=11)
    b = cp.pack()
    assert len(b) == 88 == CheckPoint.SIZE
    assert struct.unpack_from("<Q", b, 0)[0] == 0x1000028
    assert struct.unpack_from("<II", b, 8) == (3, 2)
    assert b[16] == 1 and b[17:24] == bytes(7)
    assert struct.unpack_from("<Q", b, 24)[0] == (1 << 32) | 729  # FullTransactionId, 8-aligned
    assert struct.unpack_from("<7I", b, 32) == (16392, 5, 6, 716, 1, 7, 8)
    assert struct.unpack_from("<q", b, 64)[0] == 1700000000  # pg_time_t, 8-aligned
    assert struct.unpack_from("<3I", b, 72) == (9, 10, 11)
    assert CheckPoint.unpack(b) == cp
    assert cp.next_xid_epoch == 1 and cp.next_xid32 == 729


@pytest.mark.timeout(10)
def test_payload_codecs() -> None:
    eor = EndOfRecovery(end_time=123456789, this_tli=2, prev_tli=1)
    assert len(eor.pack()) == 16 and EndOfRecovery.unpack(eor.pack()) == eor
    assert XactCommit.unpack(XactCommit(5).pack()) == XactCommit(5) and len(XactCommit(5).pack()) == 8
    assert XactAbort.unpack(XactAbort(-5).pack()) == XactAbort(-5)
    assert OverwriteContrecord.unpack(OverwriteContrecord(0x100, 7).pack()) == OverwriteContrecord(0x100, 7)
    for key, value in [("k", "v"), ("ключ", "значение ✓"), ("", ""), ("k", None), ("big", "x" * 3_000_000)]:
        assert KvPut.unpack(KvPut(key, value).pack()) == KvPut(key, value)
    assert KvDelete.unpack(KvDelete("ключ").pack()) == KvDelete("ключ")
    with pytest.raises(WalError):
        KvPut.unpack(KvPut("k", "v").pack()[:-1])
    with pytest.raises(WalError):
        KvDelete.unpack(b"\x05\0\0\0ab")
    t = 1_764_000_000.25
    assert abs(timestamptz_to_unix(timestamptz_from_unix(t)) - t) < 1e-6


@pytest.mark.timeout(10)
def test_decode_payload_dispatch() -> None:
    d = decode_record(build_record(*kv_put_record(9, "a", "b")[:3], 0, kv_put_record(9, "a", "b")[3]), LSN)
    assert decode_payload(d) == KvPut("a", "b")
    rmid, info, xid, data = commit_record(9, xact_time=77)
    d = decode_record(build_record(rmid, info, xid, 0, data), LSN)
    assert decode_payload(d) == XactCommit(77)
    # A real PG commit record with XLOG_XACT_HAS_INFO still yields its time.
    d = decode_record(build_record(C.RM_XACT_ID, C.XLOG_XACT_COMMIT | C.XLOG_XACT_HAS_INFO, 9, 0,
                                   struct.pack("<qI", 78, 0)), LSN)
    assert decode_payload(d) == XactCommit(78)
    assert decode_payload(decode_record(build_record(C.RM_HEAP_ID, 0, 1, 0, b"x"), LSN)) is None
