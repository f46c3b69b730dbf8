"""The invariants of DESIGN.md section 8, checked after a run; each check returns violations (strings).

* ``commits``: no acknowledged commit lost on the primary, no row that no writer sent (doubled or
  invented), every key once;
* ``data_equal``: after catching up, the standby's rows equal the primary's;
* ``segments_identical``: every segment the standby has replayed past is byte-identical to the
  same-named file of the primary or the archive (the newest segment of each timeline may be filling);
* ``double_writes``: no segment written by two fetchers, from the trace: the walreceiver replacing
  a segment that was already whole (``segment_replaced``, concurrent_guard = off); the startup
  installing a restored copy of the segment the walreceiver was writing (it had started writing it
  before, and completes it after), or of one the walreceiver had streamed whole (with the guard on
  such a copy is kept private: ``restore_kept_private`` follows the restore at once);
* leaks (processes, shared memory, semaphores) are found by the systems (systems.py ``leaks``).

tests/invariants.py wraps these for the fault tests.
"""
from __future__ import annotations

import os
from pathlib import Path

from walswitch.compare.figures import segment_end
from xlog.lsn import is_segment_name


def commits(acked: set[str], uncertain: set[str], primary_rows: dict[str, str]) -> list[str]:
    out = []
    lost = sorted(acked - set(primary_rows))
    if lost:
        out.append(f"{len(lost)} acknowledged commit(s) lost on the primary, e.g. {lost[:3]}")
    invented = sorted(k for k in primary_rows if k.startswith("w") and k not in acked and k not in uncertain)
    if invented:
        out.append(f"{len(invented)} row(s) on the primary that no writer committed, e.g. {invented[:3]}")
    return out


def data_equal(primary_rows: dict[str, str], standby_rows: dict[str, str]) -> list[str]:
    missing = sorted(set(primary_rows) - set(standby_rows))
    extra = sorted(set(standby_rows) - set(primary_rows))
    differ = sorted(k for k in set(primary_rows) & set(standby_rows) if primary_rows[k] != standby_rows[k])
    if not (missing or extra or differ):
        return []
    return [f"standby differs from primary after catch-up: {len(missing)} missing {missing[:3]}, "
            f"{len(extra)} extra {extra[:3]}, {len(differ)} different {differ[:3]}"]


def segments_identical(standby_pg_wal: Path, sources: list[Path], replayed_upto: int, segsize: int) -> tuple[
        list[str], int]:
    """(violations, segments compared)."""
    try:
        names = sorted(n for n in os.listdir(standby_pg_wal) if is_segment_name(n))
    except FileNotFoundError:
        return [], 0
    newest: dict[str, str] = {}
    for n in names:
        newest[n[:8]] = max(newest.get(n[:8], n), n)
    out, compared = [], 0
    for n in names:
        if n == newest[n[:8]] or segment_end(n, segsize) > replayed_upto:
            continue
        ours = (standby_pg_wal / n)
        for src in sources:
            other = src / n
            if other.exists() and other.stat().st_size == ours.stat().st_size:
                compared += 1
                if ours.read_bytes() != other.read_bytes():
                    out.append(f"segment {n} in the standby's pg_wal differs from {other}")
                break
    return out, compared


def double_writes(trace: list[dict], segsize: int) -> list[str]:
    out = []
    whole: set[str] = set()          # segments restored or completed so far
    streamed: set[str] = set()       # segments the walreceiver completed
    over_streamed: dict[str, float] = {}     # restored by the startup after the walreceiver completed them
    streaming_into: str | None = None  # the segment the walreceiver was writing, since its last start
    installed_under: dict[str, float] = {}   # restored by the startup while the walreceiver wrote it
    for e in trace:
        k = e["kind"]
        if over_streamed and e.get("role") == "startup" and k != "restore_kept_private":
            # The startup went on after the restore without keeping the copy private: it installed it.
            out += [_over_streamed(f) for f in over_streamed]
            over_streamed.clear()
        if k == "stream_start":
            streaming_into = _segment_at(e["start_lsn"], segsize)
        elif k == "stream_lost":
            streaming_into = None
        elif k == "segment_completed":
            f = e["file"]
            whole.add(f)
            streamed.add(f)
            if f in installed_under:
                out.append(f"segment {f} written by two fetchers: the startup installed the archive's copy "
                           f"while the walreceiver was writing it, and the walreceiver completed it after")
                del installed_under[f]
            if streaming_into is not None and f[8:] == streaming_into:
                streaming_into = _next_segment(streaming_into, segsize)
        elif k == "restore" and e["ok"] and is_segment_name(e["file"]):
            f = e["file"]
            if e.get("by") == "startup" and streaming_into == f[8:]:
                installed_under[f] = e["t"]
            if e.get("by") == "startup" and f in streamed:
                over_streamed[f] = e["t"]
            whole.add(f)
        elif k == "restore_kept_private":
            installed_under.pop(e["file"], None)
            over_streamed.pop(e["file"], None)
        elif k == "segment_replaced" and e["file"] in whole:
            out.append(f"segment {e['file']} was whole in pg_wal (restored or streamed) and the walreceiver "
                       f"replaced it with a new file while the startup could be reading it")
    out += [_over_streamed(f) for f in over_streamed]
    return out


def _over_streamed(f: str) -> str:
    return (f"segment {f} written by two fetchers: the walreceiver had streamed it whole, then the startup "
            f"installed the archive's copy over it")


def _segment_at(lsn: int, segsize: int) -> str:
    segno = lsn // segsize
    per = 0x100000000 // segsize
    return f"{segno // per:08X}{segno % per:08X}"


def _next_segment(tail: str, segsize: int) -> str:
    per = 0x100000000 // segsize
    segno = int(tail[:8], 16) * per + int(tail[8:], 16) + 1
    return f"{segno // per:08X}{segno % per:08X}"
