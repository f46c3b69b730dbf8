"""Replication lag at a fixed commit rate, walswitch beside PostgreSQL 15, and where walswitch's goes.

``python -m bench.lag --rate R [--runs N] [--seconds S] [--json PATH] [--no-postgres]``

Both systems: a primary and a streaming standby made by their own base backup, the same standby
settings (``wal_receiver_status_interval = 1s``, ``hot_standby = on``), ``fsync = on``,
``synchronous_commit = on`` (asynchronous replication).  Per run, on each system in turn:

* ``pgbench -n -M prepared -R R -c 4 -j 2`` (one INSERT per transaction, throttled: the rate is the same for
  both, so throughput plays no part; ``--rate 0`` is full load);
* ``replay_lag`` from ``pg_stat_replication`` on the primary every 100 ms (NULL samples counted, not used);
* commit-to-visible: every 50 ms a probe row is inserted on the primary (its own connection,
  autocommit) and the standby is queried back to back until it sees the row; the time from sending
  the INSERT to the first query that sees it.

walswitch runs with ``lag_trace_sample`` on (utils/lagtrace.py), so each of its runs also gives the
stage table: for the sampled commits, the time from one hand-over to the next (p50, p99, share of the
mean total).  Reported: medians over runs of each run's p50 and p99; the stage table of all runs.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import subprocess
import threading
import time
from pathlib import Path

from bench.common import (PGBIN, BenchError, median, percentile, pg_basebackup, pg_primary, pg_server, ratio,
                          tempdir, wait_for, walswitch_primary, walswitch_server, ws_basebackup)
from bench.pgbench_tps import SCRIPT
from utils import lagtrace

TITLE = "replication lag at a fixed commit rate (pgbench -R), and walswitch's latency trace by stage"
STANDBY_CONF = {"wal_receiver_status_interval": "1s", "wal_retrieve_retry_interval": "1s", "hot_standby": True}
SETTLE = 1.5


def _seconds(v) -> float | None:
    """replay_lag as seconds: psycopg2 gives a timedelta; accept interval text too (00:00:00.001234)."""
    if v is None:
        return None
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    m = re.fullmatch(r"\s*(-)?(\d+):(\d+):(\d+(?:\.\d+)?)\s*", str(v))
    if not m:
        raise BenchError(f"replay_lag not understood: {v!r}")
    s = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
    return -s if m.group(1) else s


def wait_streaming(primary, timeout: float = 60) -> None:
    wait_for(lambda: primary.query("SELECT state FROM pg_stat_replication WHERE state = 'streaming'"),
             timeout, f"a streaming standby on the {primary.kind} primary")


def pgbench_cmd(server, script: Path, seconds: int, rate: int) -> list[str]:
    cmd = [str(PGBIN / "pgbench"), "-n", "-M", "prepared", "-f", str(script), "-c", "4", "-j", "2",
           "-T", str(seconds)]
    if rate:
        cmd += ["-R", str(rate)]
    return cmd + server.dsn_args()


def probe_visibility(primary, standby, stop: threading.Event, out: list[float], errors: list[str]) -> None:
    """Insert a row on the primary, poll the standby until it is there; every 50 ms until stop."""
    try:
        pc = primary.connect()
        sc = standby.connect()
    except Exception as e:  # noqa: BLE001 - reported, the run goes on without probes
        errors.append(f"probe connect: {e}")
        return
    try:
        pcur, scur = pc.cursor(), sc.cursor()
        n = 0
        while not stop.is_set():
            n += 1
            key = f"probe-{time.monotonic_ns()}-{n}"
            t0 = time.perf_counter()
            pcur.execute("INSERT INTO kv VALUES (%s, 'p')", (key,))
            deadline = t0 + 5.0
            while True:
                scur.execute("SELECT 1 FROM kv WHERE key = %s", (key,))
                if scur.fetchall():
                    out.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() > deadline:
                    errors.append("a probe row was not visible on the standby within 5 s")
                    break
            stop.wait(0.05)
    except Exception as e:  # noqa: BLE001
        errors.append(f"probe: {e}")
    finally:
        pc.close()
        sc.close()


def one_run(primary, standby, script: Path, seconds: float, rate: int) -> dict:
    duration = int(SETTLE + seconds + 1.5)
    pgb = subprocess.Popen(pgbench_cmd(primary, script, duration, rate), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lags: list[float] = []
    vis: list[float] = []
    probe_errors: list[str] = []
    nulls = 0
    stop = threading.Event()
    prober = threading.Thread(target=probe_visibility, args=(primary, standby, stop, vis, probe_errors))
    try:
        conn = primary.connect()
        try:
            cur = conn.cursor()
            time.sleep(SETTLE)      # pgbench's connections and first transactions
            prober.start()
            t_end = time.monotonic() + seconds
            next_t = time.monotonic()
            while time.monotonic() < t_end and pgb.poll() is None:
                cur.execute("SELECT replay_lag FROM pg_stat_replication")
                rows = cur.fetchall()
                v = _seconds(rows[0][0]) if rows else None
                if v is None:
                    nulls += 1
                else:
                    lags.append(v)
                next_t += 0.1
                time.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            stop.set()
            if prober.is_alive():
                prober.join(10)
            conn.close()
        out, err = pgb.communicate(timeout=duration + 60)
    finally:
        if pgb.poll() is None:
            pgb.kill()
            pgb.wait()
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if pgb.returncode or not m:
        raise BenchError(f"pgbench on {primary.kind} exited {pgb.returncode}: {err.strip()[-600:]}")
    return {"tps": float(m.group(1)), "samples": len(lags), "null_samples": nulls,
            "replay_p50_ms": percentile(lags, 50) * 1000, "replay_p99_ms": percentile(lags, 99) * 1000,
            "visible_probes": len(vis), "visible_p50_ms": percentile(vis, 50) * 1000,
            "visible_p99_ms": percentile(vis, 99) * 1000, "probe_errors": probe_errors[:5]}


def run(rate: int = 200, runs: int = 3, seconds: float = 10.0, postgres: bool = True) -> dict:
    sample = max(1, rate // 200) if rate else 10
    trace_conf = {"lag_trace_sample": sample}
    res: dict[str, list[dict]] = {"walswitch": [], "postgresql": []}
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(tempdir("walswitch-bench-lag-"))
        script = base / "insert.sql"
        script.write_text(SCRIPT)
        script.chmod(0o644)
        wsp = stack.enter_context(walswitch_primary(base, "ws_primary", conf=trace_conf))
        ws_port = ws_basebackup(wsp, base / "ws_standby", {**STANDBY_CONF, **trace_conf})
        wss = stack.enter_context(walswitch_server(base / "ws_standby", ws_port, "standby", wait_ready=False))
        wait_streaming(wsp)
        pgp = pgs = None
        if postgres:
            pgp = stack.enter_context(pg_primary(base, "pg_primary"))
            pg_port = pg_basebackup(pgp, base, base / "pg_standby", STANDBY_CONF)
            pgs = stack.enter_context(pg_server(base / "pg_standby", pg_port, "standby"))
            wait_streaming(pgp)
        for _ in range(runs):
            res["walswitch"].append(one_run(wsp, wss, script, seconds, rate))
            if pgp is not None:
                res["postgresql"].append(one_run(pgp, pgs, script, seconds, rate))
        # Each process writes its notes when it goes idle, at least every half second.
        time.sleep(1.0)
        commits = lagtrace.complete(lagtrace.load([wsp.datadir, wss.datadir]))
    keys = ("replay_p50_ms", "replay_p99_ms", "visible_p50_ms", "visible_p99_ms", "tps")
    summary = {k: {m: median([r[m] for r in v]) for m in keys} for k, v in res.items() if v}
    stages = lagtrace.stage_table(commits)
    rows = []
    w = summary["walswitch"]
    p = summary.get("postgresql", {m: float("nan") for m in keys})
    for m, label, better in (("replay_p50_ms", "replay_lag p50 ms", "lower"),
                             ("replay_p99_ms", "replay_lag p99 ms", "lower"),
                             ("visible_p50_ms", "commit-to-visible p50 ms", "lower"),
                             ("visible_p99_ms", "commit-to-visible p99 ms", "lower"),
                             ("tps", "commits/s", "higher")):
        rows.append({"metric": f"{label} at {rate or 'full load'}/s", "walswitch": w[m], "postgresql": p[m],
                     "ratio": ratio(w[m], p[m]), "better": better})
    doc = {"title": TITLE, "rate": rate, "runs_per_system": runs, "seconds": seconds, "trace_sample": sample,
           "standby_settings": STANDBY_CONF, "runs": res, "median": summary, "rows": rows,
           "stages": stages, "traced_commits": len(commits)}
    doc["table"] = stage_text(doc)
    return doc


def stage_text(doc: dict) -> str:
    lines = [f"   walswitch stages ({doc['traced_commits']} traced commits; time from the previous stage)",
             f"   {'stage':28} {'p50 ms':>8} {'p99 ms':>8} {'share':>6}"]
    for s in doc["stages"]:
        share = "" if s["share"] != s["share"] else f"{s['share'] * 100:5.1f}%"
        lines.append(f"   {s['stage']:28} {s['p50_ms']:8.3f} {s['p99_ms']:8.3f} {share:>6}")
    return "\n".join(lines)


def print_report(doc: dict) -> None:
    print(f"{doc['title']}\nrate {doc['rate'] or 'full load'} commits/s, {doc['runs_per_system']} runs of "
          f"{doc['seconds']:g} s per system")
    print(f"{'metric':34} {'walswitch':>10} {'PG 15':>10} {'ratio':>7}")
    for r in doc["rows"]:
        print(f"{r['metric']:34} {r['walswitch']:10.3f} {r['postgresql']:10.3f} {r['ratio']:7.2f}")
    print()
    print(stage_text(doc))


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lag", description=TITLE)
    ap.add_argument("--rate", type=int, default=200, help="commits/s for pgbench -R (0: full load)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-postgres", action="store_true", help="walswitch only (the stage table)")
    args = ap.parse_args()
    doc = run(args.rate, args.runs, args.seconds, postgres=not args.no_postgres)
    print_report(doc)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
