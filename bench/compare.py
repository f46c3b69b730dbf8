"""``walswitch compare`` as a benchmark, and the prefetch catch-up measurement (DESIGN.md section 9).

Part 1 is a thin use of the product: ``walswitch.compare.command.compare``
runs scenarios/restart.toml and scenarios/outage.toml on the three approaches
and, when PostgreSQL 15 is installed, on a real PostgreSQL pair beside them
(medians of ``runs``); the tables, ``bench-results/compare-<scenario>.json``
and ``bench-results/compare-<scenario>.png`` are the product's own.

Part 2 measures ``walreceiver_restore_prefetch``: catch-up of 40 archived
segments with a 50 ms restore latency, prefetch 0 against 4, on one archive
per row size (200-byte and 4 kB single-row transactions from 4 writers), runs
alternating, medians of 5 (``python -m bench.compare prefetch`` runs this part
alone).
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
import time
from pathlib import Path

from rich.console import Console

from bench.common import (ROOT, Server, free_port, median, tempdir, walswitch_server, ws_basebackup, ws_init,
                          ws_start, ws_status, ws_stop)
from utils.events import read_events
from walswitch.compare import pgsystem
from walswitch.compare.command import APPROACHES, compare
from xlog.lsn import parse_lsn

TITLE = "walswitch compare (restart, outage; three approaches and PostgreSQL 15) and prefetch catch-up"
SCENARIOS = [ROOT / "scenarios" / "restart.toml", ROOT / "scenarios" / "outage.toml"]
SEG = 1024 * 1024


def wait(pred, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def events(datadir: Path) -> list[dict]:
    return read_events(str(datadir))


def approaches(runs: int = 3) -> tuple[dict, str]:
    """The product's comparison; (JSON document without timelines, table text)."""
    buf = io.StringIO()
    con = Console(file=buf, width=160, force_terminal=False, color_system=None)
    doc, _code = compare([str(p) for p in SCENARIOS], APPROACHES, pgsystem.available() is None, runs,
                         ROOT / "bench-results", con, Console(file=io.StringIO()))
    for sc in doc["scenarios"]:
        for s in sc["systems"].values():
            s.pop("timeline", None)
    return doc, buf.getvalue()

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


def run(prefetch_runs: int = 5, runs: int = 3, with_approaches: bool = True) -> dict:
    results: dict = {}
    text = ""
    if with_approaches:
        results["compare"], text = approaches(runs)
    with tempdir("walswitch-bench-compare-") as base:
        pf, pf_lines = prefetch_speedup(base, prefetch_runs)
    results.update(pf)
    results["table"] = text + "\n".join(pf_lines)
    return results


if __name__ == "__main__":
    # python -m bench.compare | python -m bench.compare prefetch
    import sys
    r = run(with_approaches=sys.argv[1:] != ["prefetch"])
    print(r["table"])
    print(json.dumps({k: v for k, v in r.items() if k not in ("compare", "table")}, indent=2))
