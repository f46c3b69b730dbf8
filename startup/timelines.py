"""The standby's timelines: which history it follows, which timeline a segment or position is on,
and when to look for a newer one (PostgreSQL's readTimeLineHistory, tliOfPointInHistory,
rescanLatestTimeLine with recovery_target_timeline).  Mixed into ``startup.standby.Standby``, which owns
the attributes below; the history files come from pg_wal, else from the archive (restore_command).
"""
from __future__ import annotations

import os
import time
from typing import Any

from shmem.states import WalRcvState
from utils import elog
from utils.proc import ChildContext
from xlog.archive import RestoreFatal
from xlog.control import ControlFile
from xlog.history import RESCAN_EVERY, TimelineHistoryEntry, read_history
from xlog.lsn import format_lsn, history_file_name, segno_of

log = elog.logger()


class StandbyTimelines:
    ctx: ChildContext
    cf: ControlFile
    cfg: Any
    policy: Any
    pg_wal: str
    segsize: int
    history: list[TimelineHistoryEntry]     # ancestors of target_tli, oldest first
    target_tli: int
    last_rescan: float                      # monotonic time of the last rescan
    timeline_end_seen: bool                 # streaming given up with the walreceiver WAITING
    run_restore: Any

    def read_history_file(self, tli: int) -> list[TimelineHistoryEntry] | None:
        if tli == 1:
            return []
        path = os.path.join(self.pg_wal, history_file_name(tli))
        try:
            with open(path, encoding="utf-8") as f:
                return read_history(f.read())
        except FileNotFoundError:
            return None

    def fetch_history(self, tli: int) -> list[TimelineHistoryEntry] | None:
        """A timeline's history from pg_wal, or from the archive."""
        h = self.read_history_file(tli)
        if h is not None:
            return h
        if self.cfg["restore_command"] and self.policy.startup_restores:
            if self.run_restore(history_file_name(tli), None):
                return self.read_history_file(tli)
        return None

    def tli_begin(self, tli: int) -> int:
        """Where timeline tli begins on our expected history (0 for the first)."""
        prev_end = 0
        for e in self.history:
            if e.tli == tli:
                return prev_end
            prev_end = e.switchpoint
        return prev_end if tli == self.target_tli else 0

    def timelines(self) -> list[int]:
        return [e.tli for e in self.history] + [self.target_tli]

    def tli_for_segment(self, segno: int) -> list[int]:
        """Candidate timelines for a segment, newest first (PostgreSQL's XLogFileReadAnyTLI order)."""
        out = []
        for tli in reversed(self.timelines()):
            begin = self.tli_begin(tli)
            if begin and segno < segno_of(begin, self.segsize):
                continue
            out.append(tli)
        return out

    def tli_of_lsn(self, lsn: int) -> int:
        for e in self.history:
            if lsn < e.switchpoint:
                return e.tli
        return self.target_tli

    def rescan_latest_timeline(self, replay_lsn: int) -> bool:
        """recovery_target_timeline = latest: look for a newer timeline; True if we moved to one."""
        if self.cfg["recovery_target_timeline"] != "latest":
            return False
        found = False
        probe = self.target_tli + 1
        while True:
            h = self.fetch_history(probe)
            if h is None:
                break
            # The new timeline must fork off ours at or after what we replayed.
            fork = next((e.switchpoint for e in h if e.tli == self.target_tli), None)
            if fork is None or fork < replay_lsn:
                log.info("new timeline %d is not a child of database system timeline %d", probe, self.target_tli)
                break
            log.info("new target timeline is %d", probe)
            self.ctx.events.emit("timeline_switch_target", tli=probe, fork=format_lsn(fork))
            self.target_tli, self.history = probe, h
            found = True
            probe += 1
        return found

    def rescan_due(self, interval: float) -> bool:
        """Look for a newer timeline now?  When the stream ended at the end of its timeline (the
        walreceiver WAITING now, or seen WAITING when streaming was given up: under stop_walreceiver
        it is stopped by then), else every RESCAN_EVERY retry intervals."""
        if self.cfg["recovery_target_timeline"] != "latest":
            return False
        now = time.monotonic()
        ended = self.timeline_end_seen or WalRcvState(self.ctx.shared.walrcv.get("state")) == WalRcvState.WAITING
        if ended or now - self.last_rescan >= RESCAN_EVERY * interval:
            self.last_rescan = now
            self.timeline_end_seen = False
            return True
        return False

    def setup_timeline(self) -> None:
        want = self.cfg["recovery_target_timeline"]
        self.target_tli = self.cf.timeline
        self.history = self.read_history_file(self.target_tli) or []
        if want == "latest":
            self.rescan_latest_timeline(self.cf.min_recovery_point or self.cf.checkpoint_lsn)
        elif want not in ("current", ""):
            try:
                tli = int(want)
            except ValueError:
                raise RestoreFatal(f'invalid value for parameter "recovery_target_timeline": "{want}"') from None
            h = self.fetch_history(tli)
            if h is None:
                raise RestoreFatal(f"recovery target timeline {tli} does not exist")
            self.target_tli, self.history = tli, h
        self.ctx.shared.recovery.update(timeline=self.target_tli)
