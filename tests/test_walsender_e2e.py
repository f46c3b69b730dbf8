"""Walsender end to end: real ``walswitch start`` primaries (tests/cluster.py) and real clients."""
from __future__ import annotations

import select
import subprocess
import time
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest

from tests.cluster import pg_tool, wait_for
from xlog.control import read_control
from xlog.lsn import is_segment_name, parse_lsn, parse_segment_name, segment_name

SEG = 1024 * 1024


def load(node, n: int, switch_every: int = 0, width: int = 300) -> None:
    with node.connect() as c, c.cursor() as cur:
        for i in range(n):
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"key{i:06d}", "x" * width))
            if switch_every and i % switch_every == switch_every - 1:
                cur.execute("SELECT pg_switch_wal()")


@pytest.mark.timeout(120)
def test_pg_receivewal_under_load_gets_everything_up_to_shutdown(nodes, tmp_path):
    p = nodes.primary(wal_keep_size="256MB", wal_sender_timeout="30s")
    out = tmp_path / "recv"
    out.mkdir()
    recv = subprocess.Popen([pg_tool("pg_receivewal"), "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres",
                             "-D", str(out), "--no-loop", "-v", "-s", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(e.get("kind") == "walsender_streaming" for e in p.events()), 20,
                 "pg_receivewal streaming")
        load(p, 3000, switch_every=700)
        p.stop("fast")
        _, err = recv.communicate(timeout=60)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    # Controlled shutdown, as with PostgreSQL: the stream ends with CommandComplete.
    assert "replication stream was terminated before stop point" in err, err
    pg_wal = Path(p.datadir, "pg_wal")
    cf = read_control(p.datadir)
    assert cf.checkpoint_lsn > 2 * SEG
    last_seg = cf.checkpoint_lsn // SEG
    complete = sorted(f.name for f in out.iterdir() if not f.name.endswith(".partial"))
    assert complete, err
    for name in complete:
        assert (out / name).read_bytes() == (pg_wal / name).read_bytes(), name
    # The last (partial) segment holds everything up to and including the shutdown checkpoint.
    partial = out / (segment_name(1, last_seg, SEG) + ".partial")
    assert partial.read_bytes() == (pg_wal / segment_name(1, last_seg, SEG)).read_bytes()
    stop = p.events("walsender_stop")[-1]
    assert parse_lsn(stop["sent_lsn"]) > cf.checkpoint_lsn        # the shutdown checkpoint was sent


@pytest.mark.timeout(90)
def test_psycopg2_replication_against_primary(nodes):
    p = nodes.primary()
    load(p, 50)
    conn = psycopg2.connect(host="127.0.0.1", port=p.port, user="postgres", application_name="e2e",
                            connection_factory=psycopg2.extras.PhysicalReplicationConnection)
    try:
        cur = conn.cursor()
        cur.execute("IDENTIFY_SYSTEM")
        sysid, tli, xlogpos, _ = cur.fetchone()
        assert tli == 1 and int(sysid) == read_control(p.datadir).system_identifier
        cur.execute("SHOW wal_segment_size")
        assert cur.fetchone()[0] == "1MB"
        start = int(xlogpos.split("/")[0], 16) << 32 | int(xlogpos.split("/")[1], 16)
        cur.start_replication(start_lsn=start - start % SEG, timeline=1)
        load(p, 200)
        target = p.flush_lsn()
        got = start - start % SEG
        deadline = time.monotonic() + 30
        while got < target and time.monotonic() < deadline:
            m = cur.read_message()
            if m is None:
                select.select([cur], [], [], 0.5)
                continue
            assert m.data_start == got
            got += len(m.payload)
        assert got >= target
        cur.send_feedback(write_lsn=got, flush_lsn=got, apply_lsn=got, force=True)
        wait_for(lambda: _slot(p)["flush_lsn"] == got, 10, "the primary to see our feedback")
    finally:
        conn.close()


def _slot(node) -> dict:
    from shmem.segment import SharedState
    sh = SharedState.attach(node.datadir)
    try:
        for s in sh.walsnd:
            snap = s.snapshot()
            if snap["pid"]:
                return snap
        return {"flush_lsn": None}
    finally:
        sh.close()


@pytest.mark.timeout(120)
def test_base_backup_makes_a_standby_that_streams(nodes):
    from tests.cluster import walswitch
    p = nodes.primary(wal_keep_size="64MB")
    load(p, 500)
    s = nodes("standby")
    walswitch("basebackup", "-d", p.dsn(), "-D", s.datadir, "-R")
    assert not Path(s.datadir, "backup_label").exists()          # folded into the control file
    cf = read_control(s.datadir)
    assert cf.min_recovery_point > 0 and cf.redo_lsn <= cf.min_recovery_point
    s.set_conf(port=s.port)
    s.start()
    load(p, 200, switch_every=80)
    want, _ = p.dump()
    wait_for(lambda: s.dump()[0] == want, 30, "the standby to replay the streamed WAL")
    assert len(want) == 500
    ev = wait_for(lambda: p.events("walsender_streaming"), 30, "the walsender to report streaming")
    assert ev[-1]["timeline"] == 1
    # Completed segments on the standby are byte-identical to the primary's.
    pg_wal_p, pg_wal_s = Path(p.datadir, "pg_wal"), Path(s.datadir, "pg_wal")
    flush = p.flush_lsn()
    for f in sorted(pg_wal_s.iterdir()):
        if not (f.is_file() and is_segment_name(f.name)):
            continue
        _tli, segno = parse_segment_name(f.name, SEG)
        if (segno + 1) * SEG <= flush and (pg_wal_p / f.name).exists():
            wait_for(lambda f=f: f.read_bytes() == (pg_wal_p / f.name).read_bytes(), 10, f"{f.name} identical")
