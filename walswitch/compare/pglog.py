"""A PostgreSQL 15 server log, read into the trace shape of trace.py (its lines mapped onto our names).

The servers run with ``log_line_prefix = '%m [%p] '`` and, on the standby,
``log_min_messages = debug2``: PostgreSQL 15 logs "switched WAL source" and
"could not restore file" at DEBUG2 (checked on 15.18), the rest at LOG or FATAL.

=====================================================  ==================================================
PostgreSQL 15 line                                     trace entry (our names)
=====================================================  ==================================================
entering standby mode                                  recovery_state archive_recovery
switched WAL source from X to stream after failure     wal_source stream; recovery_state wait_retry (its
                                                       startup now waits for the walreceiver, as ours
                                                       does in WAIT_RETRY)
switched WAL source from X to archive|pg_wal after ..  wal_source archive|pg_wal; recovery_state
                                                       retry_archive
started streaming WAL from primary at L on timeline T  stream_start L; recovery_state streaming
restarted WAL streaming at L on timeline T             stream_start L; recovery_state streaming
could not receive data from WAL stream                 stream_lost
replication terminated by primary server               stream_lost
terminating walreceiver ...                            stream_lost
could not connect to the primary server                connect_failed
restored log file "F" from archive                     restore F ok (by startup)
could not restore file "F" from archive                restore F failed (by startup)
received promote request                               recovery_state promoting
all server processes terminated; reinitializing        crash_restart
database system is ready to accept connections         primary_ready (a primary's log)
=====================================================  ==================================================
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from xlog.lsn import parse_lsn

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\w+) \[(\d+)\] (\w+):  (.*)$")

RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^entering standby mode"), "standby_mode"),
    (re.compile(r"^switched WAL source from (\w+) to (\w+) after"), "switched"),
    (re.compile(r"^started streaming WAL from primary at ([0-9A-F]+/[0-9A-F]+) on timeline"), "stream_start"),
    (re.compile(r"^restarted WAL streaming at ([0-9A-F]+/[0-9A-F]+) on timeline"), "stream_start"),
    (re.compile(r"^(could not receive data from WAL stream|replication terminated by primary server|"
                r"terminating walreceiver)"), "stream_lost"),
    (re.compile(r"^could not connect to the primary server"), "connect_failed"),
    (re.compile(r'^restored log file "([^"]+)" from archive'), "restored"),
    (re.compile(r'^could not restore file "([^"]+)" from archive'), "restore_failed"),
    (re.compile(r"^received promote request"), "promote"),
    (re.compile(r"^all server processes terminated; reinitializing"), "crash_restart"),
    (re.compile(r"^database system is ready to accept connections"), "ready"),
]


def _when(stamp: str, zone: str) -> float:
    t = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
    if zone not in ("UTC", "GMT"):
        raise ValueError(f"log time zone {zone}: the comparison expects log_timezone = UTC")
    return t.replace(tzinfo=dt.timezone.utc).timestamp()


def _entries(kind: str, m: re.Match, t: float, server: str) -> list[dict]:
    base = {"t": t, "server": server}
    if kind == "standby_mode":
        return [{**base, "kind": "recovery_state", "to": "archive_recovery"}]
    if kind == "switched":
        to = m.group(2)
        return [{**base, "kind": "wal_source", "to": to},
                {**base, "kind": "recovery_state", "to": "wait_retry" if to == "stream" else "retry_archive"}]
    if kind == "stream_start":
        return [{**base, "kind": "stream_start", "start_lsn": parse_lsn(m.group(1))},
                {**base, "kind": "recovery_state", "to": "streaming"}]
    if kind == "stream_lost":
        return [{**base, "kind": "stream_lost", "flushed_lsn": None}]
    if kind == "connect_failed":
        return [{**base, "kind": "connect_failed"}]
    if kind in ("restored", "restore_failed"):
        return [{**base, "kind": "restore", "file": m.group(1), "ok": kind == "restored", "by": "startup",
                 "bytes": None}]
    if kind == "promote":
        return [{**base, "kind": "recovery_state", "to": "promoting"}]
    if kind == "crash_restart":
        return [{**base, "kind": "crash_restart"}]
    if kind == "ready":
        return [{**base, "kind": "primary_ready"}]
    return []


def parse_log(path: Path, server: str = "standby") -> list[dict]:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return parse_lines(text.splitlines(), server)


def parse_lines(lines: list[str], server: str = "standby") -> list[dict]:
    out: list[dict] = []
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        msg = m.group(5)
        for rx, kind in RULES:
            mm = rx.match(msg)
            if mm:
                out += _entries(kind, mm, _when(m.group(1), m.group(2)), server)
                break
    return out


def pg_trace(standby_log: Path, primary_logs: dict[str, Path]) -> list[dict]:
    out = parse_log(standby_log)
    for name, path in primary_logs.items():
        out += [e for e in parse_log(path, name) if e["kind"] == "primary_ready"]
    out.sort(key=lambda e: e["t"])
    return out
