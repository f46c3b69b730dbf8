"""`walswitch waldump` (xlog.waldump) on WAL we write: layout, endings, errors."""
from __future__ import annotations

import os
import tempfile

import pytest

from tests.test_xlog_support import parse_dump, run_our_waldump
from xlog.lsn import format_lsn, segment_name
from xlog.record import (CheckPoint, EndOfRecovery, abort_record, checkpoint_record, commit_record,
                         end_of_recovery_record, kv_delete_record, kv_put_record)
from xlog.waldump import main
from xlog.writer import WalWriter

MB = 1024 * 1024


def _write(d: str) -> WalWriter:
    w = WalWriter(d, 1, MB, 42, MB, 0)
    w.insert(*checkpoint_record(CheckPoint(MB + 40, 1, 1, next_xid=729, next_oid=16392, oldest_xid=716,
                                           time=1764000000), shutdown=True))
    w.insert(*kv_put_record(730, "key", "v" * 300))
    w.insert(*kv_put_record(730, "nul\nl", None))
    w.insert(*kv_delete_record(730, "key"))
    w.insert(*commit_record(730, xact_time=817_000_000_000_000))
    w.insert(*abort_record(731, xact_time=817_000_000_000_000))
    w.insert(*kv_put_record(732, "big", "x" * 1_500_000))
    w.switch()
    w.insert(*end_of_recovery_record(EndOfRecovery(817_000_000_000_000, 2, 1)))
    w.close()
    return w


@pytest.mark.timeout(30)
def test_lines_in_pg_waldump_layout(capsys) -> None:
    with tempfile.TemporaryDirectory() as d:
        w = _write(d)
        assert main([d]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        lines = out.splitlines()
        assert lines[0] == (
            "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/00100028, prev 0/00000000, "
            "desc: CHECKPOINT_SHUTDOWN redo 0/100028; tli 1; prev tli 1; fpw true; xid 0:729; oid 16392; "
            "multi 1; offset 0; oldest xid 716 in DB 1; oldest multi 1 in DB 1; "
            "oldest/newest commit timestamp xid: 0/0; oldest running xid 0; shutdown")
        assert lines[1].startswith("rmgr: custom128   len (rec/tot):    340/   340, tx:        730, "
                                   "lsn: 0/001000A0, prev 0/00100028, desc: KV_PUT key \"key\"; value 300 bytes")
        assert 'KV_PUT key "nul\\x0al"; value NULL' in lines[2]
        assert lines[4].startswith("rmgr: Transaction len (rec/tot):     34/    34, tx:        730")
        assert "desc: COMMIT 2025-" in lines[4] and "desc: ABORT " in lines[5]
        assert "desc: SWITCH " in lines[7] and lines[7].endswith("desc: SWITCH ")
        assert "desc: END_OF_RECOVERY tli 2; prev tli 1; time 2025-" in lines[8]
        assert len(lines) == 9
        recs = parse_dump(out)
        assert recs[-1].lsn == 3 * MB + 40 and w.insert_lsn < 4 * MB


@pytest.mark.timeout(60)
def test_files_dir_endings_and_errors() -> None:
    with tempfile.TemporaryDirectory() as d:
        _write(d)
        files = sorted(os.path.join(d, n) for n in os.listdir(d))
        by_dir = run_our_waldump([d])
        by_files = run_our_waldump(files)
        assert by_dir.returncode == 0 and by_dir.stderr == ""
        assert by_dir.stdout == by_files.stdout
        # Only the first two files: reading ends quietly where the files end.
        part = run_our_waldump(files[:1])
        assert part.returncode == 0 and part.stderr == "" and len(parse_dump(part.stdout)) == 6
        # Damage in the middle is an error, in pg_waldump's words.
        recs = parse_dump(by_dir.stdout)
        victim = recs[3]
        with open(os.path.join(d, segment_name(1, 1, MB)), "r+b") as f:
            f.seek(victim.lsn - MB + 30)
            f.write(b"!")
        bad = run_our_waldump([d])
        assert bad.returncode == 1 and len(parse_dump(bad.stdout)) == 3
        assert bad.stderr == (f"pg_waldump: error: error in WAL record at {format_lsn(recs[2].lsn)}: "
                              f"incorrect resource manager data checksum in record at {format_lsn(victim.lsn)}\n")


@pytest.mark.timeout(30)
def test_bad_path_is_one_line() -> None:
    p = run_our_waldump(["/nonexistent/000000010000000000000001"])
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == ('walswitch waldump: error: could not open file "/nonexistent/000000010000000000000001": '
                        "No such file or directory\n")
    with tempfile.TemporaryDirectory() as d:
        p = run_our_waldump([d])
        assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.startswith("walswitch waldump: error:")
        junk = os.path.join(d, "000000010000000000000001")
        open(junk, "wb").write(bytes(100))
        p = run_our_waldump([junk])
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert "WAL segment size must be a power of two between 1 MB and 1 GB" in p.stderr
