"""``walswitch waldump`` against ``pg_waldump`` on the same WAL files, MB/s."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PGBIN, ROOT, as_postgres, median, tempdir, walswitch_primary
from xlog.lsn import is_segment_name


def make_wal(server, mb: int) -> None:
    import psycopg2
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
    conn.autocommit = False
    cur = conn.cursor()
    target = mb * 1024 * 1024
    start = None
    i = 0
    while True:
        for _ in range(200):
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"k{i}", "v" * (i % 400)))
            i += 1
        conn.commit()
        cur.execute("SELECT pg_current_wal_lsn()")
        lsn = cur.fetchone()[0]
        hi, lo = lsn.split("/")
        pos = (int(hi, 16) << 32) | int(lo, 16)
        start = start or pos
        if pos - start > target:
            break
    cur.execute("SELECT pg_switch_wal()")
    conn.commit()
    conn.close()


def run(runs: int = 5, mb: int = 24) -> dict:
    with tempdir("walswitch-bench-") as base:
        with walswitch_primary(base, segsize_mb=1) as ws:
            make_wal(ws, mb)
            pg_wal = ws.datadir / "pg_wal"
            segs = sorted(f for f in os.listdir(pg_wal) if is_segment_name(f))
            # Completed segments only: every one but the newest.
            copy = base / "wal"
            copy.mkdir()
            for s in segs[:-1]:
                (copy / s).write_bytes((pg_wal / s).read_bytes())
        os.chmod(copy, 0o755)
        for f in copy.iterdir():
            f.chmod(0o644)
        files = sorted(copy.iterdir())
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        ours, theirs = [], []
        for _ in range(runs):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "xlog.waldump", *map(str, files)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            ours.append(total_mb / (time.perf_counter() - t))
            if r.returncode:
                raise RuntimeError(f"walswitch waldump: {r.stderr}")
            t = time.perf_counter()
            r = as_postgres([str(PGBIN / "pg_waldump"), "-p", str(copy), files[0].name, files[-1].name])
            theirs.append(total_mb / (time.perf_counter() - t))
    out = {"mb": total_mb, "walswitch_mbps": ours, "pg_waldump_mbps": theirs,
           "walswitch_median": median(ours), "pg_waldump_median": median(theirs)}
    out["ratio"] = out["walswitch_median"] / out["pg_waldump_median"]
    return out
