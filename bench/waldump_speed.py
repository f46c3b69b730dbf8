"""``walswitch waldump`` against PostgreSQL 15's ``pg_waldump`` on the same WAL files (walswitch's WAL,
~24 MB of completed 1 MB segments), MB/s of WAL decoded and printed.

The WAL is written by a walswitch primary (INSERTs of 0..399-byte values, 200 per transaction), then
its completed segments are copied aside.  Both tools print every record to /dev/null; the timings
include each tool's start-up.  pg_waldump is a client tool and runs directly (no ``runuser``).
Before timing, each tool's record count is taken once (they should agree) and recorded.
"""
from __future__ import annotations

import os
import subprocess
import time

from bench.common import (PGBIN, ROOT, WALSWITCH, BenchError, give_to_postgres, median, parse_lsn,
                          ratio, tempdir, walswitch_primary)
from xlog.lsn import is_segment_name

TITLE = "WAL decoding MB/s, walswitch waldump vs pg_waldump (same walswitch WAL files)"


def make_wal(server, mb: int, value_len: int = 400, per_txn: int = 200) -> None:
    """INSERTs into kv (values of 0..value_len-1 bytes) until mb MB of WAL, then pg_switch_wal()."""
    conn = server.connect(autocommit=False)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_current_wal_lsn()")
        start = parse_lsn(cur.fetchone()[0])
        target = mb * 1024 * 1024
        i = 0
        while True:
            rows = []
            for _ in range(per_txn):
                rows.append((f"k{i}", "v" * (i % value_len)))
                i += 1
            values = ",".join(cur.mogrify("(%s, %s)", r).decode() for r in rows)
            cur.execute(f"INSERT INTO kv VALUES {values}")
            conn.commit()
            cur.execute("SELECT pg_current_wal_lsn()")
            pos = parse_lsn(cur.fetchone()[0])
            conn.commit()
            if pos - start > target:
                break
        cur.execute("SELECT pg_switch_wal()")
        conn.commit()
    finally:
        conn.close()


def run(runs: int = 5, mb: int = 24) -> dict:
    with tempdir("walswitch-bench-waldump-") as base:
        with walswitch_primary(base, segsize_mb=1) as ws:
            t = time.monotonic()
            make_wal(ws, mb)
            make_seconds = time.monotonic() - t
            pg_wal = ws.datadir / "pg_wal"
            segs = sorted(f for f in os.listdir(pg_wal) if is_segment_name(f))
            # Completed segments only: every one but the newest (the one pg_switch_wal opened).
            copy = base / "wal"
            copy.mkdir()
            for s in segs[:-1]:
                (copy / s).write_bytes((pg_wal / s).read_bytes())
        give_to_postgres(copy, 0o755)
        for f in copy.iterdir():
            give_to_postgres(f, 0o644)
        files = sorted(copy.iterdir())
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        ours_cmd = [*WALSWITCH, "waldump", *map(str, files)]
        theirs_cmd = [str(PGBIN / "pg_waldump"), "-p", str(copy), files[0].name, files[-1].name]

        # Once, untimed: both must read every file, and the record counts are kept.
        r = subprocess.run(ours_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise BenchError(f"walswitch waldump exited {r.returncode}: {r.stderr.strip()[-500:]}")
        ours_records = len(r.stdout.splitlines())
        r = subprocess.run(theirs_cmd, capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise BenchError(f"pg_waldump exited {r.returncode} on walswitch WAL: {r.stderr.strip()[-500:]}")
        theirs_records = len(r.stdout.splitlines())

        ours, theirs = [], []
        for _ in range(runs):
            t = time.perf_counter()
            r = subprocess.run(ours_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               timeout=600)
            ours.append(total_mb / (time.perf_counter() - t))
            if r.returncode:
                raise BenchError(f"walswitch waldump: {r.stderr}")
            t = time.perf_counter()
            r = subprocess.run(theirs_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
            theirs.append(total_mb / (time.perf_counter() - t))
            if r.returncode:
                raise BenchError(f"pg_waldump: {r.stderr}")
    ws_m, pg_m = median(ours), median(theirs)
    return {
        "title": TITLE,
        "command": f"walswitch waldump WAL/* > /dev/null  vs  pg_waldump -p WAL {files[0].name} {files[-1].name} "
                   f"> /dev/null",
        "segments": len(files), "mb": round(total_mb, 2), "make_wal_seconds": round(make_seconds, 1),
        "walswitch_records": ours_records, "pg_waldump_records": theirs_records,
        "walswitch_mbps": ours, "pg_waldump_mbps": theirs,
        "walswitch_median": ws_m, "pg_waldump_median": pg_m, "ratio": ratio(ws_m, pg_m),
        "paired_ratios": [ratio(a, b) for a, b in zip(ours, theirs)],
        "rows": [{"metric": f"waldump MB/s ({total_mb:.0f} MB, median)", "walswitch": ws_m, "postgresql": pg_m,
                  "ratio": ratio(ws_m, pg_m), "better": "higher"}],
    }
