"""Commits per second with ``pgbench -n -M simple -f script`` (4 clients, ``-j 2``, one INSERT per
transaction, fsync on), walswitch against PostgreSQL 15 started by the benchmark in the same run.

Both servers run the same script on the same ``kv(key text primary key, value text)`` table with
``fsync = on`` and ``synchronous_commit = on``; runs alternate between the two so that machine noise
hits both alike, after a short warm-up run on each.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bench.common import PGBIN, BenchError, median, pg_primary, ratio, tempdir, walswitch_primary

TITLE = "commits/s, pgbench -n -M simple -f (4 clients, -j 2, 1 INSERT per transaction, fsync on)"

SCRIPT = ("\\set k random(1, 1000000)\n"
          "INSERT INTO kv VALUES (:k, 'value-' || :k) ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n")


def pgbench_cmd(server, script: Path, seconds: int, clients: int = 4) -> list[str]:
    return [str(PGBIN / "pgbench"), "-n", "-M", "simple", "-f", str(script), "-c", str(clients),
            "-j", "2", "-T", str(seconds), *server.dsn_args()]


def pgbench(server, script: Path, seconds: int, clients: int = 4) -> float:
    r = subprocess.run(pgbench_cmd(server, script, seconds, clients), capture_output=True, text=True,
                       timeout=seconds + 60)
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", r.stdout)
    if r.returncode or not m:
        raise BenchError(f"pgbench on {server.kind} exited {r.returncode}: {r.stderr.strip()[-800:]}\n"
                         f"{r.stdout.strip()[-400:]}\n{server.log_tail(10)}")
    failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
    if failed and int(failed.group(1)):
        raise BenchError(f"pgbench on {server.kind}: {failed.group(0)}")
    return float(m.group(1))


def run(runs: int = 3, seconds: int = 10, warmup: int = 2) -> dict:
    with tempdir("walswitch-bench-tps-") as base:
        script = base / "insert.sql"
        script.write_text(SCRIPT)
        script.chmod(0o644)
        ws_tps, pg_tps = [], []
        with walswitch_primary(base) as ws, pg_primary(base) as pg:
            command = " ".join(pgbench_cmd(pg, Path("insert.sql"), seconds)).replace(str(pg.port), "PORT")
            pgbench(ws, script, warmup)
            pgbench(pg, script, warmup)
            for _ in range(runs):
                ws_tps.append(pgbench(ws, script, seconds))
                pg_tps.append(pgbench(pg, script, seconds))
    ws_m, pg_m = median(ws_tps), median(pg_tps)
    return {
        "title": TITLE,
        "command": command,
        "script": SCRIPT,
        "runs": runs, "seconds_per_run": seconds,
        "walswitch_tps": ws_tps, "postgresql_tps": pg_tps,
        "walswitch_median": ws_m, "postgresql_median": pg_m, "ratio": ratio(ws_m, pg_m),
        "paired_ratios": [ratio(a, b) for a, b in zip(ws_tps, pg_tps)],
        "rows": [{"metric": "commits/s (median)", "walswitch": ws_m, "postgresql": pg_m,
                  "ratio": ratio(ws_m, pg_m), "better": "higher"}],
    }
