"""The walreceiver's connection layer alone: streaming catch-up MB/s, CPU µs per XLogData message, and
send-to-receive latency per message, against a PostgreSQL 15 primary (its C walsender is never the
bottleneck, so the figures are the client's).

Setup, once: a PostgreSQL 15 primary (16 MB segments, ``wal_keep_size = 2GB``) and ~CATCHUP_MB of WAL
written by ``INSERT ... generate_series`` of 1 kB rows.  Per run (3 by default, medians reported):

1. **catch-up**: ``WalRcvConn.connect`` (the walreceiver's own class, ``walreceiver/libpqwalreceiver.py``),
   ``IDENTIFY_SYSTEM``, ``START_REPLICATION`` at the first kept segment, then ``receive`` in a loop with
   ``select`` on the connection's fd until the XLogData stream reaches the primary's flush position
   taken before the start; the payload is touched (``bytes(buf[off:off+16])``), not written to disk.
   MB/s = bytes of WAL / wall time; µs/msg = process CPU time / XLogData messages.
2. **live**: streaming from the current end while ``pgbench -n -c 2 -R 1000 -T LIVE_S`` runs single-row
   INSERTs with ``synchronous_commit = on`` (many small XLogData messages); per message, our receive time
   minus its sendTime (same clock): p50 and p99 in µs; CPU µs per message; a standby status reply after
   each batch, as the walreceiver does.
3. **walswitch end to end**: a walswitch primary, a ``walswitch basebackup -R`` standby kept stopped
   while E2E_MB of WAL is written (multi-row INSERTs of 2 kB values), then the standby (a fresh copy per
   run; ``fsync = on``) is started and timed from ``walswitch start`` (``mb_s``), and from its walreceiver's
   STREAMING state (``stream_mb_s``), to its ``receive_lsn`` (the walreceiver's flushed position,
   ``walswitch status``, polled every 10 ms) reaching the primary's flush position: streaming catch-up
   MB/s of the whole path (Python walsender, our walreceiver writing and fsyncing pg_wal).

Run it against another checkout of the connection layer with ``PYTHONPATH=<that tree>``: the script
uses only WalRcvConn's public API (connect, query, receive, send_status, fd, close).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (PGBIN, BenchError, median, percentile, pg_primary, psql, tempdir, walswitch_primary,
                          walswitch_server, ws_basebackup, ws_status, wait_for, copytree_as)

CATCHUP_MB = 300
E2E_MB = 400
LIVE_S = 8
PG_EPOCH_US = 946684800 * 1_000_000


def _now_pg_us() -> int:
    return time.time_ns() // 1000 - PG_EPOCH_US


def _connect(port: int):
    from walreceiver.libpqwalreceiver import WalRcvConn
    return WalRcvConn.connect(f"host=127.0.0.1 port={port} user=postgres", "bench", deadline=None,
                              interrupt_fds=[], check_interrupts=lambda: None)


def _stream(port: int, start: int, until: int | None, seconds: float | None) -> dict:
    """Receive from start until the stream passes `until` or `seconds` ran out."""
    conn = _connect(port)
    try:
        conn.query("IDENTIFY_SYSTEM", None)
        res = conn.query(f"START_REPLICATION PHYSICAL {start >> 32:X}/{start & 0xFFFFFFFF:X} TIMELINE 1", None)
        assert res[-1].status == "copy_both", res
        st = {"bytes": 0, "msgs": 0, "end": start, "lat": []}
        live = until is None

        def on_x(data_start, wal_end, send_time, buf, off, end):
            bytes(buf[off:off + 16])
            st["bytes"] += end - off
            st["msgs"] += 1
            st["end"] = data_start + end - off
            if live:
                st["lat"].append(_now_pg_us() - send_time)

        def on_k(wal_end, send_time, reply):
            if reply:
                conn.send_status(st["end"], st["end"], 0, _now_pg_us(), False)

        t0, c0 = time.monotonic(), time.process_time()
        stop_at = t0 + seconds if seconds else None
        while True:
            _n, ended, more = conn.receive(on_x, on_k, 4 << 20)
            if ended or (until is not None and st["end"] >= until):
                break
            now = time.monotonic()
            if stop_at and now >= stop_at:
                break
            conn.send_status(st["end"], st["end"], 0, _now_pg_us(), False)
            if not more:
                select.select([conn.fd], [], [], 0.5 if stop_at is None else max(0.0, stop_at - now))
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
    finally:
        conn.close()
    out = {"bytes": st["bytes"], "msgs": st["msgs"], "wall_s": wall, "cpu_s": cpu,
           "mb_s": st["bytes"] / wall / 1e6, "cpu_us_per_msg": cpu * 1e6 / max(1, st["msgs"])}
    if live:
        out["lat_p50_us"] = percentile(st["lat"], 50)
        out["lat_p99_us"] = percentile(st["lat"], 99)
    return out


def _lsn(s: str) -> int:
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def e2e(base: Path, runs: int) -> list[dict]:
    """Phase 3: a walswitch standby catching up E2E_MB by streaming from a walswitch primary."""
    out = []
    with walswitch_primary(base, "wsp", conf={"wal_keep_size": "2GB", "fsync": False}) as wsp:
        ws_basebackup(wsp, base / "ws_pristine", {"wal_receiver_status_interval": "1s", "hot_standby": True,
                                                   "fsync": True})
        conn = wsp.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT pg_current_wal_lsn()")
            first = _lsn(cur.fetchone()[0])
            value = "v" * 2000
            i = 0
            while True:
                args: list[str] = []
                for _ in range(100):
                    args += [f"e2e-{i:09d}", value]
                    i += 1
                cur.execute("INSERT INTO kv VALUES " + ",".join(["(%s, %s)"] * 100), args)
                cur.execute("SELECT pg_current_wal_lsn()")
                target = _lsn(cur.fetchone()[0])
                if target - first >= E2E_MB << 20:
                    break
        finally:
            conn.close()
        for k in range(runs):
            d = base / f"ws_standby{k}"
            copytree_as(base / "ws_pristine", d, postgres=False)
            port = int(next(ln.split("=")[1] for ln in reversed((d / "walswitch.conf").read_text().splitlines())
                            if ln.startswith("port =")))
            t0 = time.monotonic()
            with walswitch_server(d, port, "standby", wait_ready=False):
                wait_for(lambda: ws_status(d).get("walreceiver_state") == "streaming", 120,
                         "the standby to stream", interval=0.01)
                t1 = time.monotonic()
                wait_for(lambda: _lsn(ws_status(d).get("receive_lsn") or "0/0") >= target, 600,
                         "the standby to receive the load", interval=0.01)
                t2 = time.monotonic()
            out.append({"bytes": target - first, "wall_s": t2 - t0, "mb_s": (target - first) / (t2 - t0) / 1e6,
                        "stream_s": t2 - t1, "stream_mb_s": (target - first) / (t2 - t1) / 1e6})
    return out


def run(runs: int = 3) -> dict:
    import walreceiver.libpqwalreceiver as impl
    res: dict[str, list[dict]] = {"catchup": [], "live": []}
    with tempdir("walswitch-bench-recv-") as base:
        script = base / "ins.sql"
        script.write_text("INSERT INTO kv VALUES (md5(random()::text), repeat('v', 100));\n")
        script.chmod(0o644)
        with pg_primary(base, "pg", conf={"wal_keep_size": "2GB", "max_wal_senders": 4, "fsync": False,
                                          "synchronous_commit": "on"}) as pg:
            first = _lsn(psql(pg, "SELECT pg_current_wal_lsn()"))
            first -= first % (16 << 20)
            psql(pg, "CREATE TABLE big (id int, v text); "
                     f"INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, {CATCHUP_MB * 850}) g")
            target = _lsn(psql(pg, "SELECT pg_current_wal_flush_lsn()"))
            for _ in range(runs):
                res["catchup"].append(_stream(pg.port, first, target, None))
                cur = _lsn(psql(pg, "SELECT pg_current_wal_flush_lsn()"))
                pgb = subprocess.Popen([str(PGBIN / "pgbench"), "-n", "-c", "2", "-j", "2", "-R", "1000",
                                        "-T", str(LIVE_S + 1),
                                        "-f", str(script), *pg.dsn_args()], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                try:
                    res["live"].append(_stream(pg.port, cur, None, LIVE_S))
                finally:
                    pgb.communicate(timeout=60)
        res["e2e"] = e2e(base, runs)
    if not res["catchup"]:
        raise BenchError("no run")
    summary = {k: {m: median([r[m] for r in v]) for m in v[0] if m != "lat"} for k, v in res.items()}
    return {"title": "walreceiver connection layer vs PostgreSQL 15 walsender", "impl": impl.__file__,
            "runs": res, "median": summary}


if __name__ == "__main__":
    out = run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(json.dumps(out["median"], indent=1))
    print("impl:", out["impl"], file=sys.stderr)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
