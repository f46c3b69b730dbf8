"""``make bench``: run the benchmarks, print a table, write bench-results/<name>.json and summary.json.

``python -m bench.run [name ...]`` runs some of them; names: pgbench, waldump, lag200, lag1000, lagfull,
reconnect, catchup, compare, soak.  A name maps to ``module`` or ``module:argument`` (bench.lag's rate).

Every walswitch figure is the median of several runs and is quoted as a ratio (walswitch / PostgreSQL 15)
against PostgreSQL 15 doing the same work, started by the benchmark in the same run on the same machine.
A benchmark that fails is reported (and the others still run); the exit status is then 1.  Servers are
stopped even on failure or SIGTERM; anything that had to be killed or unlinked is listed at the end.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import psutil

from bench import common
from bench.common import PGBIN, ROOT

BENCHES = {
    "pgbench": "bench.pgbench_tps",
    "waldump": "bench.waldump_speed",
    "lag200": "bench.lag:200",
    "lag1000": "bench.lag:1000",
    "lagfull": "bench.lag:0",
    "reconnect": "bench.reconnect",
    "catchup": "bench.catchup",
    "isolation": "bench.isolation",
    "compare": "bench.compare",
    "soak": "bench.soak",
}


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def machine() -> dict:
    def out(argv):
        with contextlib.suppress(Exception):
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        return None
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "postgresql": out([str(PGBIN / "postgres"), "--version"]),
            "git_commit": out(["git", "rev-parse", "--short", "HEAD"]),
            "git_dirty": bool(out(["git", "status", "--porcelain"]))}


def sweep_processes() -> None:
    """Last safety net: any process still running out of a benchmark scratch directory is killed."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if p.pid != me and "/walswitch-bench-" in " ".join(p.info["cmdline"] or []):
                found.append(p)
    for p in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            common.LEFTOVERS.append(f"sweep: killed pid {p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
    psutil.wait_procs(found, timeout=5)


def print_table(results: dict) -> None:
    head = ("benchmark", "metric", "walswitch", "PostgreSQL 15", "ratio ws/pg", "better")
    rows = [head]
    for name, res in results.items():
        if "error" in res:
            rows.append((name, "FAILED: " + res["error"].splitlines()[0][:70], "", "", "", ""))
            continue
        for r in res.get("rows", []):
            rows.append((name, r["metric"], _fmt(r["walswitch"]), _fmt(r["postgresql"]), _fmt(r["ratio"]),
                         r.get("better", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"bench.run: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    common.install_signal_handlers()
    out_dir = ROOT / "bench-results"
    os.makedirs(out_dir, exist_ok=True)
    results: dict[str, dict] = {}
    status = 0
    t_all = time.monotonic()
    try:
        for name in names:
            modname, _, arg = BENCHES[name].partition(":")
            mod = __import__(modname, fromlist=["run"])
            print(f"== {name}: {mod.TITLE}", flush=True)
            t0 = time.monotonic()
            try:
                res = mod.run(int(arg)) if arg else mod.run()
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - report it, run the others
                status = 1
                res = {"title": mod.TITLE, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                print(f"   FAILED: {res['error']}", flush=True)
            res["seconds"] = round(time.monotonic() - t0, 1)
            res["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            results[name] = res
            with open(out_dir / f"{name}.json", "w") as f:
                json.dump(res, f, indent=2, default=str)
            for r in res.get("rows", []):
                print(f"   {r['metric']}: walswitch {_fmt(r['walswitch'])}, PostgreSQL 15 {_fmt(r['postgresql'])}, "
                      f"ratio {_fmt(r['ratio'])} ({r.get('better', '')} is better)", flush=True)
            if res.get("table"):
                print(res["table"], flush=True)
            print(f"   ({res['seconds']} s)", flush=True)
    except KeyboardInterrupt as e:
        status = 130
        print(f"   interrupted ({e}); servers stopped", flush=True)
    finally:
        sweep_processes()
    summary = {"machine": machine(), "total_seconds": round(time.monotonic() - t_all, 1),
               "leftovers_cleaned": list(common.LEFTOVERS),
               "results": {n: {k: v for k, v in r.items() if k != "traceback"} for n, r in results.items()}}
    with open(out_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print()
    print_table(results)
    print(f"\nratio = walswitch / PostgreSQL 15, medians of the runs; total {summary['total_seconds']} s; "
          f"JSON in {out_dir.relative_to(ROOT)}/")
    if common.LEFTOVERS:
        print("cleanup had to kill or unlink:", *common.LEFTOVERS, sep="\n  ")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
