"""Commits per second with ``pgbench -n -M MODE -f script`` (4 clients, ``-j 2``, one INSERT per
transaction, fsync on) for MODE simple and prepared, walswitch against PostgreSQL 15 started by the
benchmark in the same run.

Both servers run the same script on the same ``kv(key text primary key, value text)`` table with
``fsync = on`` and ``synchronous_commit = on``; runs alternate between the two so that machine noise
hits both alike, after a short warm-up run on each.

``python -m bench.pgbench_tps --before DIR`` adds a third server: walswitch run from another checkout
of the code (e.g. ``git archive 04df7dd | tar -x -C DIR``), for a before/after figure in one run; a
mode the older code refuses (it had no extended protocol) is reported as refused.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
from pathlib import Path

from walswitch.compare import servers
from bench.common import PGBIN, BenchError, median, pg_primary, ratio, tempdir, walswitch_primary

TITLE = "commits/s, pgbench -n -M simple|prepared -f (4 clients, -j 2, 1 INSERT per transaction, fsync on)"
MODES = ("simple", "prepared")

SCRIPT = ("\\set k random(1, 1000000)\n"
          "INSERT INTO kv VALUES (:k, 'value-' || :k) ON CONFLICT (key) DO UPDATE SET value = excluded.value;\n")


def pgbench_cmd(server, script: Path, seconds: int, clients: int = 4, mode: str = "simple") -> list[str]:
    return [str(PGBIN / "pgbench"), "-n", "-M", mode, "-f", str(script), "-c", str(clients),
            "-j", "2", "-T", str(seconds), *server.dsn_args()]


def pgbench(server, script: Path, seconds: int, clients: int = 4, mode: str = "simple") -> float:
    r = subprocess.run(pgbench_cmd(server, script, seconds, clients, mode), capture_output=True, text=True,
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
    ws_tps: dict[str, list[float]] = {m: [] for m in MODES}
    pg_tps: dict[str, list[float]] = {m: [] for m in MODES}
    with tempdir("walswitch-bench-tps-") as base:
        script = base / "insert.sql"
        script.write_text(SCRIPT)
        script.chmod(0o644)
        with walswitch_primary(base) as ws, pg_primary(base) as pg:
            command = " ".join(pgbench_cmd(pg, Path("insert.sql"), seconds)).replace(str(pg.port), "PORT")
            pgbench(ws, script, warmup)
            pgbench(pg, script, warmup)
            for _ in range(runs):
                for mode in MODES:
                    ws_tps[mode].append(pgbench(ws, script, seconds, mode=mode))
                    pg_tps[mode].append(pgbench(pg, script, seconds, mode=mode))
    rows = []
    for mode in MODES:
        ws_m, pg_m = median(ws_tps[mode]), median(pg_tps[mode])
        rows.append({"metric": f"commits/s -M {mode} (median)", "walswitch": ws_m, "postgresql": pg_m,
                     "ratio": ratio(ws_m, pg_m), "better": "higher"})
    first = rows[0]
    return {
        "title": TITLE,
        "command": command,
        "script": SCRIPT,
        "runs": runs, "seconds_per_run": seconds,
        "walswitch_tps": ws_tps, "postgresql_tps": pg_tps,
        "walswitch_median": first["walswitch"], "postgresql_median": first["postgresql"], "ratio": first["ratio"],
        "rows": rows,
    }


@contextlib.contextmanager
def code_root(path: Path):
    """Start walswitch servers from another checkout: ``python -m walswitch.cli`` runs with cwd = path."""
    saved, servers.CODE_ROOT = servers.CODE_ROOT, path
    try:
        yield
    finally:
        servers.CODE_ROOT = saved


def before_after(before: Path, runs: int = 3, seconds: int = 10, warmup: int = 2) -> dict:
    """commits/s of this checkout ("after"), of ``before`` and of PostgreSQL 15, per pgbench mode."""
    out: dict = {"runs": runs, "seconds_per_run": seconds, "modes": {}}
    with tempdir("walswitch-bench-ba-") as base:
        script = base / "insert.sql"
        script.write_text(SCRIPT)
        script.chmod(0o644)
        with contextlib.ExitStack() as stack:
            after = stack.enter_context(walswitch_primary(base, "after"))
            with code_root(before):
                old = stack.enter_context(walswitch_primary(base, "before"))
            pg = stack.enter_context(pg_primary(base))
            servers = {"after": after, "before": old, "postgresql": pg}
            for mode in MODES:
                tps: dict[str, list[float]] = {k: [] for k in servers}
                refused: dict[str, str] = {}
                for name, srv in servers.items():
                    try:
                        pgbench(srv, script, warmup, mode=mode)
                    except BenchError as e:
                        refused[name] = str(e).splitlines()[0][:200]
                for _ in range(runs):
                    for name, srv in servers.items():
                        if name not in refused:
                            tps[name].append(pgbench(srv, script, seconds, mode=mode))
                out["modes"][mode] = {
                    "command": " ".join(pgbench_cmd(pg, Path("insert.sql"), seconds, mode=mode)).replace(
                        str(pg.port), "PORT"),
                    "tps": tps, "median": {k: median(v) for k, v in tps.items() if v}, "refused": refused}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another checkout of walswitch to compare against")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    print(json.dumps(before_after(a.before, a.runs, a.seconds) if a.before else run(a.runs, a.seconds), indent=2))
