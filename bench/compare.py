"""The three coordination approaches on the same scripted run (issue 4's benchmark; DESIGN.md section 9).

Per approach, one primary (1 MB segments, archived with ``cp``) and one
standby whose restore_command has a 50 ms latency (``sleep 0.05; cp``), the
same settings otherwise.  The script:

1. steady load (4 writer threads) for ``steady`` seconds, sampling
   ``pg_stat_replication.replay_lag`` on the primary every 100 ms;
2. primary restart (immediate stop, start at once);
3. a ``outage``-second outage (immediate stop, wait, start), the load resuming after;
4. catch up and compare the data (invariant violations counted).

Figures per approach, from the standby's events: restore_command calls (and
failed ones, and who ran them), bytes fetched twice (a walreceiver restarting
below what it had flushed, plus restored segments the standby already had
whole), seconds from the primary's return (its postmaster reaching RUN) to the
standby streaming again, from both servers' events (after the restart and after
the outage), replay lag p50/p99 under steady load.  A PNG timeline of states and
positions per approach goes to bench-results/compare-timeline.png (bench/timeline.py).

A second part measures ``walreceiver_restore_prefetch``: catch-up of 40
archived segments with a 50 ms restore latency, prefetch 0 against 4, on
one archive per row size (200-byte and 4 kB single-row transactions from 4
writers), runs alternating, medians of 5 (``python -m bench.compare prefetch``
runs this part alone).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

from bench.common import (ROOT, Server, free_port, median, percentile, tempdir, walswitch_server, ws_basebackup,
                          ws_init, ws_start, ws_status, ws_stop)
from bench.timeline import Sampler, plot
from xlog.lsn import parse_lsn

TITLE = "the three coordination approaches on one scripted run (steady load, restart, outage, 50 ms archive)"
APPROACHES = ["stop_walreceiver", "concurrent", "walreceiver_restores"]
SEG = 1024 * 1024


def events(datadir: Path) -> list[dict]:
    out = []
    try:
        with open(datadir / "log" / "events.jsonl", encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def lag_seconds(v) -> float | None:
    """replay_lag: psycopg2 gives a timedelta (interval text is accepted too)."""
    if v is None:
        return None
    if hasattr(v, "total_seconds"):
        return v.total_seconds()
    h, m, s = str(v).split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


class Load:
    """Writer threads against the primary; they survive its restarts (reconnect, retry)."""

    def __init__(self, primary: Server, clients: int = 4):
        self.primary = primary
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.committed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, idx: int) -> None:
        n = 0
        conn = None
        while not self.stop.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                continue
            try:
                if conn is None:
                    conn = self.primary.connect(connect_timeout=2)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"c{idx}-{n}", "v" * 200))
                n += 1
                with self.lock:
                    self.committed += 1
            except Exception:  # noqa: BLE001 - the primary is away on purpose
                conn = None
                time.sleep(0.1)
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def streaming(standby: Path) -> bool:
    st = ws_status(standby)
    return st.get("walreceiver_state") == "streaming" and st.get("recovery_state") == "streaming"


def wait(pred, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def fetched_twice(evs: list[dict]) -> int:
    """Bytes the standby fetched although it already had them."""
    twice = 0
    high = 0                       # highest flushed position any walreceiver reached
    whole: set[str] = set()        # segments the standby had whole (streamed or restored)
    for e in evs:
        k = e["kind"]
        if k == "walreceiver_connect" and high:
            twice += max(0, high - parse_lsn(e["start_lsn"]))
        elif k == "walreceiver_disconnect" and e.get("flushed_lsn"):
            high = max(high, parse_lsn(e["flushed_lsn"]))
        elif k == "segment_completed":
            whole.add(e["file"])
            high = max(high, (int(e["file"][8:16], 16) * 0x100000000 // SEG + int(e["file"][16:], 16) + 1) * SEG)
        elif k == "restore" and e.get("ok") and len(e.get("file", "")) == 24:
            if e["file"] in whole:
                twice += e.get("bytes") or SEG
            whole.add(e["file"])
    return twice


def back_to_streaming(pdir: Path, sdir: Path) -> float | None:
    """Seconds from the primary's latest return (its postmaster reaching RUN) until the standby
    streams again: walreceiver STREAMING and the startup in STREAMING, whichever is later.

    From both servers' events (one monotonic clock on one machine), so that neither
    the time ``walswitch start`` takes to return nor polling is counted.
    """
    runs = [e["mono"] for e in events(pdir) if e["kind"] == "pm_state" and e.get("to") == "RUN"]
    if not runs:
        return None
    ready = runs[-1]
    evs = events(sdir)
    wr = [e["mono"] for e in evs if e["kind"] == "walreceiver_state" and e.get("to") == "streaming"
          and e["mono"] >= ready]
    if not wr:
        return None
    rec = [e for e in evs if e["kind"] == "recovery_state"]
    before = [e for e in rec if e["mono"] <= wr[0]]
    if before and before[-1].get("to") == "streaming":
        return wr[0] - ready                      # the startup never left STREAMING
    after = [e["mono"] for e in rec if e["mono"] > wr[0] and e.get("to") == "streaming"]
    return (after[0] if after else wr[0]) - ready


def run_one(base: Path, approach: str, steady: float, outage: float) -> dict:
    archive = base / f"archive-{approach}"
    archive.mkdir()
    pdir, sdir = base / f"p-{approach}", base / f"s-{approach}"
    pport = free_port()
    ws_init(pdir, pport, 1, {"archive_mode": "on", "archive_command": f"cp %p {archive}/%f",
                            "wal_keep_size": 0, "checkpoint_timeout": "30s"})
    out: dict = {"approach": approach}
    with walswitch_server(pdir, pport) as primary:
        sport = ws_basebackup(primary, sdir, {
            "restore_command": f"sleep 0.05; cp {archive}/%f %p", "standby_wal_coordination": approach,
            "wal_retrieve_retry_interval": "1s", "wal_receiver_status_interval": "1s"})
        standby = Server("walswitch", sdir, sport, "standby")
        sampler = Sampler(sdir)
        try:
            ws_start(standby, wait_ready=False)
            sampler.__enter__()
            if wait(lambda: streaming(sdir), 60) is None:
                raise RuntimeError(f"{approach}: the standby never streamed")
            with Load(primary):
                lags = []
                t_end = time.monotonic() + steady
                while time.monotonic() < t_end:
                    try:
                        rows = primary.query("SELECT replay_lag FROM pg_stat_replication")
                        for (lag,) in rows:
                            v = lag_seconds(lag)
                            if v is not None:
                                lags.append(v)
                    except Exception:  # noqa: BLE001
                        pass
                    time.sleep(0.1)
                out["lag_p50_ms"] = percentile(lags, 50) * 1000 if lags else None
                out["lag_p99_ms"] = percentile(lags, 99) * 1000 if lags else None
                out["lag_samples"] = len(lags)
                # Primary restart.
                sampler.mark("primary restart")
                ws_stop(primary)
                ws_start(primary)
                wait(lambda: streaming(sdir), 60)
                out["restart_to_streaming_s"] = back_to_streaming(pdir, sdir)
                # Outage.
                sampler.mark("primary stopped")
                ws_stop(primary)
                time.sleep(outage)  # the scripted outage itself, not a wait for an event
                sampler.mark("primary back")
                ws_start(primary)
                wait(lambda: streaming(sdir), 120)
                out["outage_to_streaming_s"] = back_to_streaming(pdir, sdir)
                time.sleep(3)       # a little load after the return
            flush = parse_lsn(primary.query("SELECT pg_current_wal_lsn()")[0][0])
            wait(lambda: (parse_lsn(ws_status(sdir).get("replay_lsn") or "0/0") or 0) >= flush, 60)
            prim = dict(primary.query("SELECT key, value FROM kv"))
            stby = dict(standby.query("SELECT key, value FROM kv"))
            out["invariant_violations"] = int(prim != stby)
            out["rows"] = len(prim)
            evs = events(sdir)
            restores = [e for e in evs if e["kind"] == "restore"]
            out["restore_calls"] = len(restores)
            out["restore_failed"] = sum(1 for e in restores if not e["ok"])
            out["restore_by"] = sorted({e.get("by", "?") for e in restores})
            out["fetched_twice_bytes"] = fetched_twice(evs)
            out["crash_restarts"] = sum(1 for e in evs if e["kind"] == "crash_restart")
            sampler.__exit__()
            out["timeline"] = sampler.record(evs)
        finally:
            sampler.__exit__()
            ws_stop(standby)
    return out


def prefetch_archive(base: Path, value_size: int, segments: int = 40, writers: int = 4) -> tuple[Path, int]:
    """An archive of `segments` 1 MB segments of single-row transactions, and a standby template.

    The template is a base backup taken before the load (so that catching up
    means restoring every segment), set up for ``walreceiver_restores`` with a
    50 ms restore_command and a primary that is never there.  Returns (template
    directory, end LSN of the WAL to replay).
    """
    archive = base / "archive"
    archive.mkdir()
    pdir, template = base / "primary", base / "standby-template"
    pport = free_port()
    ws_init(pdir, pport, 1, {"archive_mode": "on", "archive_command": f"cp %p {archive}/%f"})
    with walswitch_server(pdir, pport) as primary:
        ws_basebackup(primary, template, {
            "restore_command": f"sleep 0.05; cp {archive}/%f %p", "standby_wal_coordination": "walreceiver_restores",
            "primary_conninfo": "host=127.0.0.1 port=1 connect_timeout=1", "wal_retrieve_retry_interval": "1s"})
        start = parse_lsn(primary.query("SELECT pg_current_wal_lsn()")[0][0])
        target = start + segments * SEG
        done = threading.Event()
        errors: list[BaseException] = []

        def writer(w: int) -> None:
            try:
                with contextlib.closing(primary.connect()) as c, c.cursor() as cur:
                    i = 0
                    while not done.is_set():
                        for _ in range(100):
                            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"w{w}-{i}", "v" * value_size))
                            i += 1
                        cur.execute("SELECT pg_current_wal_lsn()")
                        if parse_lsn(cur.fetchone()[0]) >= target:
                            done.set()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                done.set()

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        primary.query("SELECT pg_switch_wal()")
        end = parse_lsn(primary.query("SELECT pg_current_wal_lsn()")[0][0])
        if wait(lambda: not [f for f in (pdir / "pg_wal" / "archive_status").iterdir() if f.suffix == ".ready"],
                120) is None:
            raise RuntimeError("the archiver did not catch up")
    return template, end


def prefetch_catchup(template: Path, run_dir: Path, prefetch: int, end: int) -> float:
    """Seconds from the startup entering standby mode until replay reached `end` (one run, a fresh copy)."""
    shutil.copytree(template, run_dir, symlinks=True)
    conf = run_dir / "walswitch.conf"
    with open(conf, "a", encoding="utf-8") as f:
        f.write(f"walreceiver_restore_prefetch = {prefetch}\n")      # the last setting wins
    port = int(next(line.split("=")[1] for line in reversed(conf.read_text().splitlines())
                    if line.split("=")[0].strip() == "port"))
    standby = Server("walswitch", run_dir, port, "standby")
    try:
        t0 = time.monotonic()
        ws_start(standby, wait_ready=False)
        if wait(lambda: (parse_lsn(ws_status(run_dir).get("replay_lsn") or "0/0") or 0) >= end - SEG, 300) is None:
            raise RuntimeError(f"prefetch {prefetch}: catch-up did not finish")
        t_end = time.monotonic()
        # From the startup process entering standby mode (event clock = time.monotonic),
        # so that starting the server is not counted.
        begin = [e["mono"] for e in events(run_dir) if e["kind"] == "standby_start"]
        return t_end - (begin[0] if begin else t0)
    finally:
        ws_stop(standby)
        shutil.rmtree(run_dir, ignore_errors=True)


def prefetch_speedup(base: Path, runs: int = 5) -> tuple[dict, list[str]]:
    """walreceiver_restore_prefetch 0 against 4 on the same archive, alternating runs, per row size."""
    results: dict = {}
    lines = []
    # 200-byte rows: replay (Python decoding, SQLite) costs about half the restore latency
    # per segment; 4 kB rows: far less, the restore latency is nearly all.
    for size in (200, 4096):
        sub = base / f"prefetch-{size}"
        sub.mkdir()
        template, end = prefetch_archive(sub, size)
        times: dict[int, list[float]] = {0: [], 4: []}
        for r in range(runs):
            for pf in (0, 4):
                times[pf].append(prefetch_catchup(template, sub / f"run-{pf}-{r}", pf, end))
        for pf in (0, 4):
            results[f"prefetch{pf}_{size}B_catchup_s"] = times[pf]
            results[f"prefetch{pf}_{size}B_median_s"] = median(times[pf])
        sp = results[f"prefetch0_{size}B_median_s"] / results[f"prefetch4_{size}B_median_s"]
        results[f"prefetch_speedup_{size}B"] = sp
        lines.append(f"walreceiver_restores catch-up of 40 segments ({size}-byte rows), 50 ms restore latency: "
                     f"prefetch 0 {results[f'prefetch0_{size}B_median_s']:.2f} s, prefetch 4 "
                     f"{results[f'prefetch4_{size}B_median_s']:.2f} s (median of {runs}; x{sp:.2f})")
    return results, lines


def run(steady: float = 15.0, outage: float = 20.0, prefetch_runs: int = 5, approaches: bool = True) -> dict:
    results: dict = {"approaches": []}
    with tempdir("walswitch-bench-compare-") as base:
        lines = []
        if approaches:
            for a in APPROACHES:
                results["approaches"].append(run_one(base, a, steady, outage))
            lines.append(plot(results["approaches"], ROOT / "bench-results" / "compare-timeline.png"))
        pf, pf_lines = prefetch_speedup(base, prefetch_runs)
        results.update(pf)
        lines += pf_lines
    results["table"] = table(results) + "\n" + "\n".join(lines)
    return results


def table(res: dict) -> str:
    cols = ["approach", "restore_calls", "restore_failed", "fetched_twice_bytes", "restart_to_streaming_s",
            "outage_to_streaming_s", "lag_p50_ms", "lag_p99_ms", "invariant_violations"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["approaches"]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m bench.compare [steady outage] | python -m bench.compare prefetch
    import sys
    if sys.argv[1:] == ["prefetch"]:
        r = run(approaches=False)
    else:
        r = run(*(float(a) for a in sys.argv[1:3]))
    print(r["table"])
    print(json.dumps({k: v for k, v in r.items() if k not in ("approaches", "table")}, indent=2))
