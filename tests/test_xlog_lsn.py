"""LSN text form, segment and history file names, page arithmetic."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from xlog.lsn import (DEFAULT_SEGSIZE, XLOG_BLCKSZ, advance, format_lsn, history_file_name,
                      is_history_file_name, is_segment_name, maxalign, parse_lsn, parse_segment_name,
                      segment_name, segment_start, segno_of, skip_page_header, valid_segsize)

MB = 1024 * 1024
SEGSIZES = st.sampled_from([MB, 2 * MB, 16 * MB, 64 * MB, 1024 * MB])


@pytest.mark.timeout(10)
def test_format_lsn_examples() -> None:
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert format_lsn(0) == "0/0"
    assert format_lsn(0x12001A80C500180B) == "12001A80/C500180B"
    assert format_lsn(0x0000000100000000) == "1/0"


@pytest.mark.timeout(10)
def test_parse_lsn_examples_and_errors() -> None:
    assert parse_lsn("0/16B3748") == 0x16B3748
    assert parse_lsn("0/16b3748") == 0x16B3748
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == 2**64 - 1
    for bad in ["", "0", "0/", "/0", "123456789/0", "0/0/0", "x/1", "0x1/2", " / "]:
        with pytest.raises(ValueError, match="invalid input syntax for type pg_lsn"):
            parse_lsn(bad)


@pytest.mark.timeout(30)
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lsn_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


@pytest.mark.timeout(10)
def test_segment_name_examples() -> None:
    assert segment_name(1, 1, DEFAULT_SEGSIZE) == "000000010000000000000001"
    assert segment_name(1, 0x100, DEFAULT_SEGSIZE) == "000000010000000100000000"
    assert segment_name(2, 0x80, MB) == "000000020000000000000080"
    assert segment_name(1, 4096, MB) == "000000010000000100000000"
    assert segment_name(1, 4097, MB) == "000000010000000100000001"
    assert segno_of(0x3000148, DEFAULT_SEGSIZE) == 3
    assert segment_start(3, DEFAULT_SEGSIZE) == 0x3000000
    assert history_file_name(2) == "00000002.history"
    assert is_history_file_name("00000002.history") and not is_history_file_name("2.history")


@pytest.mark.timeout(30)
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**40), SEGSIZES)
def test_segment_name_round_trip(tli: int, segno: int, segsize: int) -> None:
    segno %= (2**64) // segsize
    name = segment_name(tli, segno, segsize)
    assert len(name) == 24 and is_segment_name(name)
    assert parse_segment_name(name, segsize) == (tli, segno)


@pytest.mark.timeout(10)
def test_parse_segment_name_errors() -> None:
    for bad in ["00000001000000000000001", "00000001000000000000000g", "000000010000000000000001.partial",
                "000000010000000000000a01"]:
        assert not is_segment_name(bad)
        with pytest.raises(ValueError):
            parse_segment_name(bad, MB)
    # With 1 MB segments there are only 4096 segments per xlogid.
    with pytest.raises(ValueError):
        parse_segment_name("000000010000000000001000", MB)
    assert parse_segment_name("000000010000000000000FFF", MB) == (1, 0xFFF)
    assert parse_segment_name("000000010000000100000000", MB) == (1, 0x1000)


@pytest.mark.timeout(10)
def test_valid_segsize() -> None:
    assert valid_segsize(MB) and valid_segsize(16 * MB) and valid_segsize(1024 * MB)
    assert not valid_segsize(MB // 2) and not valid_segsize(3 * MB) and not valid_segsize(2048 * MB)
    assert not valid_segsize(0)
    with pytest.raises(ValueError):
        segment_name(1, 1, 3 * MB)


@pytest.mark.timeout(10)
def test_page_arithmetic() -> None:
    seg = 16 * MB
    assert skip_page_header(0x1000000, seg) == 0x1000028  # long header on a segment's first page
    assert skip_page_header(0x1002000, seg) == 0x1002018  # short header elsewhere
    assert skip_page_header(0x1002010, seg) == 0x1002010
    # 114-byte checkpoint record at the start of a segment.
    assert advance(0x1000000, 114, seg) == 0x1000028 + 114
    # Exactly filling the first page ends on the boundary.
    assert advance(0x1000028, XLOG_BLCKSZ - 40, seg) == 0x1002000
    # One more byte goes past the next page's short header.
    assert advance(0x1000028, XLOG_BLCKSZ - 40 + 1, seg) == 0x1002000 + 24 + 1
    # Crossing into the next segment passes a long header.
    assert advance(seg - 8, 16, seg) == seg + 40 + 8
    assert maxalign(1) == 8 and maxalign(8) == 8 and maxalign(0) == 0
