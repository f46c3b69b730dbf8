"""Isolation in the one-process backend: what a 16 MiB statement in one session costs others' commits.

``python -m bench.isolation [--seconds S] [--runs N]``

PostgreSQL forks a backend per connection; walswitch serves every session in one process with a
``selectors`` loop, so one session's huge statement could hold up everyone.  This measures it:
a committing session (one ``INSERT`` per transaction, autocommit, ``fsync = on``) records the
latency of each commit for S seconds, alone, then while another session (a separate process,
so the client side shares no GIL with the committer) sends 16 MiB statements back to back:

* ``select``: ``SELECT '<16 MiB literal>'`` (receive, parse, answer 16 MiB);
* ``insert``: ``INSERT INTO kv VALUES ('big', '<16 MiB>')`` (receive, parse, 16 MiB of WAL, apply).

Per scenario and run: p50, p99 and max of the committer's latency; reported: the median over runs,
and the difference from the baseline (the issue bounds the added latency, max included, at 100 ms).
The machine's load moves these figures a lot: compare two versions back to back.  Writes
bench-results/isolation.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from bench.common import ROOT, median, percentile, tempdir, walswitch_primary

BIG = 16 << 20
TITLE = "one session's 16 MiB statement vs another session's commit latency (one backend process)"


def big_statement(kind: str) -> str:
    payload = "x" * (BIG - 64)
    if kind == "select":
        return f"SELECT length('{payload}')"
    return f"INSERT INTO kv VALUES ('big', '{payload}')"


def big_sender(dsn: str, kind: str, stop: "mp.synchronize.Event", started: "mp.synchronize.Event",
               count: "mp.sharedctypes.Synchronized") -> None:
    import psycopg2
    c = psycopg2.connect(dsn)
    c.autocommit = True
    cur = c.cursor()
    sql = big_statement(kind)
    started.set()
    while not stop.is_set():
        cur.execute(sql)
        if cur.description:
            cur.fetchall()
        with count.get_lock():
            count.value += 1
    c.close()


def commit_latencies(srv, seconds: float) -> list[float]:
    c = srv.connect()
    cur = c.cursor()
    out = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        cur.execute("INSERT INTO kv VALUES (%s, 'v')", (f"c{i % 1000}",))
        out.append(time.perf_counter() - t0)
        i += 1
    c.close()
    return out


def one_run(srv, kind: str | None, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    stop, started, count = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    proc = None
    if kind is not None:
        proc = ctx.Process(target=big_sender, args=(srv.dsn(), kind, stop, started, count), daemon=True)
        proc.start()
        started.wait(60)
    try:
        lat = commit_latencies(srv, seconds)
    finally:
        stop.set()
        if proc is not None:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    return {"commits": len(lat), "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": max(lat) * 1000, "big_statements": count.value}


def run(seconds: float = 5.0, runs: int = 3) -> dict:
    results: dict[str, list[dict]] = {"baseline": [], "select": [], "insert": []}
    with tempdir("isolation") as base, walswitch_primary(base, conf={"max_wal_size": 64}) as srv:
        for _ in range(runs):
            for kind in ("baseline", "select", "insert"):
                results[kind].append(one_run(srv, None if kind == "baseline" else kind, seconds))
    summary: dict = {"title": TITLE, "seconds_per_run": seconds, "runs": runs, "scenarios": {}}
    for kind, rs in results.items():
        summary["scenarios"][kind] = {
            "p50_ms": median([r["p50_ms"] for r in rs]), "p99_ms": median([r["p99_ms"] for r in rs]),
            "max_ms": median([r["max_ms"] for r in rs]), "commits": median([r["commits"] for r in rs]),
            "big_statements": median([r["big_statements"] for r in rs]), "runs": rs}
    b = summary["scenarios"]["baseline"]
    for kind in ("select", "insert"):
        s = summary["scenarios"][kind]
        s["added_p50_ms"] = s["p50_ms"] - b["p50_ms"]
        s["added_p99_ms"] = s["p99_ms"] - b["p99_ms"]
        s["added_max_ms"] = s["max_ms"] - b["max_ms"]
    summary["table"] = table(summary)
    return summary


def table(summary: dict) -> str:
    lines = [f"{'scenario':10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'+p50':>7} {'+p99':>7} {'+max':>7} "
             f"{'commits':>8} {'16MiB stmts':>11}"]
    for kind, s in summary["scenarios"].items():
        lines.append(f"{kind:10} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['max_ms']:8.1f} "
                     f"{s.get('added_p50_ms', 0):7.2f} {s.get('added_p99_ms', 0):7.2f} "
                     f"{s.get('added_max_ms', 0):7.1f} {s['commits']:8.0f} {s['big_statements']:11.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=TITLE)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    summary = run(a.seconds, a.runs)
    print(TITLE)
    print(summary["table"])
    out = Path(ROOT, "bench-results")
    out.mkdir(exist_ok=True)
    (out / "isolation.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
