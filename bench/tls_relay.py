"""What TLS costs a walswitch primary, and what the backend's TLS relay costs replication.

A walswitch primary made by ``walswitch init --ssl``, ~WAL_MB of WAL written by multi-row INSERTs, then,
alternating plain (``sslmode=disable``) and TLS (``sslmode=require``), RUNS times each, medians:

* **replication catch-up MB/s**: the walreceiver's own connection class (``WalRcvConn``) streams from the
  first segment to the flush position, as bench/stream_receive.py does; over TLS the walsender's bytes pass
  through the backend's relay (backend/tlsrelay.py) and the TLS session;
* **query round trip µs**: ``SELECT 1`` on one psycopg connection, QUERIES times, median;
* **commit latency under a catch-up**: the relay runs in the backend, the process that also commits for
  every session, so one-row INSERT commits on another (plain) connection are timed while a catch-up
  streams (repeated for BUSY_SECONDS), plain against TLS (p50/p99 over the runs), and with no catch-up as the baseline.

``python -m bench.tls_relay`` prints the table and writes bench-results/tls_relay.json.
"""
from __future__ import annotations

import json
import select
import threading
import time
from pathlib import Path

import psycopg

from bench.common import ROOT, free_port, median, percentile, tempdir, walswitch_server, ws
from walreceiver.libpqwalreceiver import WalRcvConn

WAL_MB = 64
RUNS = 3
QUERIES = 2000
BUSY_SECONDS = 3.0


def catch_up(port: int, sslmode: str, start: int, until: int) -> float:
    conn = WalRcvConn.connect(f"host=127.0.0.1 port={port} user=postgres sslmode={sslmode}", "bench",
                              deadline=None, interrupt_fds=[], check_interrupts=lambda: None)
    got = {"end": start, "bytes": 0}
    try:
        conn.query("IDENTIFY_SYSTEM", None)
        conn.query(f"START_REPLICATION PHYSICAL {start >> 32:X}/{start & 0xFFFFFFFF:X} TIMELINE 1", None)

        def on_x(data_start, wal_end, send_time, buf, off, end):
            got["bytes"] += end - off
            got["end"] = data_start + end - off

        t0 = time.monotonic()
        while got["end"] < until:
            _n, ended, more = conn.receive(on_x, lambda *a: None, 4 << 20)
            if ended:
                break
            conn.send_status(got["end"], got["end"], 0, 0, False)
            if not more:
                select.select([conn.fd], [], [], 0.5)
        return got["bytes"] / (time.monotonic() - t0) / 1e6
    finally:
        conn.close()


def round_trip_us(port: int, sslmode: str) -> float:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={sslmode}",
                         autocommit=True) as conn:
        times = []
        for _ in range(QUERIES):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - t0) * 1e6)
    return median(times)


def commits_during(port: int, busy: threading.Event | None, n_idle: int = 300) -> list[float]:
    """One-row INSERT commit latencies (µs): while ``busy`` is set, or n_idle of them when busy is None."""
    times: list[float] = []
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres sslmode=disable", autocommit=True) as c:
        i = 0
        while (busy.is_set() if busy is not None else i < n_idle):
            t0 = time.perf_counter()
            c.execute("INSERT INTO kv VALUES (%s, 'v')", (f"c{time.perf_counter_ns()}",))
            times.append((time.perf_counter() - t0) * 1e6)
            i += 1
    return times


def catch_up_with_commits(port: int, sslmode: str, start: int, until: int) -> tuple[float, list[float]]:
    busy = threading.Event()
    busy.set()
    got: list[float] = []
    def stream() -> None:
        t_end = time.monotonic() + BUSY_SECONDS      # repeat the catch-up so the window holds many commits
        while time.monotonic() < t_end:
            got.append(catch_up(port, sslmode, start, until))
        busy.clear()

    t = threading.Thread(target=stream)
    t.start()
    try:
        lat = commits_during(port, busy)
    finally:
        busy.clear()
        t.join()
    return got[0] if got else 0.0, lat


def run() -> dict:
    with tempdir("walswitch-bench-tls-") as base:
        datadir = base / "p"
        port = free_port()
        ws("init", "-D", str(datadir), "--wal-segsize", "16", "-p", str(port), "--ssl")
        with open(datadir / "walswitch.conf", "a") as f:
            f.write("wal_keep_size = 1024\n")
        with walswitch_server(datadir, port):
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres sslmode=disable",
                                 autocommit=True) as c:
                start = int(c.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
                start -= start % (16 << 20)
                row = "x" * 2000
                for i in range(WAL_MB * 1024 * 1024 // (2100 * 50)):
                    c.execute("INSERT INTO kv VALUES " + ", ".join(f"('k{i}-{j}', '{row}')" for j in range(50)))
                until = int(c.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
            res: dict[str, dict[str, list[float]]] = {m: {"mb_s": [], "rtt_us": [], "commit_us": []}
                                                      for m in ("disable", "require")}
            idle = commits_during(port, None)
            for _ in range(RUNS):
                for mode in ("disable", "require"):
                    res[mode]["mb_s"].append(catch_up(port, mode, start, until))
                    res[mode]["rtt_us"].append(round_trip_us(port, mode))
                    res[mode]["commit_us"] += catch_up_with_commits(port, mode, start, until)[1]
    out = {"wal_mb": round((until - start) / 1e6, 1), "runs": RUNS, "queries": QUERIES, "raw": res,
           "plain_mb_s": median(res["disable"]["mb_s"]), "tls_mb_s": median(res["require"]["mb_s"]),
           "plain_rtt_us": median(res["disable"]["rtt_us"]), "tls_rtt_us": median(res["require"]["rtt_us"]),
           "idle_commit_us": [median(idle), percentile(idle, 99)]}
    for mode, key in (("disable", "plain_commit_us"), ("require", "tls_commit_us")):
        lat = res[mode].pop("commit_us")
        out[key] = [median(lat), percentile(lat, 99)]
    return out


def main() -> None:
    r = run()
    print(f"replication catch-up of {r['wal_mb']} MB: plain {r['plain_mb_s']:.1f} MB/s, "
          f"TLS through the relay {r['tls_mb_s']:.1f} MB/s (ratio {r['tls_mb_s'] / r['plain_mb_s']:.2f})")
    print(f"SELECT 1 round trip: plain {r['plain_rtt_us']:.0f} us, TLS {r['tls_rtt_us']:.0f} us")
    for what, key in (("no catch-up", "idle_commit_us"), ("during a plain catch-up", "plain_commit_us"),
                      ("during a TLS catch-up (relayed)", "tls_commit_us")):
        print(f"commit latency {what}: p50 {r[key][0]:.0f} us, p99 {r[key][1]:.0f} us")
    out = Path(ROOT) / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "tls_relay.json").write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
