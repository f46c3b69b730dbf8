"""The figures of one run, computed from its trace (trace.py) the same way for every system.

* restore_command calls: all, for segments, for ``.history`` files, failed, and per process
  (``by``: the startup, or the walreceiver under walreceiver_restores); per file (``restore_files``)
  for the comparison with PostgreSQL;
* bytes fetched twice: a walreceiver starting below what the standby already had (the high-water
  mark of what it flushed, completed, restored or, for PostgreSQL, reported as received), plus
  restored segments it already had whole;
* seconds from each return (a primary ready again, a link restored) to streaming: the walreceiver
  streaming and the startup in STREAMING, whichever comes later, on a stream that then lasts at least
  ``MIN_STREAM_S`` (or to the end of the run);
* the sequence of recovery states, of sources tried (archive/stream) and of our wal_source.
"""
from __future__ import annotations

import collections
from typing import Any

from walswitch.compare.trace import compressed_text, sources, states, transitions
from xlog.lsn import is_segment_name


def segment_end(name: str, segsize: int) -> int:
    """End LSN of a segment file name (timeline ignored)."""
    log, seg = int(name[8:16], 16), int(name[16:24], 16)
    return (log * (0x100000000 // segsize) + seg + 1) * segsize


def restore_figures(trace: list[dict]) -> dict[str, Any]:
    restores = [e for e in trace if e["kind"] == "restore"]
    by = collections.Counter(e.get("by", "startup") for e in restores)
    files = collections.Counter(e["file"] for e in restores)
    return {
        "restore_calls": len(restores),
        "restore_segment": sum(1 for e in restores if is_segment_name(e["file"])),
        "restore_history": sum(1 for e in restores if e["file"].endswith(".history")),
        "restore_failed": sum(1 for e in restores if not e["ok"]),
        "restore_by": dict(sorted(by.items())),
        "restore_files": dict(sorted(files.items())),
    }


def fetched_twice(trace: list[dict], segsize: int) -> int:
    twice = 0
    high = 0
    whole: set[str] = set()
    for e in trace:
        k = e["kind"]
        if k == "stream_start":
            if high:
                twice += max(0, high - e["start_lsn"])
        elif k == "stream_lost" and e.get("flushed_lsn"):
            high = max(high, e["flushed_lsn"])
        elif k == "received":
            high = max(high, e["lsn"])
        elif k == "segment_completed" and is_segment_name(e["file"]):
            whole.add(e["file"][8:])
            high = max(high, segment_end(e["file"], segsize))
        elif k == "restore" and e["ok"] and is_segment_name(e["file"]):
            end = segment_end(e["file"], segsize)
            if e["file"][8:] in whole or end <= high:
                twice += e.get("bytes") or segsize
            whole.add(e["file"][8:])
    return twice


# A stream lost this soon after it started does not count as streaming again: e.g. a stream of the
# old timeline that a promoted primary ends at the switch point (the standby must still find and
# follow the new timeline).
MIN_STREAM_S = 1.0


def lasting_starts(trace: list[dict], since: float) -> list[float]:
    """Times of the stream starts after `since` whose stream lasted MIN_STREAM_S (or was not lost)."""
    lost = [e["t"] for e in trace if e["kind"] == "stream_lost"]
    out = []
    for e in trace:
        if e["kind"] == "stream_start" and e["t"] >= since:
            end = next((t for t in lost if t >= e["t"]), None)
            if end is None or end - e["t"] >= MIN_STREAM_S:
                out.append(e["t"])
    return out


def to_streaming(trace: list[dict], since: float) -> float | None:
    """Seconds from `since` until the standby streams again, for MIN_STREAM_S at least (None if never)."""
    starts = lasting_starts(trace, since)
    if not starts:
        return None
    first = starts[0]
    st = states(trace)
    before = [s for t, s in st if t <= first]
    if before and before[-1] == "streaming":
        return first - since
    after = [t for t, s in st if t > first and s == "streaming"]
    return (after[0] if after else first) - since


def return_time(trace: list[dict], ret: dict) -> float:
    """When a return happened: the server's first 'ready' after the step began, else the step's time."""
    if ret.get("server"):
        ready = [e["t"] for e in trace if e["kind"] == "primary_ready" and e["server"] == ret["server"]
                 and e["t"] >= ret["t"] - 0.5]
        if ready:
            return ready[0]
    return ret["t"]


def figures(trace: list[dict], segsize: int, returns: list[dict]) -> dict[str, Any]:
    out = restore_figures(trace)
    out["fetched_twice_bytes"] = fetched_twice(trace, segsize)
    back = []
    for r in returns:
        t = return_time(trace, r)
        s = to_streaming(trace, t)
        back.append({"after": r["label"], "seconds": None if s is None else round(s, 3)})
    out["to_streaming"] = back
    secs = [b["seconds"] for b in back if b["seconds"] is not None]
    out["to_streaming_s"] = max(secs) if secs else None
    st = states(trace)
    src = sources(trace)
    out["states"] = compressed_text([s for _, s in st])
    out["source_transitions"] = transitions(src)
    out["sources"] = compressed_text(out["source_transitions"])
    ws = [e["to"] for e in trace if e["kind"] == "wal_source"]
    out["wal_source"] = compressed_text([f"{a}→{b}" for a, b in zip(ws, ws[1:]) if a != b])
    kinds = collections.Counter(e["kind"] for e in trace)
    out["stream_starts"] = kinds["stream_start"]
    out["connect_failed"] = kinds["connect_failed"]
    out["crash_restarts"] = kinds["crash_restart"]
    out["kills_at_points"] = kinds["inject"]
    return out
