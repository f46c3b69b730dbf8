"""Commits per second with ``pgbench -n -M simple -f`` (4 clients, one INSERT per transaction, fsync on),
walswitch against PostgreSQL 15 in the same run."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bench.common import PGBIN, median, pg_primary, tempdir, walswitch_primary

SCRIPT = "\\set k random(1, 1000000)\nINSERT INTO kv VALUES (:k, 'value-' || :k) ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n"
SCRIPT_WS = "\\set k random(1, 1000000)\nINSERT INTO kv VALUES (:k, 'value') ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n"


def pgbench(server, script: Path, seconds: int, clients: int = 4) -> float:
    r = subprocess.run([str(PGBIN / "pgbench"), "-n", "-M", "simple", "-f", str(script), "-c", str(clients),
                        "-j", "2", "-T", str(seconds), *server.dsn_args()], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"pgbench on {server.kind}: {r.stderr.strip()}")
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", r.stdout)
    if not m:
        raise RuntimeError(f"pgbench output not understood: {r.stdout}")
    return float(m.group(1))


def run(runs: int = 3, seconds: int = 10) -> dict:
    with tempdir("walswitch-bench-") as base:
        script = base / "insert.sql"
        script.write_text(SCRIPT_WS)
        script.chmod(0o644)
        ws_tps, pg_tps = [], []
        with walswitch_primary(base) as ws, pg_primary(base) as pg:
            for _ in range(runs):
                # Interleave the two servers so that machine noise hits both alike.
                ws_tps.append(pgbench(ws, script, seconds))
                pg_tps.append(pgbench(pg, script, seconds))
    out = {"walswitch_tps": ws_tps, "postgresql_tps": pg_tps,
           "walswitch_median": median(ws_tps), "postgresql_median": median(pg_tps)}
    out["ratio"] = out["walswitch_median"] / out["postgresql_median"]
    return out
