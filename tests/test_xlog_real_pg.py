"""Our reader reads PostgreSQL 15's own WAL (FPIs, compressed images, heap/btree/...) as pg_waldump does."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import psutil
import pytest

from tests.test_xlog_support import (PG_BIN, as_postgres, can_run_pg, make_readable, parse_dump, run_pg_waldump,
                                     shared_tmpdir)
from xlog import constants as C
from xlog.lsn import is_segment_name, parse_lsn, parse_segment_name, segment_name, segment_start
from xlog.reader import WalReader
from xlog.record import CheckPoint, decode_payload

MB = 1024 * 1024
SEG = MB

pytestmark = pytest.mark.skipif(can_run_pg() is not None, reason=f"cannot run PostgreSQL 15: {can_run_pg()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, base: str) -> None:
        self.base = base
        self.data = os.path.join(base, "data")
        self.port = _free_port()
        self.started = False

    def pg(self, prog: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        p = as_postgres([os.path.join(PG_BIN, prog), *args], timeout=timeout, cwd=self.base)
        assert p.returncode == 0, f"{prog} failed: {p.stderr}{p.stdout}"
        return p

    def psql(self, sql: str) -> str:
        return self.pg("psql", "-h", self.base, "-p", str(self.port), "-U", "postgres", "-X", "-q", "-A", "-t",
                       "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql).stdout

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses='' -c wal_keep_size=1GB -c fsync=off "
                "-c max_wal_senders=0 -c wal_level=replica -c full_page_writes=on")
        self.started = True
        self.pg("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.base, "log"), "-w", "-t", "30",
                "start")

    def stop(self) -> None:
        self.pg("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop")
        self.started = False

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def kill_leftovers(self) -> None:
        """Whatever happened, no server of ours outlives the test."""
        if self.started:
            as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "-t", "10",
                         "stop"], timeout=30)
        pids = set()
        pm = self.postmaster_pid()
        if pm is not None:
            pids.add(pm)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(self.data in a or self.base in a for a in (p.info["cmdline"] or [])):
                    pids.add(p.info["pid"])
            except (psutil.Error, TypeError):
                pass
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if proc.username() == "postgres":
                    os.kill(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass


@pytest.fixture
def cluster(request):
    base = shared_tmpdir("walswitch-pg15-")
    shutil.chown(base, "postgres", "postgres")
    c = Cluster(base)

    def cleanup() -> None:
        try:
            c.kill_leftovers()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(cleanup)
    c.pg("initdb", "-D", c.data, "--wal-segsize=1", "-A", "trust", "-U", "postgres", "-N", "--no-instructions")
    return c


def _load(c: Cluster) -> None:
    c.start()
    c.psql("create table t(id int primary key, v text); "
           "insert into t select g, repeat('x', 100) from generate_series(1, 20000) g; "
           "update t set v = v || 'y' where id % 3 = 0; "
           "create index on t (left(v, 20));")
    # A big row (TOAST) from barely compressible data.
    c.psql("insert into t select -1, string_agg(md5(random()::text), '') from generate_series(1, 40000);")
    for method in ("pglz", "lz4", "zstd", "off"):
        # A checkpoint, then updates: full-page images, compressed in different ways.
        c.psql("checkpoint;")
        c.psql(f"set wal_compression = {method}; update t set v = 'z{method}' where id < 300;")
    c.psql("delete from t where id % 7 = 0;")
    c.psql("vacuum t;")
    c.psql("select pg_switch_wal();")
    c.psql("insert into t values (-2, 'after switch'); select pg_switch_wal();")
    c.psql("begin; insert into t values (-3, 'rolled back'); rollback;")
    c.stop()


@pytest.mark.timeout(120)
def test_our_reader_matches_pg_waldump_on_real_wal(cluster: Cluster) -> None:
    _load(cluster)
    control = cluster.pg("pg_controldata", cluster.data).stdout
    fields = dict(line.split(":", 1) for line in control.splitlines() if ":" in line)
    ckpt_lsn = parse_lsn(fields["Latest checkpoint location"].strip())
    redo_lsn = parse_lsn(fields["Latest checkpoint's REDO location"].strip())
    sysid = int(fields["Database system identifier"].strip())

    pg_wal = os.path.join(cluster.data, "pg_wal")
    make_readable(cluster.base)
    segnos = sorted(parse_segment_name(n, SEG)[1] for n in os.listdir(pg_wal) if is_segment_name(n))
    first, last = segnos[0], ckpt_lsn // SEG
    assert last - first >= 4, "the load should span several segments"
    pg = run_pg_waldump(pg_wal, segment_name(1, first, SEG), segment_name(1, last, SEG))
    theirs = parse_dump(pg.stdout)
    assert theirs and theirs[-1].lsn == ckpt_lsn

    def open_segment(tli: int, segno: int) -> bytes | None:
        if segno > last:
            return None  # pg_waldump's end: the segment of the last checkpoint
        with open(os.path.join(pg_wal, segment_name(tli, segno, SEG)), "rb") as f:
            return f.read()

    t0 = time.perf_counter()
    r = WalReader(open_segment, SEG, 1, segment_start(first, SEG), expected_sysid=sysid)
    assert r.find_first_record() == theirs[0].lsn
    ours = list(r)
    elapsed = time.perf_counter() - t0
    assert [(x.lsn, x.tot_len) for x in ours] == [(x.lsn, x.tot_len) for x in theirs]
    assert [(C.rmgr_name(x.rmid), x.rec_len, x.xid, x.prev) for x in ours] == \
        [(x.rmgr, x.rec_len, x.xid, x.prev) for x in theirs]
    # Where reading stopped, and why, as pg_waldump says it.
    if pg.returncode != 0:
        assert pg.stderr.strip().endswith(": " + r.error)
    assert r.last_record_lsn == ckpt_lsn
    # What we decode of the records agrees with pg_controldata and pg_waldump.
    last_ckpt = decode_payload(ours[-1])
    assert isinstance(last_ckpt, CheckPoint) and last_ckpt.redo == redo_lsn
    assert any(x.fpi_len for x in ours), "expected full-page images"
    compressed = {b.bimg_info & C.BKPIMAGE_COMPRESS_MASK for x in ours for b in x.blocks if b.has_image}
    assert {C.BKPIMAGE_COMPRESS_PGLZ, C.BKPIMAGE_COMPRESS_LZ4, C.BKPIMAGE_COMPRESS_ZSTD, 0} <= compressed
    assert sum(1 for x in ours if x.is_switch) >= 2
    names = {x.rmgr for x in theirs}
    assert {"XLOG", "Transaction", "Heap", "Heap2", "Btree", "Standby"} <= names
    mb = (ours[-1].end_lsn - ours[0].lsn) / MB
    print(f"\nread {len(ours)} records, {mb:.1f} MB of PG15 WAL in {elapsed:.3f}s ({mb / elapsed:.1f} MB/s)")

    # Block references agree with pg_waldump's text for every record that has them.
    for x, t in zip(ours, theirs):
        for b in x.blocks:
            assert f"blkref #{b.block_id}: rel {b.spc_node}/{b.db_node}/{b.rel_node}" in t.desc
            assert (" FPW" in t.desc) == any(bb.has_image for bb in x.blocks)

    # A damaged copy: our reader stops where pg_waldump stops, with the same message.
    victim = ours[len(ours) // 2]
    path = os.path.join(pg_wal, segment_name(1, victim.lsn // SEG, SEG))
    with open(path, "r+b") as f:
        f.seek(victim.lsn % SEG + 24)
        b = f.read(1)
        f.seek(victim.lsn % SEG + 24)
        f.write(bytes([b[0] ^ 0x55]))
    pg2 = run_pg_waldump(pg_wal, segment_name(1, first, SEG), segment_name(1, last, SEG))
    r2 = WalReader(open_segment, SEG, 1, segment_start(first, SEG))
    r2.find_first_record()
    ours2 = list(r2)
    assert pg2.returncode == 1 and len(ours2) == len(parse_dump(pg2.stdout))
    assert pg2.stderr.strip().endswith(f": {r2.error}")
    assert "incorrect resource manager data checksum in record at" in r2.error or \
        r2.error.startswith(("record with invalid length", "invalid", "out-of-order", "BKP"))
