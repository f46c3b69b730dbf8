"""A walsender's view of timeline history: which timeline a requested one became, and where.

readTimeLineHistory and tliSwitchPoint as START_REPLICATION ... TIMELINE n uses them.  Errors are
the SQLError PostgreSQL's walsender sends (XX000), since a bad history file here is the server's
fault, reported to the client.  (xlog/history.py is the startup's and the promotion's reader, with
its own error type.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from libpq import protocol as P
from xlog.lsn import history_file_name


@dataclass(frozen=True)
class TimeLineHistoryEntry:
    tli: int
    begin: int      # inclusive; 0 = beginning of time
    end: int        # exclusive; 0 = infinity (current timeline)


def parse_history(text: str, target_tli: int) -> list[TimeLineHistoryEntry]:
    """readTimeLineHistory: entries oldest first, the target timeline last.

    Lines are ``parentTLI <tab> switchpoint <tab> reason``; '#' starts a comment.
    """
    entries: list[TimeLineHistoryEntry] = []
    prev_end = 0
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        try:
            tli = int(parts[0])
            hi, lo = parts[1].split("/")
            switchpoint = (int(hi, 16) << 32) | int(lo, 16)
        except (ValueError, IndexError):
            raise P.SQLError("XX000", "syntax error in history file: " + s,
                             hint="Expected a numeric timeline ID.") from None
        entries.append(TimeLineHistoryEntry(tli, prev_end, switchpoint))
        prev_end = switchpoint
    entries.append(TimeLineHistoryEntry(target_tli, prev_end, 0))
    return entries


def read_history(pg_wal: str, tli: int) -> list[TimeLineHistoryEntry]:
    if tli == 1:
        return [TimeLineHistoryEntry(1, 0, 0)]
    path = os.path.join(pg_wal, history_file_name(tli))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        # PostgreSQL treats a missing history file of the current timeline as
        # "this timeline has no parents".
        return [TimeLineHistoryEntry(tli, 0, 0)]
    return parse_history(text, tli)


def tli_switch_point(tli: int, history: list[TimeLineHistoryEntry]) -> tuple[int, int]:
    """tliSwitchPoint: (end of `tli` in this history, next timeline). End 0 = current timeline."""
    for i, e in enumerate(history):
        if e.tli == tli:
            next_tli = history[i + 1].tli if i + 1 < len(history) else 0
            return e.end, next_tli
    raise P.SQLError("XX000", f"requested timeline {tli} is not in this server's history")
