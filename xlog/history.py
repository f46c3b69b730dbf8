"""Timeline history files (pg_wal/0000000N.history) in PostgreSQL's text format.

Owns parsing and writing the lines "parentTLI<TAB>switchpoint<TAB>reason"
(readTimeLineHistory / writeTimeLineHistory), and the questions asked of a
history: which timeline an LSN belongs to, where a timeline ends.

A history file for timeline N lists its ancestors: entry (tli, switchpoint)
says timeline `tli` holds WAL up to, not including, `switchpoint`; N itself
is not listed and continues from the last switchpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .lsn import format_lsn, history_file_name, parse_lsn
from .durable import write_durably


# PostgreSQL looks for a newer timeline's history file in the archive at every
# retry, so about half of its restore_command calls during an outage ask for a
# file that is not there.  Whoever restores here (the startup, or the walreceiver
# under walreceiver_restores) looks when the stream reached the end of its
# timeline, and otherwise every RESCAN_EVERY retry intervals (bench/compare.py).
RESCAN_EVERY = 10


class HistoryError(ValueError):
    pass


@dataclass(frozen=True)
class TimelineHistoryEntry:
    tli: int
    switchpoint: int
    reason: str = "no recovery target specified"


def read_history(text: str) -> list[TimelineHistoryEntry]:
    """Parse a history file's text; PostgreSQL's checks and messages."""
    entries: list[TimelineHistoryEntry] = []
    for raw in text.splitlines():
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t", 2) if "\t" in line else line.split(None, 2)
        try:
            tli = int(fields[0])
        except ValueError:
            raise HistoryError(f"syntax error in history file: {raw}: Expected a numeric timeline ID.")
        if len(fields) < 2:
            raise HistoryError(f"syntax error in history file: {raw}: "
                               "Expected a write-ahead log switchpoint location.")
        try:
            switchpoint = parse_lsn(fields[1].strip())
        except ValueError:
            raise HistoryError(f"syntax error in history file: {raw}: "
                               "Expected a write-ahead log switchpoint location.")
        if entries and tli <= entries[-1].tli:
            raise HistoryError(f"invalid data in history file: {raw}: "
                               "Timeline IDs must be in increasing sequence.")
        reason = fields[2].rstrip("\n") if len(fields) > 2 else ""
        entries.append(TimelineHistoryEntry(tli, switchpoint, reason))
    return entries


def format_history(entries: list[TimelineHistoryEntry]) -> str:
    """As writeTimeLineHistory builds it: the parent's file, a blank line, the new line."""
    return "\n".join(f"{e.tli}\t{format_lsn(e.switchpoint)}\t{e.reason}\n" for e in entries)


def read_history_file(pg_wal: str, tli: int) -> list[TimelineHistoryEntry]:
    """The history of timeline tli from pg_wal; timeline 1 (or a missing file) has none."""
    path = os.path.join(pg_wal, history_file_name(tli))
    try:
        with open(path, encoding="utf-8") as f:
            return read_history(f.read())
    except FileNotFoundError:
        return []


def write_history_file(pg_wal: str, tli: int, entries: list[TimelineHistoryEntry]) -> str:
    """Write pg_wal/<tli>.history atomically (temp file, fsync, rename, fsync dir)."""
    for e in entries:
        if e.tli >= tli:
            raise ValueError(f"history of timeline {tli} cannot list timeline {e.tli}")
    path = os.path.join(pg_wal, history_file_name(tli))
    write_durably(path, format_history(entries).encode("utf-8"),
                  tmp=os.path.join(pg_wal, f"xlogtemp.{os.getpid()}"))
    return path


def tli_of_lsn(history: list[TimelineHistoryEntry], lsn: int, target_tli: int | None = None) -> int:
    """tliOfPointInHistory: the timeline that holds WAL position lsn.

    Past the last switchpoint the position is on the timeline the history
    belongs to: pass it as target_tli; without it, the last listed
    timeline + 1 is assumed (1 for an empty history).
    """
    for e in history:
        if lsn < e.switchpoint:
            return e.tli
    if target_tli is not None:
        return target_tli
    return history[-1].tli + 1 if history else 1


def timeline_switch_point(history: list[TimelineHistoryEntry], tli: int) -> int | None:
    """tliSwitchPoint: where timeline tli ends in this history; None if it does not end here."""
    for e in history:
        if e.tli == tli:
            return e.switchpoint
    return None


def new_history(parent_history: list[TimelineHistoryEntry], parent_tli: int, switchpoint: int,
                reason: str = "no recovery target specified") -> list[TimelineHistoryEntry]:
    """The entries for a child timeline forked from parent_tli at switchpoint."""
    return [*parent_history, TimelineHistoryEntry(parent_tli, switchpoint, reason)]
