"""Replay lag under load: ``pg_stat_replication.replay_lag`` sampled on the primary every 100 ms for
~15 s while ``pgbench -n -M simple -f script`` (4 clients, ``-j 2``, one INSERT per transaction) runs,
for a walswitch primary + walswitch standby (``walswitch basebackup -R``, streaming) beside a
PostgreSQL 15 primary + PostgreSQL 15 standby (``pg_basebackup -R``, streaming), same run, same machine.

Both standbys get the same settings (``wal_receiver_status_interval = 1s``, ``hot_standby = on``,
``wal_retrieve_retry_interval = 1s``) and both primaries ``fsync = on``, ``synchronous_commit = on``
(asynchronous replication).  A sample is one ``SELECT replay_lag FROM pg_stat_replication`` on a
connection kept open; NULL samples (no lag known) are counted, not used.  Per run: p50 and p99 of
the non-NULL samples; reported: the median over runs of each.  pgbench is not throttled, so each
system runs at its own commit rate (recorded beside the lag).
"""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
from pathlib import Path

from bench.common import (BenchError, median, percentile, pg_basebackup, pg_primary, pg_server, ratio, tempdir,
                          wait_for, walswitch_primary, walswitch_server, ws_basebackup)
from bench.pgbench_tps import SCRIPT, pgbench_cmd

TITLE = "replay lag under pgbench load (4 clients), primary + streaming standby, from pg_stat_replication"

STANDBY_CONF = {"wal_receiver_status_interval": "1s", "wal_retrieve_retry_interval": "1s", "hot_standby": True}


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


def sample_under_load(primary, script: Path, seconds: float, interval: float = 0.1, settle: float = 1.5) -> dict:
    """Run pgbench for settle + seconds + 1 s; sample replay_lag every interval during the middle seconds."""
    duration = int(settle + seconds + 1.5)
    pgb = subprocess.Popen(pgbench_cmd(primary, script, duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    lags: list[float] = []
    nulls = 0
    errors = 0
    try:
        conn = primary.connect()
        try:
            cur = conn.cursor()
            time.sleep(settle)
            t_end = time.monotonic() + seconds
            next_t = time.monotonic()
            while time.monotonic() < t_end and pgb.poll() is None:
                try:
                    cur.execute("SELECT replay_lag FROM pg_stat_replication")
                    rows = cur.fetchall()
                    v = _seconds(rows[0][0]) if rows else None
                except BenchError:
                    raise
                except Exception:  # noqa: BLE001 - count and go on; the tally is reported
                    errors += 1
                    v = None
                if v is None:
                    nulls += 1
                else:
                    lags.append(v)
                next_t += interval
                time.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            conn.close()
        out, err = pgb.communicate(timeout=duration + 60)
    finally:
        if pgb.poll() is None:
            pgb.kill()
            pgb.wait()
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if pgb.returncode or not m:
        raise BenchError(f"pgbench on {primary.kind} exited {pgb.returncode}: {err.strip()[-600:]}\n"
                         f"{primary.log_tail(10)}")
    return {"samples": len(lags), "null_samples": nulls, "errors": errors, "tps": float(m.group(1)),
            "p50_ms": percentile(lags, 50) * 1000, "p99_ms": percentile(lags, 99) * 1000,
            "max_ms": (max(lags) * 1000) if lags else float("nan")}


def run(runs: int = 3, seconds: float = 15.0) -> dict:
    res: dict[str, list[dict]] = {"walswitch": [], "postgresql": []}
    with tempdir("walswitch-bench-lag-") as base:
        script = base / "insert.sql"
        script.write_text(SCRIPT)
        script.chmod(0o644)
        with walswitch_primary(base, "ws_primary") as wsp, pg_primary(base, "pg_primary") as pgp:
            ws_port = ws_basebackup(wsp, base / "ws_standby", STANDBY_CONF)
            pg_port = pg_basebackup(pgp, base, base / "pg_standby", STANDBY_CONF)
            with walswitch_server(base / "ws_standby", ws_port, "standby", wait_ready=False), \
                    pg_server(base / "pg_standby", pg_port, "standby"):
                wait_streaming(wsp)
                wait_streaming(pgp)
                for _ in range(runs):
                    res["walswitch"].append(sample_under_load(wsp, script, seconds))
                    res["postgresql"].append(sample_under_load(pgp, script, seconds))
    summary = {k: {m: median([r[m] for r in v]) for m in ("p50_ms", "p99_ms", "max_ms", "tps")}
               for k, v in res.items()}
    w, p = summary["walswitch"], summary["postgresql"]
    return {
        "title": TITLE,
        "command": "pgbench -n -M simple -f insert.sql -c 4 -j 2 -T 18 (script as in pgbench_tps) on the primary; "
                   "SELECT replay_lag FROM pg_stat_replication every 100 ms for 15 s",
        "standby_settings": STANDBY_CONF,
        "runs": res, "median": summary,
        "ratio_p50": ratio(w["p50_ms"], p["p50_ms"]), "ratio_p99": ratio(w["p99_ms"], p["p99_ms"]),
        "paired_ratios_p50": [ratio(a["p50_ms"], b["p50_ms"]) for a, b in zip(res["walswitch"], res["postgresql"])],
        "paired_ratios_p99": [ratio(a["p99_ms"], b["p99_ms"]) for a, b in zip(res["walswitch"], res["postgresql"])],
        "rows": [
            {"metric": "replay lag p50 ms (median of runs)", "walswitch": w["p50_ms"], "postgresql": p["p50_ms"],
             "ratio": ratio(w["p50_ms"], p["p50_ms"]), "better": "lower"},
            {"metric": "replay lag p99 ms (median of runs)", "walswitch": w["p99_ms"], "postgresql": p["p99_ms"],
             "ratio": ratio(w["p99_ms"], p["p99_ms"]), "better": "lower"},
            {"metric": "commits/s during the lag runs", "walswitch": w["tps"], "postgresql": p["tps"],
             "ratio": ratio(w["tps"], p["tps"]), "better": "higher"},
        ],
    }
