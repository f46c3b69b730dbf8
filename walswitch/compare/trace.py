"""The trace of a run: what the servers recorded, in one shape for walswitch and PostgreSQL.

A trace is a time-ordered list of dicts ``{"t": wall-clock seconds, "kind": ..., "server": ...}``.
Kinds (the standby under test unless ``server`` says otherwise):

=====================  ==========================================  ===============================================
kind                   fields                                      walswitch event / PostgreSQL 15 log line
=====================  ==========================================  ===============================================
recovery_state         to (our state names)                        recovery_state / see pglog.py
wal_source             to (archive, pg_wal, stream)                wal_source / "switched WAL source from .. to .."
restore                file, ok, by (startup, walreceiver)         restore / "restored log file", "could not
                                                                   restore file"
stream_start           start_lsn (int)                             walreceiver_connect / "started streaming WAL"
stream_lost            flushed_lsn (int or None)                   walreceiver_disconnect / "could not receive
                                                                   data from WAL stream", ...
connect_failed                                                     walreceiver_connect_failed / "could not connect
                                                                   to the primary server"
segment_completed      file                                        segment_completed (walswitch only)
segment_replaced       file                                        segment_replaced (walswitch, guard off)
restore_kept_private   file                                        restore_kept_private (walswitch, guard on)
crash_restart                                                      crash_restart / "all server processes
                                                                   terminated; reinitializing"
inject                 point                                       inject (walswitch only)
primary_ready          server                                      pm_state RUN of a primary / "database system is
                                                                   ready to accept connections"
received               lsn                                         sampled receive position (PostgreSQL only)
=====================  ==========================================  ===============================================

``sources`` folds recovery states onto PostgreSQL's two sources, the way
PostgreSQL's startup names the one it is *trying*: ``archive`` (archive
recovery and retrying the archive, which reads pg_wal too, as PostgreSQL's
XLOG_FROM_ARCHIVE does) and ``stream`` (waiting for the walreceiver, and
streaming).  ``compress`` writes a sequence with its repeated cycles
counted, e.g. ``archive→stream, (stream→archive, archive→stream)×19``.
"""
from __future__ import annotations

from pathlib import Path

from utils.events import read_events
from xlog.lsn import parse_lsn

SOURCE_OF_STATE = {"archive_recovery": "archive", "retry_archive": "archive", "wait_retry": "stream",
                   "streaming": "stream", "promoting": "done", "done": "done"}


def _lsn(text: str | None) -> int | None:
    try:
        return parse_lsn(text) if text else None
    except ValueError:
        return None


def _from_standby(e: dict) -> dict | None:
    k = e.get("kind")
    base = {"t": e["ts"], "server": "standby", "role": e.get("role")}
    if k == "recovery_state":
        return {**base, "kind": k, "to": e.get("to")}
    if k == "wal_source":
        return {**base, "kind": k, "to": e.get("to")}
    if k == "restore":
        return {**base, "kind": k, "file": e.get("file", ""), "ok": bool(e.get("ok")), "by": e.get("by", "startup"),
                "bytes": e.get("bytes")}
    if k == "walreceiver_connect":
        return {**base, "kind": "stream_start", "start_lsn": _lsn(e.get("start_lsn")) or 0}
    if k == "walreceiver_disconnect":
        return {**base, "kind": "stream_lost", "flushed_lsn": _lsn(e.get("flushed_lsn"))}
    if k == "walreceiver_connect_failed":
        return {**base, "kind": "connect_failed"}
    if k in ("segment_completed", "segment_replaced", "restore_kept_private"):
        return {**base, "kind": k, "file": e.get("file", "")}
    if k == "crash_restart":
        return {**base, "kind": k}
    if k == "inject":
        return {**base, "kind": k, "point": e.get("point")}
    return None


def walswitch_trace(standby: Path, others: list[Path]) -> list[dict]:
    """The trace from the standby's events.jsonl, plus when each other server became a running primary."""
    out = [x for e in read_events(str(standby)) if (x := _from_standby(e)) is not None]
    for d in others:
        for e in read_events(str(d)):
            if e.get("kind") == "pm_state" and e.get("to") == "RUN":
                out.append({"t": e["ts"], "kind": "primary_ready", "server": Path(d).name})
    out.sort(key=lambda x: x["t"])
    return out


# ---------------------------------------------------------------- transitions
def states(trace: list[dict]) -> list[tuple[float, str]]:
    """(time, recovery state) at each change, consecutive repeats dropped."""
    out: list[tuple[float, str]] = []
    for e in trace:
        if e["kind"] == "recovery_state" and e.get("to") and (not out or out[-1][1] != e["to"]):
            out.append((e["t"], e["to"]))
    return out


def sources(trace: list[dict]) -> list[tuple[float, str]]:
    """(time, source tried) at each change: recovery states folded onto archive / stream / done."""
    out: list[tuple[float, str]] = []
    for t, s in states(trace):
        src = SOURCE_OF_STATE.get(s)
        if src and (not out or out[-1][1] != src):
            out.append((t, src))
    return out


def transitions(seq: list[tuple[float, str]]) -> list[str]:
    return [f"{a}→{b}" for (_, a), (_, b) in zip(seq, seq[1:])]


def compress(items: list[str]) -> list[tuple[tuple[str, ...], int]]:
    """Run-length encoding of repeated blocks of one or two items, greedily from the left."""
    out: list[tuple[tuple[str, ...], int]] = []
    i = 0
    while i < len(items):
        best = ((items[i],), 1)
        for width in (1, 2):
            block = tuple(items[i:i + width])
            if len(block) < width:
                continue
            n = 1
            while tuple(items[i + n * width:i + (n + 1) * width]) == block:
                n += 1
            if n > 1 and n * width > best[1] * len(best[0]):
                best = (block, n)
        out.append(best)
        i += len(best[0]) * best[1]
    return out


def compressed_text(items: list[str]) -> str:
    parts = []
    for block, n in compress(items):
        body = ", ".join(block)
        parts.append(body if n == 1 else (f"({body})×{n}" if len(block) > 1 else f"{body}×{n}"))
    return ", ".join(parts) or "-"
