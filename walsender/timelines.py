"""A walsender's view of timeline history: where a requested timeline ends and which one follows it.

PostgreSQL's readTimeLineHistory and tliSwitchPoint as START_REPLICATION ... TIMELINE n uses them.
The history file is read by ``xlog.history`` (the startup's and the promotion's reader too); a bad
file is the server's fault, reported to the client as PostgreSQL's walsender does (XX000).
"""
from __future__ import annotations

from libpq import protocol as P
from xlog.history import HistoryError, TimelineHistoryEntry, read_history_file


def read_history(pg_wal: str, tli: int) -> list[TimelineHistoryEntry]:
    """The ancestors of timeline ``tli``, oldest first (none for timeline 1 or a missing file, which
    PostgreSQL takes as "this timeline has no parents")."""
    if tli == 1:
        return []
    try:
        return read_history_file(pg_wal, tli)
    except HistoryError as e:
        raise P.SQLError("XX000", str(e)) from None


def tli_switch_point(tli: int, history: list[TimelineHistoryEntry], current_tli: int) -> tuple[int, int]:
    """tliSwitchPoint: (where ``tli`` ends, the timeline after it) in the history of ``current_tli``;
    (0, 0) for the current timeline itself, which has not ended."""
    if tli == current_tli:
        return 0, 0
    for i, e in enumerate(history):
        if e.tli == tli:
            return e.switchpoint, history[i + 1].tli if i + 1 < len(history) else current_tli
    raise P.SQLError("XX000", f"requested timeline {tli} is not in this server's history")
