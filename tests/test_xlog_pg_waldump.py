"""PostgreSQL 15's pg_waldump reads the WAL our WalWriter writes, record for record."""
from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.test_xlog_support import (PG_WALDUMP, as_postgres, can_run_pg, make_readable, parse_dump, run_our_waldump, run_pg_waldump,
                                     shared_tmpdir)
from xlog.lsn import XLOG_BLCKSZ, segment_name
from xlog.reader import WalReader
from xlog.record import (CheckPoint, EndOfRecovery, abort_record, checkpoint_record, commit_record,
                         end_of_recovery_record, kv_delete_record, kv_put_record, timestamptz_now)
from xlog.writer import WalWriter

MB = 1024 * 1024
SEG = MB

pytestmark = pytest.mark.skipif(can_run_pg() is not None, reason=f"cannot run PostgreSQL 15: {can_run_pg()}")


@pytest.fixture
def wal_dir():
    d = shared_tmpdir("walswitch-xlog-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _workload(w: WalWriter, rnd: random.Random) -> None:
    w.insert(*checkpoint_record(CheckPoint(w.next_record_lsn, 1, 1, time=1764000000), shutdown=True))
    xid = 1000
    sizes = [0, 1, 7, 100, 255, 256, 1000, 8000, 8200, 20_000, 20_000, 70_000]
    for i in range(1500):
        xid += 1
        for _ in range(rnd.randint(1, 3)):
            w.insert(*kv_put_record(xid, f"key{rnd.randint(0, 500)}", "v" * rnd.choice(sizes)))
        if rnd.random() < 0.2:
            w.insert(*kv_delete_record(xid, f"key{rnd.randint(0, 500)}"))
        w.insert(*(commit_record(xid) if rnd.random() < 0.8 else abort_record(xid)))
        if i == 300:
            xid += 1
            w.insert(*kv_put_record(xid, "three-mb", "B" * 3_000_000))  # spans 3+ segments
            w.insert(*commit_record(xid))
        if i == 700:
            w.switch()
            w.insert(*checkpoint_record(CheckPoint(w.next_record_lsn, 1, 1), shutdown=False))
        if i == 900:
            # A record ending exactly at a page boundary, then one whose header straddles one.
            left = XLOG_BLCKSZ - w.insert_lsn % XLOG_BLCKSZ
            if left > 300:
                w.insert(*kv_put_record(xid, "k", "p" * (left - 24 - 5 - 8 - 1)))
                assert w.insert_lsn % XLOG_BLCKSZ == 0
        if i == 1200:
            w.insert(*end_of_recovery_record(EndOfRecovery(timestamptz_now(), 2, 1)))
    w.flush()


def _key(recs):  # what must agree between pg_waldump and us
    return [(r.lsn, r.rmgr, r.tot_len, r.rec_len, r.xid, r.prev) for r in recs]


@pytest.mark.timeout(120)
def test_pg_waldump_reads_our_segments(wal_dir: str) -> None:
    done: list[int] = []
    w = WalWriter(wal_dir, 1, SEG, 7312345678901234567, SEG, 0, lambda segno, path: done.append(segno))
    _workload(w, random.Random(20251125))
    last_complete = w.flush_lsn // SEG - 1
    w.close()
    assert done == list(range(1, last_complete + 1)) and last_complete >= 5
    make_readable(wal_dir)
    first_name = segment_name(1, 1, SEG)
    last_name = segment_name(1, last_complete, SEG)
    pg = run_pg_waldump(wal_dir, first_name, last_name)
    assert pg.returncode == 0 and pg.stderr == "", pg.stderr
    theirs = parse_dump(pg.stdout)
    completed = [os.path.join(wal_dir, segment_name(1, s, SEG)) for s in range(1, last_complete + 1)]
    ours_p = run_our_waldump(completed)
    assert ours_p.returncode == 0 and ours_p.stderr == ""
    ours = parse_dump(ours_p.stdout)
    assert len(theirs) > 3000
    assert _key(ours) == _key(theirs)
    assert {r.rmgr for r in theirs} == {"XLOG", "Transaction", "custom128"}
    # For the built-in rmgrs we describe, whole lines are identical.
    ours_lines = [ln for ln in ours_p.stdout.splitlines() if not ln.startswith("rmgr: custom128")]
    their_lines = [ln for ln in pg.stdout.splitlines() if not ln.startswith("rmgr: custom128")]
    assert ours_lines == their_lines
    descs = {r.desc.split(" ")[0] for r in theirs if r.rmgr == "XLOG"}
    assert descs == {"CHECKPOINT_SHUTDOWN", "CHECKPOINT_ONLINE", "SWITCH", "END_OF_RECOVERY"}

    # Every completed segment on its own: pg_waldump finds the first record as we do.
    for segno in range(1, last_complete + 1):
        name = segment_name(1, segno, SEG)
        pg1 = run_pg_waldump(wal_dir, name)
        ours1 = run_our_waldump([os.path.join(wal_dir, name)])
        assert _key(parse_dump(ours1.stdout)) == _key(parse_dump(pg1.stdout)), name
        assert ours1.returncode == pg1.returncode, (pg1.stderr, ours1.stderr)
        if pg1.returncode:  # a segment holding only the middle of the 3 MB record
            assert "could not find a valid record after" in pg1.stderr
            assert ours1.stderr.endswith(pg1.stderr.split("error: ", 1)[1])

    # The partial last segment: both stop at the zeroed tail; pg_waldump says why, as our reader does.
    tail_name = segment_name(1, last_complete + 1, SEG)
    pg_tail = run_pg_waldump(wal_dir, tail_name)
    ours_tail = run_our_waldump([os.path.join(wal_dir, tail_name)])
    assert ours_tail.returncode == 0 and ours_tail.stderr == ""
    assert _key(parse_dump(ours_tail.stdout)) == _key(parse_dump(pg_tail.stdout))
    # Our reader over everything: the records of both runs (plus one crossing into the
    # tail segment, which neither run could finish), and the same final complaint.
    r = WalReader.from_dir(wal_dir, SEG, 1, SEG)
    all_lsns = [x.lsn for x in r]
    seen = [x.lsn for x in ours] + [x.lsn for x in parse_dump(ours_tail.stdout)]
    assert set(seen) <= set(all_lsns) and len(all_lsns) - len(seen) <= 1
    assert pg_tail.stderr.startswith("pg_waldump: error: error in WAL record at ")
    assert pg_tail.stderr.strip().endswith(r.error)


@pytest.mark.timeout(60)
def test_pg_waldump_accepts_overwrite_contrecord_and_new_timeline(wal_dir: str) -> None:
    w = WalWriter(wal_dir, 1, SEG, 1, SEG, 0)
    w.insert(*kv_put_record(5, "a", "first"))
    s2, _ = w.insert(*kv_put_record(6, "b", "x" * 30000))
    w.close()
    with open(os.path.join(wal_dir, segment_name(1, 1, SEG)), "r+b") as f:
        f.seek(XLOG_BLCKSZ)
        f.write(bytes(4 * XLOG_BLCKSZ))  # the continuation was lost in a crash
    r = WalReader.from_dir(wal_dir, SEG, 1, SEG)
    list(r)
    assert r.aborted_record_lsn == s2
    w2 = WalWriter(wal_dir, 1, SEG, 1, r.missing_contrecord_lsn, r.last_record_lsn)
    w2.insert_overwrite_contrecord(r.aborted_record_lsn)
    w2.insert(*kv_put_record(7, "c", "after"))
    w2.switch()
    w2.close()
    make_readable(wal_dir)
    pg = run_pg_waldump(wal_dir, segment_name(1, 1, SEG))
    assert pg.returncode == 0, pg.stderr
    theirs = parse_dump(pg.stdout)
    assert [d.desc.split(" ")[0] for d in theirs] == ["UNKNOWN", "OVERWRITE_CONTRECORD", "UNKNOWN", "SWITCH"]
    ours = parse_dump(run_our_waldump([os.path.join(wal_dir, segment_name(1, 1, SEG))]).stdout)
    assert _key(ours) == _key(theirs)
    assert [ln.desc for ln in ours][1] == theirs[1].desc  # "lsn 0/...; time ..."


def test_stats_tables_match_pg_waldump(wal_dir: str) -> None:
    """``--stats`` is pg_waldump's table byte for byte; ``--stats=record`` too, but for our KV types' names."""
    w = WalWriter(wal_dir, 1, SEG, 7312345678901234567, SEG, 0, lambda segno, path: None)
    _workload(w, random.Random(7))
    last_complete = w.flush_lsn // SEG - 1
    w.close()
    make_readable(wal_dir)
    names = [segment_name(1, s, SEG) for s in range(1, last_complete + 1)]
    for mode in ("--stats", "--stats=record"):
        pg = as_postgres([PG_WALDUMP, mode, "-p", wal_dir, names[0], names[-1]], timeout=60)
        ours = run_our_waldump([mode, *(os.path.join(wal_dir, n) for n in names)])
        assert pg.returncode == 0 and ours.returncode == 0, (pg.stderr, ours.stderr)
        assert ours.stdout.startswith("WAL statistics between ")
        if mode == "--stats":
            assert ours.stdout == pg.stdout
        else:
            # pg_waldump cannot name the types of a custom resource manager ("UNKNOWN (0)"); we can.
            mine, theirs = ours.stdout.splitlines(), pg.stdout.splitlines()
            assert [ln[27:] for ln in mine] == [ln[27:] for ln in theirs]
            assert [ln[:27] for ln in mine if "custom128/" not in ln] == \
                   [ln[:27] for ln in theirs if "custom128/" not in ln]
            assert {ln.split()[0] for ln in mine if "custom128/" in ln} <= \
                   {"custom128/KV_PUT", "custom128/KV_DELETE", "custom128/KV_ROLE"}
            assert len(mine) == len(theirs) > 6
