"""Catch-up speed from the archive: a standby restores 40 archived 1 MB segments with a ``cp``
restore_command, no primary reachable, walswitch against PostgreSQL 15 in the same run.

For each system, once:
  1. a primary with 1 MB segments (``walswitch init --wal-segsize 1`` / ``initdb --wal-segsize=1``),
     ``archive_mode = on``, ``archive_command = 'test ! -f ARCHIVE/%f && cp %p ARCHIVE/%f'``;
  2. a base backup of it (``walswitch basebackup -R`` / ``pg_basebackup -R -X stream -c fast``), kept
     pristine;
  3. ``pg_switch_wal()``, then the same load on both: multi-row INSERTs into ``kv`` of 200-byte values
     (50 rows per transaction) until the 40th segment after the switch is reached, then ``pg_switch_wal()``
     (its result is the target LSN); wait until the archiver has archived the last segment; stop the primary.
Then, per run, alternating the systems: copy the pristine backup, set ``restore_command = 'cp ARCHIVE/%f %p'``,
``primary_conninfo`` to a port where nothing listens, start it, and time from the start command to
the moment its replay LSN reaches the target (walswitch: ``walswitch status --json``'s replay_lsn,
read in-process every 20 ms; PostgreSQL: ``pg_last_wal_replay_lsn()`` on the hot standby every 20 ms).
MB/s = the 40 loaded segments (40 MiB) / that time; the start-up of each server is included, as is
the restore of the backup's own segment(s), for both.

``python -m bench.catchup [--runs N] [--json PATH]`` runs it alone (``make bench`` runs it with 5 runs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from pathlib import Path

from bench.common import (BenchError, Server, _append_conf, copytree_as, format_lsn, free_port, give_to_postgres,
                          median, parse_lsn, pg_basebackup, pg_init, pg_server, pg_start, pg_stop, ratio, tempdir,
                          wait_for, walswitch_server, ws_basebackup, ws_init, ws_start, ws_status, ws_stop)

TITLE = "archive catch-up MB/s: standby restores 40 archived 1 MB segments (cp restore_command, no primary)"

SEG = 1024 * 1024
NSEG = 40
VALUE = "x" * 200
ROWS_PER_TXN = 50
POLL = 0.02


def load_segments(primary: Server) -> tuple[int, int, int]:
    """Fill NSEG fresh segments with INSERTs; return (first segment start, switch LSN, rows)."""
    conn = primary.connect(autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_switch_wal()")
        cur.execute("SELECT pg_current_wal_lsn()")
        first = parse_lsn(cur.fetchone()[0])
        first -= first % SEG
        stop_at = first + (NSEG - 1) * SEG + SEG // 2      # well inside the NSEG-th segment
        i = 0
        while True:
            args: list[str] = []
            for _ in range(ROWS_PER_TXN):
                args += [f"catchup-{i:09d}", VALUE]
                i += 1
            cur.execute("INSERT INTO kv VALUES " + ",".join(["(%s, %s)"] * ROWS_PER_TXN), args)
            cur.execute("SELECT pg_current_wal_lsn()")
            if parse_lsn(cur.fetchone()[0]) >= stop_at:
                break
        cur.execute("SELECT pg_switch_wal()")
        switch = parse_lsn(cur.fetchone()[0])
    finally:
        conn.close()
    if not first + (NSEG - 1) * SEG <= switch < first + NSEG * SEG:
        raise BenchError(f"load did not end in segment {NSEG}: first {format_lsn(first)}, switch {format_lsn(switch)}")
    return first, switch, i


def seg_name(lsn: int, tli: int = 1) -> str:
    segno = lsn // SEG
    return f"{tli:08X}{segno // (0x100000000 // SEG):08X}{segno % (0x100000000 // SEG):08X}"


def wait_archived(primary: Server, archive: Path, first: int, switch: int) -> None:
    names = [seg_name(first + k * SEG) for k in range(NSEG)]
    last = seg_name(switch)
    if last != names[-1]:
        raise BenchError(f"switch LSN {format_lsn(switch)} is in {last}, not in {names[-1]}")
    wait_for(lambda: (primary.datadir / "pg_wal" / "archive_status" / f"{last}.done").exists()
             and all((archive / n).exists() and (archive / n).stat().st_size == SEG for n in names),
             120, f"{primary.kind} archiving {names[0]}..{last}")


# ---------------------------------------------------------------- one-time set-up
def prepare_walswitch(base: Path) -> dict:
    archive = base / "ws_archive"
    archive.mkdir()
    datadir, port = base / "ws_primary", free_port()
    ws_init(datadir, port, 1, {"archive_mode": "on",
                               "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f"})
    with walswitch_server(datadir, port) as p:
        ws_basebackup(p, base / "ws_backup")
        first, switch, rows = load_segments(p)
        wait_archived(p, archive, first, switch)
    return {"archive": archive, "backup": base / "ws_backup", "first": first, "switch": switch, "rows": rows}


def prepare_postgresql(base: Path) -> dict:
    archive = base / "pg_archive"
    archive.mkdir()
    give_to_postgres(archive, 0o755)
    datadir, port = base / "pg_primary", free_port()
    pg_init(base, datadir, port, 1, {"archive_mode": "on",
                                     "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f"})
    with pg_server(datadir, port) as p:
        p.query("CREATE TABLE kv (key text PRIMARY KEY, value text)")
        pg_basebackup(p, base, base / "pg_backup")
        first, switch, rows = load_segments(p)
        wait_archived(p, archive, first, switch)
    return {"archive": archive, "backup": base / "pg_backup", "first": first, "switch": switch, "rows": rows}


# ---------------------------------------------------------------- one timed catch-up
def _is_segment(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def catchup_walswitch(base: Path, prep: dict, k: int) -> dict:
    datadir = base / f"ws_standby{k}"
    copytree_as(prep["backup"], datadir, postgres=False)
    port = free_port()
    _append_conf(datadir / "walswitch.conf", {
        "port": port, "restore_command": f"cp {prep['archive']}/%f %p", "wal_retrieve_retry_interval": "1s",
        "primary_conninfo": f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2"})
    srv = Server("walswitch", datadir, port, "standby")
    target = prep["switch"]
    try:
        t0 = time.monotonic()
        ws_start(srv, wait_ready=False)
        last: list = [None]

        def reached() -> bool:
            st = ws_status(datadir)
            last[0] = st.get("replay_lsn")
            return (parse_lsn(last[0]) or 0) >= target
        try:
            wait_for(reached, 300, f"walswitch standby replay to {format_lsn(target)}", POLL)
        except BenchError as e:
            raise BenchError(f"{e}; last replay_lsn {last[0]}\n{srv.log_tail(15)}") from None
        seconds = time.monotonic() - t0
        # Untimed: what it did (restored segments, rows visible), to show both did the same work.
        from utils.events import read_events
        restored = sum(1 for e in read_events(str(datadir))
                       if e.get("kind") == "restore" and e.get("ok") and _is_segment(str(e.get("file"))))
        try:
            rows = srv.query("SELECT count(*) FROM kv")[0][0]
        except Exception as e:  # noqa: BLE001 - recorded, not asserted
            rows = f"error: {e}".strip()
        return {"seconds": seconds, "restored_segments": restored, "standby_rows": rows}
    finally:
        ws_stop(srv)


def catchup_postgresql(base: Path, prep: dict, k: int) -> dict:
    import psycopg2
    datadir = base / f"pg_standby{k}"
    copytree_as(prep["backup"], datadir, postgres=True)
    port = free_port()
    _append_conf(datadir / "postgresql.auto.conf", {
        "port": port, "restore_command": f"cp {prep['archive']}/%f %p", "wal_retrieve_retry_interval": "1s",
        "primary_conninfo": f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2",
        "archive_mode": "off", "hot_standby": True})
    srv = Server("postgresql", datadir, port, "standby")
    target = prep["switch"]
    conn = None
    try:
        t0 = time.monotonic()
        pg_start(srv, wait=False)
        srv.remember_processes()

        def reached() -> bool:
            nonlocal conn
            if conn is None:
                try:
                    conn = psycopg2.connect(srv.dsn(connect_timeout=2))
                    conn.autocommit = True
                except psycopg2.OperationalError:
                    return False
            with conn.cursor() as cur:
                cur.execute("SELECT pg_last_wal_replay_lsn()")
                return (parse_lsn(cur.fetchone()[0]) or 0) >= target
        try:
            wait_for(reached, 300, f"PostgreSQL standby replay to {format_lsn(target)}", POLL)
        except BenchError as e:
            raise BenchError(f"{e}\n{srv.log_tail(15)}") from None
        seconds = time.monotonic() - t0
        log = (datadir / "server.log").read_text(errors="replace")
        restored = len(re.findall(r'restored log file "[0-9A-F]{24}" from archive', log))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM kv")
            rows = cur.fetchone()[0]
        return {"seconds": seconds, "restored_segments": restored, "standby_rows": rows}
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        pg_stop(srv)


def run(runs: int = 5) -> dict:
    mb = NSEG * SEG / 1e6
    per_run: dict[str, list[dict]] = {"walswitch": [], "postgresql": []}
    with tempdir("walswitch-bench-catchup-") as base:
        t = time.monotonic()
        wsp = prepare_walswitch(base)
        pgp = prepare_postgresql(base)
        prep_seconds = time.monotonic() - t
        for k in range(runs):
            per_run["walswitch"].append(catchup_walswitch(base, wsp, k))
            per_run["postgresql"].append(catchup_postgresql(base, pgp, k))
    secs = {s: [r["seconds"] for r in v] for s, v in per_run.items()}
    mbps = {s: [mb / x for x in v] for s, v in secs.items()}
    w, p = median(mbps["walswitch"]), median(mbps["postgresql"])
    rows_w = wsp["rows"] / median(secs["walswitch"])
    rows_p = pgp["rows"] / median(secs["postgresql"])
    return {
        "title": TITLE,
        "command": "standby from a base backup; restore_command = 'cp ARCHIVE/%f %p'; primary_conninfo -> closed "
                   "port; time from start to replay LSN >= the pg_switch_wal() after the 40th segment",
        "segments": NSEG, "mb": round(mb, 2), "prepare_seconds": round(prep_seconds, 1),
        "walswitch_rows_in_40_segments": wsp["rows"], "postgresql_rows_in_40_segments": pgp["rows"],
        "target_lsn": {"walswitch": format_lsn(wsp["switch"]), "postgresql": format_lsn(pgp["switch"])},
        "runs": per_run, "seconds": secs, "mbps": mbps,
        "walswitch_median": w, "postgresql_median": p, "ratio": ratio(w, p),
        "paired_ratios": [ratio(a, b) for a, b in zip(mbps["walswitch"], mbps["postgresql"])],
        "rows": [
            {"metric": f"catch-up MB/s ({NSEG} x 1 MB segments, median)", "walswitch": w, "postgresql": p,
             "ratio": ratio(w, p), "better": "higher"},
            {"metric": "catch-up rows/s (rows in those segments / median s)", "walswitch": rows_w,
             "postgresql": rows_p, "ratio": ratio(rows_w, rows_p), "better": "higher"},
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.catchup", description=TITLE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    doc = run(args.runs)
    for r in doc["rows"]:
        print(f"{r['metric']}: walswitch {r['walswitch']:.3f}, PostgreSQL 15 {r['postgresql']:.3f}, "
              f"ratio {r['ratio']:.3f}")
    print("seconds:", {k: [round(x, 3) for x in v] for k, v in doc["seconds"].items()})
    print("paired ratios:", [round(x, 3) for x in doc["paired_ratios"]])
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
